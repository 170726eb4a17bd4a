"""``ThreadedLinear``: float32 products of a few rows (decode tokens, short prompts) on all cores.

On a 2-core AVX2 EPYC, MKL ran a one-row float32 product on one core and 2-8 rows up to 3x slower than one row
(24 Qwen2-0.5B layers, weights from memory: 1 row 149 ms, 4 rows 463 ms through ``F.linear``). One ``bmm`` over 8
slices of the weight's outputs spreads the product over the cores (the same layers: 87 and 126 ms).
``linear.optimize_model`` swaps it in (``linear.threaded_linears``). Inference only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# ThreadedLinear's block products up to this many rows; longer prompts stay on F.linear. The 24 Qwen2-0.5B layers
# (2 threads), F.linear -> blocks, on a busy VM: 64 rows 902 -> 528 ms, 128 rows 1542 -> 1017, 256 rows 2167 -> 1836;
# on a quiet one (two runs): 8 rows 190 -> 139, 32 rows 294 -> 285, 64 rows 556 -> 590 and 472 -> 485, 128 rows
# 934 -> 933, 254 rows 1551 -> 1916 and 1465 -> 1896: above 128 rows MKL's own threading wins.
FEW_ROWS = 128
# Smaller weights stay on F.linear: one that sits in the cache gains nothing from a second core and pays bmm's
# overhead (192 x 512 repeated: 13 vs 20 us for one row). Qwen2-0.5B's 896 x 896 q/o weights are above the line:
# read from memory in the 24-layer decode step they gained (one row 150 -> 145 ms per step, four 302 -> 249 ms).
MIN_THREADED_WEIGHT = 1 << 19


def blocks_for(n: int) -> int:
    """How many weight blocks a product of ``n`` outputs is cut into: 8, 4 or 2 (at least 64 outputs each), else 1."""
    return next((k for k in (8, 4, 2) if n % k == 0 and n // k >= 64), 1)


def threaded_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, blocks: int) -> torch.Tensor:
    """``F.linear`` of a few float32 rows as one ``bmm`` over ``blocks`` slices of the weight's outputs:
    (M, K) x (N, K) -> (M, N), contiguous. Equal to ``F.linear`` up to summation order.

    Why: MKL runs a one-row float32 product on one core and a product of 2-8 rows up to 3x slower than one row,
    while ``bmm`` spreads its batch over all cores, each block a plain product that streams its slice once.
    Example: N = 4864 outputs, 8 blocks: W viewed (8, 608, K) (row-major, no copy); one row x (1, K) -> bmm of
    x (8, 1, K) by W^T (8, K, 608) -> (8, 1, 608) -> (1, 4864). For M >= 2 rows the weight is the left operand:
    W (8, 608, K) @ x^T (8, K, M) -> (8, 608, M) -> each block transposed (8, M, 608) -> (M, 8, 608) = (M, 4864).
    A column-major weight (``transpose_head``'s (V, D) with strides (1, V)) is viewed (k, V/k, D) the same way;
    its blocks are (D, V/k) row-major slices, so it always takes the x-major form.
    """
    m, k = x.shape
    n = weight.shape[0]
    w = weight.view(blocks, n // blocks, k)  # (k_b, N/k_b, K)
    if m == 1 or weight.stride(0) == 1:
        out = torch.bmm(x.expand(blocks, m, k), w.transpose(1, 2))  # (k_b, M, N/k_b)
        out = out.transpose(0, 1).reshape(m, n)
    else:
        out = torch.bmm(w, x.t().expand(blocks, k, m))  # (k_b, N/k_b, M)
        # (M, N) through per-block transposes: 2-4x faster than one strided copy of (N, M) (151936 x 4: 0.7 vs 1.3 ms)
        out = out.transpose(1, 2).contiguous().transpose(0, 1).reshape(m, n)
    out = out.contiguous()
    return out if bias is None else out.add_(bias)


class ThreadedLinear(nn.Module):
    """``nn.Linear`` whose float32 CPU products of 1-128 rows go through ``threaded_linear``; longer ones through
    ``F.linear``. ``weight`` and ``bias`` are the original parameters (same state-dict keys, no copy; a tied or
    transposed LM head keeps its memory)."""

    def __init__(self, linear: nn.Linear, max_rows: int = FEW_ROWS) -> None:
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.max_rows = max_rows
        self.blocks = blocks_for(linear.out_features)
        self._rows: torch.Tensor | None = None  # see _row_major
        self._source_version = -1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.numel() // self.in_features
        if m > self.max_rows or self.blocks == 1 or x.device.type != "cpu" or x.dtype != self.weight.dtype:
            return F.linear(x, self.weight, self.bias)
        w = self.weight
        if m > 1 and w.stride(0) == 1 and not torch.compiler.is_compiling():
            w = self._row_major()
        out = threaded_linear(x.reshape(m, self.in_features), w, self.bias, self.blocks)  # (M, N)
        return out.view(*x.shape[:-1], self.out_features)

    def _row_major(self) -> torch.Tensor:
        """A row-major copy of a column-major weight, made on the first product of several rows (batched decode).

        The transposed head (``transpose_head``) multiplies one row 1.6x faster than a row-major one, several
        rows 1.6x slower (151936 x 896, 4 rows: 79 vs 48 ms); single-stream decoding never pays for the copy.
        """
        if self._rows is None or self.weight._version != self._source_version:  # weight edited in place
            self._rows = self.weight.detach().contiguous()
            self._source_version = self.weight._version
        return self._rows

    def extra_repr(self) -> str:
        sizes = f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        return f"{sizes}, blocks={self.blocks}"
