"""fbgemm's fp16 matrix-vector product for bf16/fp16 decode, and the op that lets a compiled step call it.

fbgemm keeps its packed weight in an object a ``torch.compile`` graph cannot hold; modules holding one
(``HandledFP16``) register it under an integer handle, and the graph calls ``llavakit::fp16_linear`` with that
handle.
"""

from __future__ import annotations

import itertools
import weakref
from functools import cache
from typing import Any

import torch
from torch import nn


@cache
def fp16_decode_available() -> bool:
    """True when this torch build has fbgemm's fp16 kernels (x86 CPU builds)."""
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        return False
    try:
        packed = torch.ops.quantized.linear_prepack_fp16(torch.ones(8, 8), None)
        torch.ops.quantized.linear_dynamic_fp16(torch.ones(1, 8), packed)
    except (RuntimeError, AttributeError):
        return False
    return True


_PACKED: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()  # handle -> packed weight
_HANDLES = itertools.count()


def _fp16_linear_cpu(x: torch.Tensor, handle: int, out_features: int) -> torch.Tensor:
    return torch.ops.quantized.linear_dynamic_fp16(x, _PACKED[handle])


def _fp16_linear_fake(x: torch.Tensor, handle: int, out_features: int) -> torch.Tensor:
    return x.new_empty(x.shape[0], out_features)


# fbgemm's fp16 product as an op that torch.compile keeps in its graph: (M, K) float32 -> (M, N) float32. A graph
# cannot hold fbgemm's packed weight object, so the op finds it by the integer handle of its module. Registered
# with the plain ``torch.library.Library`` API rather than ``torch.library.custom_op``: a compiled decode step
# calls it 121 times per token (Qwen2-0.5B), and custom_op's Python wrapper cost ~120 us per call there (15 ms
# per token, 20% of the step), this registration ~6 us.
_LIB = torch.library.Library("llavakit", "DEF")
_LIB.define("fp16_linear(Tensor x, int handle, int out_features) -> Tensor")
_LIB.impl("fp16_linear", _fp16_linear_cpu, "CPU")
torch.library.register_fake("llavakit::fp16_linear", _fp16_linear_fake, lib=_LIB)


def _fp16_linear(x: torch.Tensor, handle: int, out_features: int) -> torch.Tensor:
    return torch.ops.llavakit.fp16_linear(x, handle, out_features)


class HandledFP16(nn.Module):
    """A module holding an fbgemm-packed fp16 weight in ``packed`` and the integer ``handle`` the compiled step's
    ``llavakit::fp16_linear`` op finds it by; copies (deepcopy, pickle) get their own handle."""

    packed: Any

    def _register(self) -> None:
        self.handle = next(_HANDLES)
        _PACKED[self.handle] = self.packed

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._register()
