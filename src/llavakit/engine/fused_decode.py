"""One fbgemm product for the projections that read the same input: q, k, v and gate, up (bf16/fp16 decode).

A decode token multiplies each decoder Linear by one row, so its time is the time to stream the weights. fbgemm's
fp16 matrix-vector kernel streams one large matrix faster than two halves of it one after the other: Qwen2-0.5B's
24 gate and up matrices (418 MB) took 28 ms as 48 products and 21-23 ms as 24 products of the stacked
(2 x 4864, 896) matrices; q, k, v 3.0 ms as 72 products and 1.8-2.0 ms as 24 (2-core Xeon, 19 GB/s, 2 threads).

``fuse_decode_projections(model)`` swaps each decoder ``Attention`` for a ``FusedDecodeAttention`` and each
``MLP`` for a ``FusedDecodeMLP``: the same module with one packed fp16 copy of the stacked weights, used for calls
of up to ``DECODE_ROWS`` rows; longer calls (prompts) multiply the original bf16 weights one by one, as before.
The parts stay children under their names (``q_proj``, ``gate_proj``, ...: the same parameters, the same
state-dict keys) as ``DenseLinear`` modules; the stacked copy replaces the parts' own fp16 copies, so memory is
unchanged. Each output of the stacked product is the dot product the part's own product computes, so the
results are the unfused layers' bit for bit (tested).

Worked example (Qwen2-0.5B): q (896 x 896), k and v (128 x 896) stack to one (1152, 896) matrix; one token's
x (1, 896) gives (1, 1152) in float32, split back into q (1, 896), k (1, 128), v (1, 128) and each rounded to
bf16, exactly where the three separate products rounded.
"""

from __future__ import annotations

import torch
from torch import nn

from ..model.text import MLP, Attention
from .fp16_op import HandledFP16, _fp16_linear, fp16_decode_available
from .linear import DECODE_ROWS, FP16_MAX, DenseLinear, _swap


class StackedFP16(HandledFP16):
    """Several (N_i, K) weights stacked into one fbgemm-packed fp16 matrix: (M, K) float32 -> (M, sum N_i) float32.

    Holds no parameters (nothing in the state dict); the parts' biases, if any, are packed with it.
    """

    def __init__(self, parts: list[nn.Linear]) -> None:
        super().__init__()
        w = torch.cat([p.weight.detach().float() for p in parts])  # (sum N_i, K)
        biases = [p.bias for p in parts]
        b = None
        if any(x is not None for x in biases):
            b = torch.cat(
                [x.detach().float() if x is not None else w.new_zeros(p.out_features) for x, p in zip(biases, parts)]
            )
        self.sizes = [p.out_features for p in parts]
        self.out_features = sum(self.sizes)
        self.packed = torch.ops.quantized.linear_prepack_fp16(w, b)
        self._register()

    def forward(self, x2: torch.Tensor, dtype: torch.dtype) -> list[torch.Tensor]:
        """x2 (M, K) -> one (M, N_i) tensor per part, in ``dtype`` (each rounded once, from float32 sums)."""
        if torch.compiler.is_compiling():
            out = _fp16_linear(x2.float(), self.handle, self.out_features)
        else:  # the same kernel without the op's dispatch
            out = torch.ops.quantized.linear_dynamic_fp16(x2.float(), self.packed)
        return list(out.to(dtype).split(self.sizes, dim=-1))  # one rounding pass for all parts


def _few_rows(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.numel() // x.shape[-1] <= DECODE_ROWS


class FusedDecodeAttention(Attention):
    """``Attention`` whose q, k, v come from one stacked fp16 product for up to ``DECODE_ROWS`` rows."""

    def __init__(self, attn: Attention) -> None:
        nn.Module.__init__(self)
        self.heads, self.kv_heads, self.head_dim = attn.heads, attn.kv_heads, attn.head_dim
        self.qkv = StackedFP16([attn.q_proj, attn.k_proj, attn.v_proj])
        self.q_proj, self.k_proj, self.v_proj = (DenseLinear(p) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
        self.o_proj = attn.o_proj

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not _few_rows(x):
            return super().project(x)
        q, k, v = self.qkv(x.reshape(-1, x.shape[-1]), x.dtype)
        lead = x.shape[:-1]
        return q.reshape(*lead, -1), k.reshape(*lead, -1), v.reshape(*lead, -1)


class FusedDecodeMLP(MLP):
    """``MLP`` whose gate and up come from one stacked fp16 product for up to ``DECODE_ROWS`` rows."""

    def __init__(self, mlp: MLP) -> None:
        nn.Module.__init__(self)
        self.gate_up_fp16 = StackedFP16([mlp.gate_proj, mlp.up_proj])
        self.gate_proj, self.up_proj = DenseLinear(mlp.gate_proj), DenseLinear(mlp.up_proj)
        self.down_proj = mlp.down_proj
        self.act = mlp.act

    def gate_up(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not _few_rows(x):
            return super().gate_up(x)
        gate, up = self.gate_up_fp16(x.reshape(-1, x.shape[-1]), x.dtype)
        lead = x.shape[:-1]
        return gate.reshape(*lead, -1), up.reshape(*lead, -1)


def _fusable(parts: list[nn.Module], min_weight: int) -> bool:
    """Plain CPU bf16/fp16 Linears of one input size, together at least ``min_weight`` weights, all in fp16 range."""
    if not all(type(p) is nn.Linear for p in parts):  # quantized or already swapped: leave them
        return False
    ws = [p.weight for p in parts]
    if any(w.device.type != "cpu" or w.dtype not in (torch.bfloat16, torch.float16) for w in ws):
        return False
    if len({w.shape[1] for w in ws}) != 1 or sum(w.numel() for w in ws) < min_weight:
        return False
    return all(float(w.detach().abs().max()) < FP16_MAX for w in ws)


def fuse_decode_projections(model: nn.Module, *, min_weight: int) -> dict[str, int]:
    """Swap the decoder's ``Attention`` / ``MLP`` modules whose q, k, v (gate, up) are plain bf16/fp16 CPU Linears
    of ``min_weight`` weights or more together for their fused forms; returns the number of Linears each kind took
    over ({} when this torch build has no fbgemm fp16 kernels)."""
    if not fp16_decode_available():
        return {}
    counts = {"FusedDecodeAttention": 0, "FusedDecodeMLP": 0}
    for name, m in list(model.named_modules()):
        if type(m) is Attention and _fusable([m.q_proj, m.k_proj, m.v_proj], min_weight):
            _swap(model, name, FusedDecodeAttention(m))
            counts["FusedDecodeAttention"] += 3
        elif type(m) is MLP and _fusable([m.gate_proj, m.up_proj], min_weight):
            _swap(model, name, FusedDecodeMLP(m))
            counts["FusedDecodeMLP"] += 2
    return {k: v for k, v in counts.items() if v}
