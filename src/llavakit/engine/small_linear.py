"""``SmallDecodeLinear``: small bf16/fp16 decoder Linears that multiply one-token rows in float32 (see ``linear``)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .linear import DECODE_ROWS, MAX_SMALL_WEIGHT, _swap


class SmallDecodeLinear(nn.Module):
    """``y = x W^T + b`` for a small bf16/fp16 CPU weight: up to ``DECODE_ROWS`` rows in float32 against a float32
    copy of the weight (exact: bf16 and fp16 values are float32 values), output rounded to the model dtype once,
    as a bf16 GEMM with float32 accumulation rounds it; longer prompts through the bf16 weight (``F.linear``).

    ``weight`` / ``bias`` are the original parameters (same state-dict keys); the float32 copies are buffers kept
    out of the state dict. For weights below ``MAX_SMALL_WEIGHT`` elements the copy costs at most 1 MB per layer.
    """

    def __init__(self, linear: nn.Linear, *, decode_rows: int = DECODE_ROWS) -> None:
        super().__init__()
        w = linear.weight
        if w.device.type != "cpu" or w.dtype not in (torch.bfloat16, torch.float16):
            raise ValueError(f"SmallDecodeLinear needs a CPU bfloat16/float16 weight, got {w.dtype} on {w.device}")
        self.weight, self.bias = linear.weight, linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.decode_rows = decode_rows
        self.register_buffer("weight32", w.detach().float(), persistent=False)  # (N, K)
        b = None if linear.bias is None else linear.bias.detach().float()
        self.register_buffer("bias32", b, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() // x.shape[-1] > self.decode_rows:
            return F.linear(x, self.weight, self.bias)
        return F.linear(x.float(), self.weight32, self.bias32).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def small_decode_linears(
    module: nn.Module, *, skip: Callable[[str], bool] | None = None, max_weight: int = MAX_SMALL_WEIGHT
) -> int:
    """Swap every CPU bf16/fp16 ``nn.Linear`` below ``module`` of fewer than ``max_weight`` elements (unless
    ``skip(name)``) for a ``SmallDecodeLinear``; returns how many."""
    swapped = 0
    for name, lin in list(module.named_modules()):
        if type(lin) is not nn.Linear or (skip is not None and skip(name)):
            continue
        w = lin.weight
        if w.device.type == "cpu" and w.dtype in (torch.bfloat16, torch.float16) and w.numel() < max_weight:
            _swap(module, name, SmallDecodeLinear(lin))
            swapped += 1
    return swapped
