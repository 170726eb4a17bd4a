"""Weight-only int8 / int4 quantization by swapping ``nn.Linear`` modules (activations keep the model dtype).

- ``Int8Linear``: symmetric per-output-channel int8, ``W ~ qweight * scale``. Few rows (decode) run torch's
  ``_weight_int8pack_mm`` CPU kernel; many rows (prefill, compute-bound) dequantize to the activation dtype
  and use the dense GEMM.
- ``Int4Linear``: asymmetric int4 in groups of ``group_size`` input columns, ``W ~ (q - 8) * scale + zero``,
  through torch's packed int4 CPU kernel for few rows; many rows unpack and use the dense GEMM.

Worked example (int4, one group of 4 weights [-0.3, 0.0, 0.1, 0.9]): lo = -0.3,
scale = (0.9 - -0.3) / 15 = 0.08, q = round((w - lo) / scale) = [0, 4, 5, 15], zero = lo + 8 * scale = 0.34,
and (q - 8) * scale + zero gives back [-0.3, 0.02, 0.1, 0.9] (error <= scale / 2).

The module tree is unchanged, so the model code needs no branches: ``quantize_model(model, "int8")`` and every
projection reads int8 weights from then on.

Speed (benchmarks/bench_linear.py): on a 2-core AVX2 EPYC the int4 (group 128) matrix-vector kernel was
the fastest decode path (~1.3-1.7x fbgemm's fp16 one), int8 about as fast as fp16 (its kernel widens every
weight to float32: compute-bound). Many rows (prefill) dequantize once per call and use ``dense_linear``.
``Int4Linear.packed`` is in torch's CPU layout for this machine's kernels (see ``_unpack_int4``): quantize at
load time rather than saving it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any, Literal

import torch
from torch import nn

from ..config import QUANTIZE_MODES
from .linear import compute_dtype, dense_linear

INT8_KERNEL_ROWS = 16  # below this many rows the int8 kernel beats dequantize + GEMM
INT4_KERNEL_ROWS = 96  # the same for int4 (its unpack costs more)
INT4_GROUP_SIZES = (32, 64, 128, 256)


class Int8Linear(nn.Module):
    """Weight-only int8 Linear. Buffers: ``qweight`` (N, K) int8, ``scale`` (N,) in the model dtype."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        dtype: torch.dtype = torch.bfloat16,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scale", torch.ones(out_features, dtype=dtype, device=device))
        b = torch.zeros(out_features, dtype=dtype, device=device) if bias else None
        self.bias = None if b is None else nn.Parameter(b, requires_grad=False)

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        w = linear.weight.detach()
        new = cls(linear.in_features, linear.out_features, linear.bias is not None, dtype=w.dtype, device=w.device)
        wf = w.float()  # (N, K)
        scale = (wf.abs().amax(dim=1) / 127).clamp_min(1e-12)  # (N,)
        new.qweight.copy_((wf / scale[:, None]).round().clamp(-127, 127).to(torch.int8))
        new.scale.copy_(scale.to(w.dtype))
        if linear.bias is not None:
            new.bias.copy_(linear.bias.detach())
        return new

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The (N, K) weight this layer multiplies by, in ``dtype`` (default: the scale's dtype)."""
        return self.qweight * self.scale.to(dtype or self.scale.dtype)[:, None]  # one pass: int8 * float

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])  # (M, K)
        # torch 2.13's _weight_int8pack_mm needs K a multiple of 16: otherwise in bf16 it crashed the process
        # (SIGSEGV, 2-15 rows) or returned garbage (1 row, now and then); such layers take the dequantized weight
        if x2.shape[0] >= INT8_KERNEL_ROWS or x.device.type != "cpu" or self.in_features % 16:
            return dense_linear(x, self.dequantize(compute_dtype(x.dtype, x2.shape[0])), self.bias)
        out = torch.ops.aten._weight_int8pack_mm(x2.contiguous(), self.qweight, self.scale.to(x.dtype))  # (M, N)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


@cache
def int4_block_rows() -> int:
    """Rows per block of torch's CPU int4 layout on this machine: 64 with AVX-512 kernels, 32 with AVX2.

    Found by packing a probe: row 32 lands in byte 0's high nibble only when blocks hold 64 rows.
    """
    q = torch.zeros(64, 2, dtype=torch.int32)
    q[32, 0] = 1
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1).reshape(-1)
    return 64 if int(packed[0]) == 16 else 32


def _unpack_int4(packed: torch.Tensor, n: int, k: int, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """Undo ``_convert_weight_to_int4pack_for_cpu``: (N, K/2) uint8 -> (N, K) values 0..15 in ``dtype``.

    Rows come in blocks of B = ``int4_block_rows()`` (the layout depends on the CPU kernels torch picked, so a
    packed buffer is only valid on machines with the same capability): byte [b, k, j] holds row B*b + j in
    its low nibble and row B*b + B/2 + j in its high nibble. A last partial block of r rows is (K, r/2) bytes
    holding rows 2j (low) and 2j+1 (high).
    Example (B = 32, N = 48, K = 64): row 40, column 0 is the low nibble of byte 32*64/2 + 4 = 1028.
    """
    flat = packed.reshape(-1)
    bn = int4_block_rows()
    nb, rest = divmod(n, bn)
    out = torch.empty(n, k, dtype=dtype, device=packed.device)
    if nb:
        # (nb, K, B/2) -> (nb, B/2, K): transposing bytes is cheaper than transposing the unpacked values
        blocks = flat[: nb * bn // 2 * k].view(nb, k, bn // 2).mT.contiguous()
        halves = out[: nb * bn].view(nb, 2, bn // 2, k)
        halves[:, 0].copy_(blocks & 15)
        halves[:, 1].copy_(blocks >> 4)
    if rest:
        tail = flat[nb * bn // 2 * k :].view(k, rest // 2).t()  # (r/2, K)
        pairs = out[nb * bn :].view(rest // 2, 2, k)
        pairs[:, 0].copy_(tail & 15)
        pairs[:, 1].copy_(tail >> 4)
    return out


class Int4Linear(nn.Module):
    """Weight-only int4 Linear (CPU kernel). Buffers: ``packed`` (N, K/2) uint8 in torch's CPU int4 layout and
    ``scales_zeros`` (K/group_size, N, 2) with each group's scale and zero, in the model dtype.

    Needs ``out_features % 16 == 0`` and ``in_features % group_size == 0`` (see ``int4_fits``).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        group_size: int = 128,
        dtype: torch.dtype = torch.bfloat16,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if not int4_fits(in_features, out_features, group_size):
            raise ValueError(
                f"int4 needs out_features % 16 == 0 and in_features % group_size == 0 with group_size in "
                f"{INT4_GROUP_SIZES}; got in={in_features}, out={out_features}, group_size={group_size}"
            )
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        n, k, g = out_features, in_features, in_features // group_size
        self.register_buffer("packed", torch.zeros(n, k // 2, dtype=torch.uint8, device=device))
        self.register_buffer("scales_zeros", torch.zeros(g, n, 2, dtype=dtype, device=device))
        b = torch.zeros(out_features, dtype=dtype, device=device) if bias else None
        self.bias = None if b is None else nn.Parameter(b, requires_grad=False)

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, group_size: int = 128) -> Int4Linear:
        w = linear.weight.detach()
        n, k = w.shape
        new = cls(k, n, linear.bias is not None, group_size=group_size, dtype=w.dtype, device=w.device)
        wf = w.float().view(n, k // group_size, group_size)  # (N, G, gs)
        lo, hi = wf.amin(-1, keepdim=True), wf.amax(-1, keepdim=True)
        scale = ((hi - lo) / 15).clamp_min(1e-8)  # (N, G, 1)
        q = ((wf - lo) / scale).round().clamp(0, 15).to(torch.int32).view(n, k)
        new.packed.copy_(torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.cpu(), 1).view(n, k // 2))
        zero = lo + 8 * scale
        new.scales_zeros.copy_(torch.cat([scale, zero], dim=-1).transpose(0, 1).to(w.dtype))  # (G, N, 2)
        if linear.bias is not None:
            new.bias.copy_(linear.bias.detach())
        return new

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The (N, K) weight this layer multiplies by, in ``dtype`` (default: the scales' dtype)."""
        n, k, gs = self.out_features, self.in_features, self.group_size
        dtype = dtype or self.scales_zeros.dtype
        sz = self.scales_zeros.float()  # (G, N, 2)
        scale, low = sz[..., 0].t().to(dtype), (sz[..., 1] - 8 * sz[..., 0]).t().to(dtype)  # (N, G) each
        w = _unpack_int4(self.packed, n, k, dtype).view(n, k // gs, gs)  # in place below: q * scale + low
        return w.mul_(scale[..., None]).add_(low[..., None]).view(n, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])  # (M, K)
        if x2.shape[0] >= INT4_KERNEL_ROWS or x.device.type != "cpu":
            return dense_linear(x, self.dequantize(compute_dtype(x.dtype, x2.shape[0])), self.bias)
        sz = self.scales_zeros.to(x.dtype)
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(x2.contiguous(), self.packed, self.group_size, sz)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        sizes = f"in_features={self.in_features}, out_features={self.out_features}"
        return f"{sizes}, bias={self.bias is not None}, group_size={self.group_size}"


def int4_fits(in_features: int, out_features: int, group_size: int) -> bool:
    """Whether torch's packed int4 CPU kernel takes this shape."""
    return group_size in INT4_GROUP_SIZES and out_features % 16 == 0 and in_features % group_size == 0


def int4_group(in_features: int, out_features: int, group_size: int) -> int | None:
    """The group size an int4 layer of this shape gets: ``group_size`` if the kernel takes it, else the largest
    smaller one that it takes (finer groups, a little more memory), else None (the layer stays in float).

    Example: a 192-wide layer with ``group_size=128``: 192 % 128 != 0, 192 % 64 == 0 -> groups of 64."""
    fits = [g for g in INT4_GROUP_SIZES if g <= group_size and int4_fits(in_features, out_features, g)]
    return max(fits) if fits else None


def quantize_model(
    module: nn.Module,
    mode: Literal["int8", "int4"],
    *,
    group_size: int = 128,
    skip: Callable[[str], bool] | None = None,
) -> nn.Module:
    """Replace every ``nn.Linear`` below ``module`` (unless ``skip(name)``) by its quantized twin, in place.

    int4 uses ``group_size`` where the kernel takes it and otherwise the largest smaller group that fits
    (``int4_group``); a layer no group fits (``out_features`` not a multiple of 16, or ``in_features`` not one of
    32) stays as it is. A tied LM head gets its own quantized copy of the embedding matrix (the embedding lookup
    keeps the float one): for Qwen2-0.5B that is +136 MB (int8) / +72 MB (int4) of memory, and 136 MB (int8) /
    200 MB (int4) less to read per decoded token.
    Pass ``skip=lambda n: n.endswith("lm_head")`` to keep the head in float.
    """
    if mode not in ("int8", "int4"):
        raise ValueError(f"quantize must be 'int8' or 'int4', got {mode!r}")
    if mode == "int4" and group_size not in INT4_GROUP_SIZES:
        raise ValueError(f"int4 group_size must be one of {INT4_GROUP_SIZES}, got {group_size}")
    targets = [(n, m) for n, m in module.named_modules() if type(m) is nn.Linear and not (skip and skip(n))]
    if not targets:
        raise ValueError(
            "no nn.Linear layer left to quantize: the model is already quantized or optimized for inference "
            "(llavakit.load quantizes before it optimizes); load it again with quantize=... instead"
        )
    for name, lin in targets:
        if mode == "int8":
            new: nn.Module = Int8Linear.from_linear(lin)
        elif (group := int4_group(lin.in_features, lin.out_features, group_size)) is not None:
            new = Int4Linear.from_linear(lin, group)
        else:
            continue  # no group the int4 kernel takes fits this shape: the layer stays in float
        parent_name, _, attr = name.rpartition(".")
        setattr(module.get_submodule(parent_name) if parent_name else module, attr, new)
    return module


def check_quantize_mode(quantize: str) -> None:
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {', '.join(QUANTIZE_MODES)}, got {quantize!r}")


def quantize_llava(model: nn.Module, quantize: str, *, group_size: int = 128) -> nn.Module:
    """What ``llavakit.load(..., quantize=...)`` does: quantize the decoder's Linears (``model.model.language_model``)
    and, with a ``+head`` mode ("int8+head", "int4+head"), the LM head too; the vision tower and the projector
    stay in float. Plain modes keep the head in float, as llama.cpp keeps its output matrix at higher precision:
    the head sets every logit. For Qwen2-0.5B the head is a quarter of the bytes a bf16 token reads (272 of
    990 MB); in int4 its product took 3.3 instead of 11.3 ms on a 2-core Xeon (README "Speed on a CPU")."""
    check_quantize_mode(quantize)
    mode, _, head = quantize.partition("+")
    keep = ("model.language_model.",) + (("lm_head",) if head else ())
    return quantize_model(model, mode, group_size=group_size, skip=lambda n: not n.startswith(keep))  # type: ignore[arg-type]


def _logits(out: Any) -> torch.Tensor:
    return (out.logits if hasattr(out, "logits") else out).float()


@torch.no_grad()
def quantization_error(reference: nn.Module, quantized: nn.Module, inputs: Any) -> dict[str, float]:
    """Output error of ``quantized`` against ``reference`` on the same inputs (a dict of keyword arguments, a
    tuple of positional ones, or one tensor); outputs may be tensors or have ``.logits``.

    Returns max_abs, mean_abs, rel (||diff|| / ||ref||) and top1_agreement (argmax over the last dim).
    """

    def run(m: nn.Module) -> torch.Tensor:
        if isinstance(inputs, dict):
            return _logits(m(**inputs))
        return _logits(m(*inputs) if isinstance(inputs, tuple) else m(inputs))

    ref, out = run(reference), run(quantized)
    diff = (out - ref).abs()
    return {
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
        "rel": float(diff.norm() / ref.norm().clamp_min(1e-12)),
        "top1_agreement": float((out.argmax(-1) == ref.argmax(-1)).float().mean()),
    }
