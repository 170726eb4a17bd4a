"""Faster CPU inference Linear layers, swapped in for ``nn.Linear`` (the model code never changes).

``optimize_model(model)`` picks among them for this machine (``llavakit.load`` calls it):

- ``BF16DecodeLinear`` (bf16/fp16 decoder and LM head): one decode token is a matrix-vector product that only
  has to stream the weight once. fbgemm's fp16 matrix-vector kernel on a pre-packed fp16 copy of the weight
  beats torch's bf16 product (which widens every weight with slow code on CPUs without bf16 hardware). A
  bf16 weight is exact in fp16 (8 significant bits vs 11) for magnitudes in [2^-14, 65504); smaller ones
  (fp16 subnormals) move by at most 2^-25 ~ 3e-8 and larger ones are refused. Activations go in as fp32 and
  the sums are fp32 (relative error ~5e-7 against float64), so the result is the bf16 layer's up to the final
  rounding. The fp16 copy replaces the bf16 weight (no extra memory) unless it is shared with an embedding.
  Many rows (prefill) go through ``dense_linear``.
- ``SmallDecodeLinear`` (``small_linear``; small bf16/fp16 decoder Linears where bf16 GEMMs are native):
  one-token rows in float32 against a float32 copy (the bf16 / fp16 kernels cost ~25 us per call whatever the
  size below ~0.5M weights).
- ``dense_linear`` / ``DenseLinear``: ``F.linear`` that widens bf16 to float32 where bf16 GEMMs are not native
  (AVX2 CPUs: torch's bf16 GEMM ran at 2.8 GFLOP/s there, float32 at 15, 2 threads); elsewhere plain F.linear.
- ``ThreadedLinear`` (float32 decoder and LM head, ``engine.threaded_linear``): 1-128 rows (decode, short
  prompts) as one ``bmm`` over 8 slices of the weight, on all cores (MKL ran one float32 row on one core here).
- ``PackedLinear``: the weight reordered once for oneDNN (bf16 needs AVX-512 or AVX-NE-CONVERT); used for the
  vision tower where oneDNN packs bf16. float32 packing measured no faster, so float32 weights are not packed.

Inference only: the packed copies are made at swap time and do not follow later edits of ``weight``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

from .fp16_op import HandledFP16, _fp16_linear, fp16_decode_available
from .threaded_linear import MIN_THREADED_WEIGHT, ThreadedLinear, blocks_for

# Up to this many rows per call, BF16DecodeLinear multiplies its fp16 copy with fbgemm; more rows take the bf16
# weight. Qwen2-0.5B shapes on a 2-core AVX-512-bf16 EPYC (weights from memory, ms per call, bf16 F.linear vs
# fbgemm): 896 -> 4864 at 8 rows 0.78 vs 0.47, 16 rows 0.91 vs 0.86, 24 rows 1.09 vs 1.17; 4864 -> 896 at 8 rows
# 0.59 vs 0.52, 16 rows 0.76 vs 0.93.
DECODE_ROWS = 12
# Without its bf16 weight a module multiplies up to this many rows with fbgemm (fp16 read, float32 compute, about
# half the bf16 GEMM rate) rather than unpacking its fp16 copy (~20-25 ms per 896 x 4864 matrix, the cost of
# ~1000 rows of the bf16 product): 2340 rows 896 -> 4864 took 115 ms through fbgemm, 77 ms unpacked.
LEAN_DECODE_ROWS = 512
# Smaller weights stay off fbgemm: its kernel always starts a parallel region, which cost 0.03 ms for a 64 x 64
# weight on an idle core and ~10 ms when the other core was busy; a float32 product that small runs inline.
MIN_FP16_WEIGHT = 1 << 16
# ... and where bf16 GEMMs are native, bf16 decoder weights below this size multiply one-token rows in float32
# (``SmallDecodeLinear``): oneDNN's and fbgemm's one-row bf16 / fp16 products cost 22-28 us for every weight from
# 64 x 64 to 896 x 256 (2-core Xeon with AMX, in cache), a float32 product with the casts 6-14 us.
MAX_SMALL_WEIGHT = 1 << 18
FP16_MAX = 65504.0


@cache
def packing_available(dtype: torch.dtype = torch.float32) -> bool:
    """True when oneDNN can pre-pack a ``dtype`` weight here (bf16 needs AVX-512 or AVX-NE-CONVERT: tried)."""
    if not (hasattr(torch.ops.mkldnn, "_linear_pointwise") and torch.backends.mkldnn.is_available()):
        return False
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(torch.ones(8, 8, dtype=dtype), 1)
        torch.ops.mkldnn._linear_pointwise(torch.ones(1, 8, dtype=dtype), packed, None, "none", [None], "")
    except RuntimeError:
        return False
    return True


@cache
def native_bf16_gemm() -> bool:
    """Whether bf16 GEMMs run natively here (AVX-512BW/VL/DQ, AVX-NE-CONVERT or AMX; oneDNN bf16 packing is the
    probe). Without it torch widens bf16 inside its GEMM and is ~5x slower than float32 (measured on a 2-core
    AVX2 EPYC: 2.8 vs 15 GFLOP/s for 2340 x 896 -> 4864)."""
    return packing_available(torch.bfloat16)


# Widening a weight to float32 costs about as much as ~40 rows of torch's bf16 GEMM on an AVX2 CPU (24 decoder
# layers, 18 rows: bf16 F.linear 4.7-5.4 s, widened 10-11 s under load; 512 rows: widened 7x faster).
FLOAT32_MIN_ROWS = 64


def compute_dtype(dtype: torch.dtype, rows: int = FLOAT32_MIN_ROWS) -> torch.dtype:
    """The dtype a product of ``rows`` ``dtype`` activations runs in: float32 for bf16/fp16 without native bf16
    GEMMs once there are ``FLOAT32_MIN_ROWS`` rows or more; else ``dtype``."""
    if dtype in (torch.bfloat16, torch.float16) and rows >= FLOAT32_MIN_ROWS and not native_bf16_gemm():
        return torch.float32
    return dtype


def dense_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear`` in ``compute_dtype(x.dtype)`` (CPU), result in ``x.dtype``: (..., K) x (N, K) -> (..., N).

    Widening bf16 to float32 is exact, and the float32 product differs from torch's bf16 one only in summation
    order (both accumulate in float32) before the final bf16 rounding.
    """
    ct = compute_dtype(x.dtype, x.numel() // max(x.shape[-1], 1)) if x.device.type == "cpu" else x.dtype
    out = F.linear(x.to(ct), weight.to(ct), None if bias is None else bias.to(ct))
    return out.to(x.dtype)


class DenseLinear(nn.Module):
    """``nn.Linear`` through ``dense_linear``: for bf16 layers that only see many rows (vision tower, projector)
    on CPUs without native bf16. ``weight`` and ``bias`` are the original parameters (same state-dict keys)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dense_linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class BF16DecodeLinear(HandledFP16):
    """``y = x W^T + b`` for a bf16/fp16 CPU weight: fbgemm fp16 kernel for few rows, ``dense_linear`` for many.

    ``keep_weight``: ``weight`` stays the original parameter (shared, not copied: a tied LM head keeps sharing the
    embedding matrix) beside the fp16 copy packed for fbgemm (``packed``, a plain attribute), and calls of more
    than ``decode_rows`` rows (default ``DECODE_ROWS``) multiply it. Without it the fp16 copy is the only one (no
    extra memory, no ``weight`` in the state dict; inference only): up to ``LEAN_DECODE_ROWS`` rows go through
    fbgemm, longer calls unpack the fp16 weight to float32 first (exact for magnitudes >= 2^-14; smaller values,
    fp16 subnormals, move by at most 2^-25 ~ 3e-8).
    """

    def __init__(self, linear: nn.Linear, *, decode_rows: int | None = None, keep_weight: bool = True) -> None:
        super().__init__()
        w = linear.weight
        if w.device.type != "cpu" or w.dtype not in (torch.bfloat16, torch.float16):
            raise ValueError(f"BF16DecodeLinear needs a CPU bfloat16/float16 weight, got {w.dtype} on {w.device}")
        if not fp16_decode_available():
            raise RuntimeError("this torch build has no fbgemm fp16 kernels; use PackedLinear instead")
        big = float(w.detach().abs().max())
        if not big < FP16_MAX:
            raise ValueError(f"weight magnitude {big:g} does not fit float16 (max {FP16_MAX:g}); keep nn.Linear")
        self.weight = linear.weight if keep_weight else None
        self.bias = linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.decode_rows = decode_rows if decode_rows is not None else DECODE_ROWS if keep_weight else LEAN_DECODE_ROWS
        self.dtype = w.dtype
        b = None if linear.bias is None else linear.bias.detach().float()
        self.packed = torch.ops.quantized.linear_prepack_fp16(w.detach().float(), b)  # fp16, fbgemm layout
        self._register()

    def full_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The (N, K) weight in ``dtype`` (default: the model dtype), from ``weight`` or unpacked from fp16."""
        if self.weight is not None:
            return self.weight.to(dtype or self.dtype)
        return torch.ops.quantized.linear_unpack_fp16(self.packed)[0].to(dtype or self.dtype)  # float32 first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])  # (M, K)
        if x2.shape[0] > self.decode_rows or x.device.type != "cpu":
            return dense_linear(x, self.full_weight(compute_dtype(x.dtype, x2.shape[0])), self.bias)
        if torch.compiler.is_compiling():
            out = _fp16_linear(x2.float(), self.handle, self.out_features)
        else:  # the same kernel without the custom-op dispatch
            out = torch.ops.quantized.linear_dynamic_fp16(x2.float(), self.packed)  # (M, N) float32
        return out.to(x.dtype).reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        sizes = f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        return f"{sizes}, keeps_weight={self.weight is not None}"


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


def _swap(module: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(module.get_submodule(parent_name) if parent_name else module, attr, new)


def _tied(module: nn.Module) -> set[int]:
    return {id(p) for m in module.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}


def optimize_for_decode(
    module: nn.Module,
    *,
    skip: Callable[[str], bool] | None = None,
    keep_weights: bool = False,
    min_weight: int = MIN_FP16_WEIGHT,
) -> int:
    """Swap every CPU bf16/fp16 ``nn.Linear`` below ``module`` (unless ``skip(name)``) for a
    ``BF16DecodeLinear``; returns how many were swapped (0 when fbgemm's fp16 kernels are missing).

    The bf16 weight is dropped (memory stays the same, prompts multiply the fp16 copy) unless ``keep_weights``
    (prompts multiply the bf16 weight: fast where bf16 GEMMs are native, for a second copy of every weight) or
    it is shared with an embedding (a tied LM head: its fp16 copy is extra memory, 272 MB for Qwen2-0.5B's
    151936 x 896 head).
    Layers that never see one-token inputs (vision tower, projector) gain nothing: skip them. Weights of fewer
    than ``min_weight`` elements are left alone.
    Example: ``optimize_for_decode(model, skip=lambda n: "vision_tower" in n or "projector" in n)``.
    """
    if not fp16_decode_available():
        return 0
    tied, swapped = _tied(module), 0
    for name, lin in list(module.named_modules()):
        if type(lin) is not nn.Linear or (skip is not None and skip(name)):
            continue
        w = lin.weight
        if w.device.type != "cpu" or w.dtype not in (torch.bfloat16, torch.float16) or w.numel() < min_weight:
            continue
        try:
            fast = BF16DecodeLinear(lin, keep_weight=keep_weights or id(w) in tied)
        except ValueError:  # a weight beyond fp16's range stays an nn.Linear
            continue
        _swap(module, name, fast)
        swapped += 1
    return swapped


def _dense(module: nn.Module, skip: Callable[[str], bool] | None = None) -> int:
    swapped = 0
    for name, lin in list(module.named_modules()):
        if type(lin) is nn.Linear and not (skip and skip(name)) and lin.weight.device.type == "cpu":
            if compute_dtype(lin.weight.dtype) != lin.weight.dtype:
                _swap(module, name, DenseLinear(lin))
                swapped += 1
    return swapped


def threaded_linears(
    module: nn.Module, skip: Callable[[str], bool] | None = None, min_weight: int = MIN_THREADED_WEIGHT
) -> int:
    """Swap the float32 CPU ``nn.Linear``s below ``module`` (unless ``skip(name)``) of ``min_weight`` elements or
    more whose outputs split into blocks for ``ThreadedLinear``s; returns how many."""
    swapped = 0
    for name, lin in list(module.named_modules()):
        if type(lin) is nn.Linear and not (skip and skip(name)) and blocks_for(lin.out_features) > 1:
            w = lin.weight
            if w.device.type == "cpu" and w.dtype == torch.float32 and w.numel() >= min_weight:
                _swap(module, name, ThreadedLinear(lin))
                swapped += 1
    return swapped


def is_many_rows_only(name: str) -> bool:
    """Layers of a Llava model that only ever see many rows: the vision tower and the projector."""
    return "vision_tower" in name or "multi_modal_projector" in name


def transpose_head(model: nn.Module) -> int:
    """Keep a float32 CPU LM head's (V, D) weight in column-major memory (a (D, V) matrix read transposed); 1 if done.

    One decode token multiplies it by a single row: with the (D, V) layout that product streams the matrix as D
    rows of V (``x @ W^T`` without a transpose), which MKL ran 2-2.6x faster on a 2-core AVX2 VM than V dot
    products of length D (151936 x 64: 9.2 -> 3.6 ms; 151936 x 896: 80 -> 41 ms, under load). The parameter
    keeps its shape, values and state-dict key; a tied embedding shares the same memory (a lookup reads a
    strided row: 2363 prompt tokens x 896 took 37 ms instead of 12). Logits move by summation order only.
    Briefly holds two copies of the matrix (the peak RSS grows by its size once).
    """
    head = getattr(model, "lm_head", None)
    if type(head) is not nn.Linear:
        return 0
    w = head.weight
    if w.device.type != "cpu" or w.dtype != torch.float32 or w.dim() != 2 or w.stride(0) == 1:
        return 0
    w.data = w.data.t().contiguous().t()  # same (V, D) tensor, strides (1, V)
    return 1


def optimize_model(
    model: nn.Module,
    *,
    min_fp16_weight: int = MIN_FP16_WEIGHT,
    fp16_decode: bool | None = None,
    min_threaded_weight: int = MIN_THREADED_WEIGHT,
    keep_bf16_weights: bool = True,
    max_small_weight: int = MAX_SMALL_WEIGHT,
) -> dict[str, int]:
    """The fastest correct CPU inference Linears for a Llava model (in place); returns counts per module kind.

    bf16/fp16 where bf16 GEMMs are native: decoder Linears of fewer than ``max_small_weight`` elements ->
    ``SmallDecodeLinear`` (one-token rows in float32: the bf16 / fp16 kernels' fixed cost dominates that small).
    bf16/fp16 with ``fp16_decode`` and ``keep_bf16_weights``: q/k/v and gate/up of each decoder layer -> one
    stacked fp16 product for decode (``engine.fused_decode``; counted as the Linears it takes over) where they
    are big enough for fbgemm together.
    bf16/fp16: decoder and LM head -> ``BF16DecodeLinear`` (fbgemm fp16 matrix-vector kernel for decode) where
    bf16 GEMMs are native (``fp16_decode``: None = that rule; on a loaded 2-core AVX2 VM it decoded no faster
    than bf16 ``F.linear`` end to end and its prefill had to unpack the fp16 weight); with ``keep_bf16_weights``
    each keeps its bf16 weight for prompts of more than ``DECODE_ROWS`` rows (bf16 GEMM, ~2x fbgemm's rate at
    254-2340 rows; 24 Qwen2-0.5B layers, 254-token prompt: 3.1 s unpacking the fp16 copies, see README) at the
    cost of the fp16 copies' memory (+0.72 GB for Qwen2-0.5B's layers);
    vision tower and projector -> ``PackedLinear`` where oneDNN packs bf16, else ``DenseLinear`` (float32
    compute where bf16 GEMMs are not native). Any layer still an ``nn.Linear`` after that (no fbgemm) gets the
    same treatment as the vision tower. float32: the LM head's weight stored transposed (``transpose_head``),
    decoder Linears and head -> ``ThreadedLinear`` (decode products on all cores), vision tower and projector
    unchanged (packing measured no faster). Quantized layers (``Int8Linear``, ``Int4Linear``) are left
    alone: they pick their own kernels.
    """
    if fp16_decode is None:  # on AVX2 (no native bf16) it measured no faster end to end, and prefill unpacks
        fp16_decode = native_bf16_gemm()
    counts = {"BF16DecodeLinear": 0, "SmallDecodeLinear": 0}
    if fp16_decode and keep_bf16_weights:  # q/k/v and gate/up each as one product (engine.fused_decode)
        from .fused_decode import fuse_decode_projections

        small = max_small_weight if native_bf16_gemm() else 0
        counts.update(fuse_decode_projections(model, min_weight=max(min_fp16_weight, small)))
    if native_bf16_gemm():
        from .small_linear import small_decode_linears

        counts["SmallDecodeLinear"] = small_decode_linears(model, skip=is_many_rows_only, max_weight=max_small_weight)
    if fp16_decode:
        counts["BF16DecodeLinear"] = optimize_for_decode(
            model, skip=is_many_rows_only, min_weight=min_fp16_weight, keep_weights=keep_bf16_weights
        )
    counts["PackedLinear"] = pack_linears(model, dtypes=(torch.bfloat16,))
    counts["DenseLinear"] = _dense(model)
    counts["transposed_head"] = transpose_head(model)
    counts["ThreadedLinear"] = threaded_linears(model, skip=is_many_rows_only, min_weight=min_threaded_weight)
    return {k: v for k, v in counts.items() if v}


def pack_linears(
    module: nn.Module,
    *,
    include_tied: bool = False,
    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16),
) -> int:
    """Swap every CPU ``nn.Linear`` of one of ``dtypes`` below ``module`` for a ``PackedLinear`` where oneDNN
    can pack that dtype here; returns how many were swapped.

    A Linear whose weight is shared with an embedding (tied LM head) is skipped unless ``include_tied``:
    packing makes a second copy of that matrix (the embedding lookup still needs the original).
    """
    shared, swapped = _tied(module), 0
    for name, lin in list(module.named_modules()):
        if type(lin) is not nn.Linear or lin.weight.device.type != "cpu":
            continue
        if lin.weight.dtype not in dtypes or not packing_available(lin.weight.dtype):
            continue
        if id(lin.weight) in shared and not include_tied:
            continue
        _swap(module, name, PackedLinear(lin))
        swapped += 1
    return swapped
