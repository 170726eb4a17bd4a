"""Optional ``torch.compile`` of the one-token decode step (``llavakit.load(..., compile=True)``, ``--compile``).

Only ``engine.generate.decode_step`` is compiled (prefill, vision and sampling stay eager): one graph per batch
size for embedding lookup -> decoder layers -> final norm -> LM head. Its shapes change with one number only,
the cache length. It is compiled with dynamic shapes (the cache length, prompt length and batch size are
symbols; dynamo specializes batch size 1), so a graph is built once for single requests and once each for
batches with and without left padding (a slot mask or none), then every later token and request reuses it
instead of recompiling per token. The model code is unchanged: no branches for compile.

The step is compiled with inductor's ``freezing`` and ``max_autotune``: the model's weights become constants of
the graph (so a compiled pipeline's weights must not change after its first answer), which lets inductor pack
them for its own CPU kernels; for weight-only int8 (``Int8Linear``, torch's ``_weight_int8pack_mm``) it then
picks its C++ int8 template, which streams the int8 weights about twice as fast as the eager kernel (on a 2-core
EPYC, int8+head: 42.9-44.9 against 23.5 tok/s for the Qwen2-0.5B-shaped decoder, ``docs/speed.md``). Dynamo
reads ``freezing`` from the global inductor config (as a ``torch.compile`` option it is ignored), so
``compile_decode_step`` sets it around each call of the compiled step and restores it after; each model gets
graphs of its own.

On a CPU, inductor writes C++ and needs a C++ compiler (``$CXX`` or g++); ``inductor_unavailable`` says why
not when it cannot run.
"""

from __future__ import annotations

import functools
import os
import shutil
import types
import warnings
import weakref

import torch

from .generate import StepFn, decode_step
from .kv_cache import KVCache


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


# (freezing, fx_graph_cache) while a frozen step runs. Inductor's on-disk graph cache is off for these graphs: on
# a hit it restores a frozen graph's weights from the model at hand but the int8 weights its C++ template packed
# from the model that wrote the entry (measured: a second int8 model of the same shapes answered with the first
# one's weights; pytorch/pytorch#143144 is of that family)
FROZEN_CONFIG = (True, False)
# torch.compile options of a frozen step: max_autotune, without its reports on stderr (see compile_decode_step)
FROZEN_OPTIONS = {"max_autotune": True, "autotune_num_choices_displayed": 0, "max_autotune_report_choices_stats": False}
# Before each call dynamo checks its guards, most of them on the model's modules (the Qwen2-0.5B shape: ~0.97 ms
# of a ~21 ms int8 token, ~0.2 ms without them). A frozen graph already holds the model's weights and each model
# has graphs of its own, so the module guards protect nothing a compiled pipeline may change: they are dropped.
# The guards on the step's inputs (tokens, positions, the cache, the mask) stay.
_skip_module_guards = getattr(torch.compiler, "skip_guard_on_all_nn_modules_unsafe", None)
if _skip_module_guards is not None:  # older torch has no guard filters
    FROZEN_OPTIONS["guard_filter_fn"] = _skip_module_guards
RECOMPILE_LIMIT = 256  # compiled graphs kept per model's decode step (dynamo's default: 8)


class CompileUnavailable(OSError):
    """torch.compile cannot build kernels on this machine (the message says why and what to do)."""


def _reserve_rope_table(model: torch.nn.Module) -> None:
    """Size the model's RoPE table for its whole context before the frozen step runs.

    Freezing makes the table a constant of the graph (guarded by identity), and the table grows (is replaced) in
    powers of two as longer caches come: each growth would recompile the step (20-60 s) in the middle of an
    answer. Sized once, it never changes. Cost: context x head_dim x 2 values in the model dtype (Qwen2's
    32768 x 64 in bf16: 8 MB; 131072 x 128: 64 MB). A dictionary lookup once it is there.
    """
    text = model.model.language_model
    if not text.rotary.dynamic:  # dynamic NTK scaling has no table
        text.rotary.table(model.config.text.context_length, model.device, model.dtype)


def _own_decode_step() -> StepFn:
    """``decode_step`` with a code object of its own.

    Dynamo keeps compiled graphs per code object, and a frozen graph holds one model's weights: each model gets
    a cache of its own rather than relying on guards to tell models of the same shapes apart.
    """
    f = decode_step
    return types.FunctionType(f.__code__.replace(), f.__globals__, f.__name__, f.__defaults__, f.__closure__)


def compile_decode_step() -> StepFn:
    """``decode_step`` compiled with inductor, frozen and autotuned (see the module docstring); each model's graphs
    are built on its first use. Raises ``CompileUnavailable`` with the reason when inductor cannot run here.
    """
    reason = inductor_unavailable()
    if reason is not None:
        raise CompileUnavailable(f"cannot compile the decode step: {reason}; or run without --compile")
    # each model's step keeps its own graphs (one for single requests, one each for batches with and without
    # padding); past dynamo's limit fullgraph=True fails mid-answer, so the limit is raised well above that
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), RECOMPILE_LIMIT))
    from torch._inductor import config as inductor_config

    # max_autotune's benchmarking writes its tables and a storage deprecation warning to stderr: in a terminal
    # they would land in the middle of the streamed answer (the step compiles after its first token is shown)
    warnings.filterwarnings("ignore", message="TypedStorage is deprecated", module=r"torch\._inductor")
    per_model: weakref.WeakKeyDictionary[torch.nn.Module, StepFn] = weakref.WeakKeyDictionary()

    def frozen_step(
        model: torch.nn.Module,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        cache: KVCache,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        compiled = per_model.get(model)
        if compiled is None:
            _reserve_rope_table(model)
            compiled = torch.compile(_own_decode_step(), fullgraph=True, dynamic=True, options=FROZEN_OPTIONS)
            per_model[model] = compiled
        # read by dynamo and inductor whenever this call (re)compiles; restored after
        before = inductor_config.freezing, inductor_config.fx_graph_cache
        inductor_config.freezing, inductor_config.fx_graph_cache = FROZEN_CONFIG
        try:
            return compiled(model, tokens, positions, cache, mask)
        finally:
            inductor_config.freezing, inductor_config.fx_graph_cache = before

    return frozen_step
