"""Weight-only int8 / int4 quantization by swapping ``nn.Linear`` modules (activations stay in the model dtype).

- ``Int8Linear``: symmetric per-output-channel int8, ``W ~ q * scale``. Decode (few rows) runs torch's
  ``_weight_int8pack_mm`` kernel, which reads a quarter of the float32 bytes; long prompts dequantize on the fly and
  use the dense GEMM, which is compute-bound there anyway.
- ``Int4Linear``: asymmetric int4 in groups along the input dim, ``W ~ (q - 8) * scale + zero`` (``group_size``
  columns share a scale and zero), through torch's packed int4 CPU kernel.

The module tree is unchanged, so the model code needs no branches: ``quantize_model(model.model.language_model,
"int8")`` and the decoder's projections read int8 weights from then on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

DENSE_ROWS = 16  # from this many rows on, dequantize and use the dense GEMM (prefill)


class Int8Linear(nn.Module):
    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach().float()  # (N, K)
        scale = (w.abs().amax(dim=1) / 127).clamp_min(1e-8)  # (N,)
        self.register_buffer("qweight", (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(linear.weight.dtype))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def dequantize(self) -> torch.Tensor:
        return self.qweight.to(self.scale.dtype) * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])  # (M, K)
        if x2.shape[0] >= DENSE_ROWS or x.device.type != "cpu":
            out = F.linear(x2, self.dequantize().to(x.dtype))
        else:
            out = torch.ops.aten._weight_int8pack_mm(x2, self.qweight, self.scale.to(x.dtype))
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*shape[:-1], self.out_features)


class Int4Linear(nn.Module):
    def __init__(self, linear: nn.Linear, group_size: int = 128) -> None:
        super().__init__()
        n, k = linear.weight.shape
        if k % group_size:
            raise ValueError(f"int4 needs in_features ({k}) divisible by group_size ({group_size})")
        w = linear.weight.detach().float().view(n, k // group_size, group_size)
        lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
        scale = ((hi - lo) / 15).clamp_min(1e-6)  # (N, G, 1)
        zero = lo + 8 * scale
        q = ((w - lo) / scale).round().clamp(0, 15).to(torch.int32).view(n, k)
        self.group_size = group_size
        self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1))
        # (G, N, 2): scale and zero of every group, the layout the kernel reads
        sz = torch.cat([scale, zero], dim=-1).transpose(0, 1).contiguous()
        self.register_buffer("scales_zeros", sz.to(torch.bfloat16))
        self.register_buffer("q_ref", q.to(torch.uint8))  # kept for dequantize() (tests, large-M path)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.in_features, self.out_features = k, n

    def dequantize(self) -> torch.Tensor:
        n, k = self.out_features, self.in_features
        sz = self.scales_zeros.float().transpose(0, 1)  # (N, G, 2)
        q = self.q_ref.float().view(n, k // self.group_size, self.group_size)
        return ((q - 8) * sz[..., :1] + sz[..., 1:]).view(n, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if x2.shape[0] >= DENSE_ROWS:
            out = F.linear(x2, self.dequantize().to(x.dtype))
        else:
            out = torch.ops.aten._weight_int4pack_mm_for_cpu(
                x2.to(torch.bfloat16), self.packed, self.group_size, self.scales_zeros
            ).to(x.dtype)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*shape[:-1], self.out_features)


def quantize_model(
    module: nn.Module,
    mode: Literal["int8", "int4"],
    *,
    group_size: int = 128,
    skip: Callable[[str], bool] | None = None,
) -> nn.Module:
    """Replace every ``nn.Linear`` below ``module`` (unless ``skip(name)``) by its quantized twin, in place.

    int4 leaves a layer in its float dtype when its shape does not fit the kernel (out_features % 16 != 0 or
    in_features % group_size != 0).
    """
    if mode not in ("int8", "int4"):
        raise ValueError(f"quantize must be 'int8' or 'int4', got {mode!r}")
    if mode == "int4" and group_size not in (32, 64, 128, 256):
        raise ValueError(f"int4 group_size must be 32, 64, 128 or 256, got {group_size}")
    targets = [(n, m) for n, m in module.named_modules() if isinstance(m, nn.Linear) and not (skip and skip(n))]
    if mode == "int4":  # the packed int4 kernel needs N % 16 == 0 and whole groups: other layers stay as they are
        targets = [(n, m) for n, m in targets if m.out_features % 16 == 0 and m.in_features % group_size == 0]
    for name, lin in targets:
        parent = module.get_submodule(name.rpartition(".")[0]) if "." in name else module
        new = Int8Linear(lin) if mode == "int8" else Int4Linear(lin, group_size)
        setattr(parent, name.rpartition(".")[2], new.to(lin.weight.device))
    return module


@torch.no_grad()
def quantization_error(reference: nn.Module, quantized: nn.Module, inputs: dict) -> dict[str, float]:
    """Logit error of a quantized model against its reference on the same inputs, and top-1 agreement."""
    ref = reference(**inputs).logits.float()
    out = quantized(**inputs).logits.float()
    diff = (out - ref).abs()
    return {
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
        "rel": float(diff.norm() / ref.norm()),
        "top1_agreement": float((out.argmax(-1) == ref.argmax(-1)).float().mean()),
    }
