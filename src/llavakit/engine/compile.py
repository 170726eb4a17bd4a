"""Optional ``torch.compile`` of the one-token decode step (``llavakit.load(..., compile=True)``, ``--compile``).

Only ``engine.generate.decode_step`` is compiled (prefill, vision and sampling stay eager): one graph per batch
size for embedding lookup -> decoder layers -> final norm -> LM head. Its shapes change with one number only,
the cache length. It is compiled with dynamic shapes (the cache length, prompt length and batch size are
symbols; dynamo specializes batch size 1), so a graph is built once for single requests and once each for
batches with and without left padding (a slot mask or none), then every later token and request reuses it
instead of recompiling per token. The model code is unchanged: no branches for compile.

On a CPU, inductor writes C++ and needs a C++ compiler (``$CXX`` or g++); ``inductor_unavailable`` says why
not when it cannot run.
"""

from __future__ import annotations

import functools
import os
import shutil

import torch

from .generate import StepFn, decode_step


@functools.cache
def inductor_unavailable() -> str | None:
    """None when torch.compile's inductor backend can build CPU kernels here, else the reason."""
    try:
        import torch._inductor  # noqa: F401
    except ImportError as e:  # pragma: no cover - torch builds without inductor
        return f"torch inductor cannot be imported ({e})"
    cxx = os.environ.get("CXX") or "g++"
    if shutil.which(cxx) is None:
        return f"no C++ compiler: inductor builds CPU kernels with {cxx!r}; install g++ (or set CXX)"
    return None


RECOMPILE_LIMIT = 256  # compiled decode-step graphs kept per process (dynamo's default: 8)


class CompileUnavailable(OSError):
    """torch.compile cannot build kernels on this machine (the message says why and what to do)."""


def compile_decode_step(*, mode: str | None = None) -> StepFn:
    """``decode_step`` compiled with inductor (graphs are built on first use).

    ``mode`` is torch.compile's (None = default; "max-autotune-no-cudagraphs" tries more kernels, slower to build).
    Raises ``CompileUnavailable`` with the reason when inductor cannot run here.
    """
    reason = inductor_unavailable()
    if reason is not None:
        raise CompileUnavailable(f"cannot compile the decode step: {reason}; or run without --compile")
    # every compiled pipeline adds its graphs to the one decode_step's cache (about 2 per model / dtype /
    # quantization); past dynamo's limit (8) fullgraph=True fails mid-answer: leave room for many models
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), RECOMPILE_LIMIT))
    return torch.compile(decode_step, mode=mode, fullgraph=True, dynamic=True)
