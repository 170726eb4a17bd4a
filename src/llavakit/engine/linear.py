"""``PackedLinear``: a CPU inference Linear whose weight is pre-packed once for oneDNN.

torch's stock CPU matrix-vector product (one decode token) reaches only about half of the memory bandwidth on
these machines; the same oneDNN kernel on a weight reordered ahead of time reads it much faster, and long prompts
(prefill) run at the same speed as ``F.linear``. Swapping modules keeps the model code free of branches.
"""

from __future__ import annotations

import torch
from torch import nn


def packing_available() -> bool:
    return hasattr(torch.ops.mkldnn, "_linear_pointwise") and torch.backends.mkldnn.is_available()


class PackedLinear(nn.Module):
    """Inference-only: ``y = x W^T + b`` with W held in oneDNN's blocked layout (CPU, float32 or bfloat16)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach()
        if w.device.type != "cpu" or w.dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"PackedLinear needs a CPU float32/bfloat16 weight, got {w.dtype} on {w.device}")
        self.register_buffer("packed", torch.ops.mkldnn._reorder_linear_weight(w, 1), persistent=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous().to(self.packed.dtype)
        out = torch.ops.mkldnn._linear_pointwise(x2, self.packed, self.bias, "none", [None], "")
        return out.reshape(*shape[:-1], self.out_features)


def pack_linears(module: nn.Module, *, include_tied: bool = False) -> int:
    """Swap every CPU bfloat16 ``nn.Linear`` below ``module`` for a ``PackedLinear``; returns how many were swapped.

    A Linear whose weight is shared with an embedding (tied LM head) is skipped unless ``include_tied``: packing
    makes a second copy of that matrix (the embedding lookup still needs the original).
    """
    if not packing_available():
        return 0
    shared = {id(p) for m in module.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    swapped = 0
    for name, lin in list(module.named_modules()):
        if not isinstance(lin, nn.Linear) or lin.weight.device.type != "cpu":
            continue
        if lin.weight.dtype != torch.bfloat16:  # float32 matvecs measured no faster (often slower) when packed
            continue
        if id(lin.weight) in shared and not include_tied:
            continue
        parent_name, _, attr = name.rpartition(".")
        setattr(module.get_submodule(parent_name) if parent_name else module, attr, PackedLinear(lin))
        swapped += 1
    return swapped
