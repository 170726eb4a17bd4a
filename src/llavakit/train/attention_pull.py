"""Attention recomputed from what a decoder layer's attention was given, for the auxiliary losses that pull it
(``llavakit.train.place``: onto a named shape, a counted set of shapes, or a word): SDPA does not return its
weights, so the pre-hook's inputs (normed hidden states, rotary cos / sin, mask) are projected again at the one
query each loss needs; and where those queries are (the naming word, the answer)."""

from __future__ import annotations

import torch

from ..model.rope import apply_rotary


def attention_log_probs(captured: tuple, j: int, q_at: int) -> torch.Tensor:
    """(H, S) log of the attention each head of one layer puts from position ``q_at`` of row ``j`` on positions
    0..q_at (S = q_at + 1), recomputed from what the layer's attention was given: ``captured`` = (attention module,
    its normed input (B, T, D), cos, sin, mask (B, 1, T, T) or None)."""
    att, x, cos, sin, mask = captured
    xs = x[j : j + 1, : q_at + 1]  # (1, S, D)
    n = xs.shape[1]
    q = att.q_proj(xs[:, -1:]).view(1, 1, att.heads, att.head_dim).transpose(1, 2)  # (1, H, 1, d)
    k = att.k_proj(xs).view(1, n, att.kv_heads, att.head_dim).transpose(1, 2)  # (1, KV, S, d)
    q = apply_rotary(q, cos[j : j + 1, :, q_at : q_at + 1], sin[j : j + 1, :, q_at : q_at + 1])
    k = apply_rotary(k, cos[j : j + 1, :, :n], sin[j : j + 1, :, :n])
    k = k.repeat_interleave(att.heads // att.kv_heads, dim=1)
    logits = (q @ k.transpose(-1, -2))[0, :, 0] / att.head_dim**0.5  # (H, S)
    if mask is not None:
        logits = logits.masked_fill(~mask[j if mask.shape[0] > 1 else 0, 0, q_at, :n], float("-inf"))
    return logits.log_softmax(-1)


def attention_log_mass(
    captured: list[tuple], queries: dict[int, int], targets: torch.Tensor, every_head: bool = False
) -> torch.Tensor:
    """(R, L) log of the largest attention mass a head of each layer puts on ``targets`` (B, T) from position
    ``queries[j]`` of each row j (in the dict's order; ``every_head``: the mean over the heads of the log mass);
    ``captured``: per layer, what ``attention_log_probs`` takes."""
    out = []
    for j, q_at in queries.items():
        per_layer = []
        for layer in captured:
            logp = attention_log_probs(layer, j, q_at)  # (H, S)
            per_head = logp[:, targets[j, : q_at + 1]].logsumexp(-1)  # (H,)
            per_layer.append(per_head.mean() if every_head else per_head.max())
        out.append(torch.stack(per_layer))
    return torch.stack(out)


def attention_cross_entropy(captured: tuple, queries: dict[int, int], want: torch.Tensor) -> torch.Tensor:
    """The mean over rows and heads of one layer of the cross-entropy between the attention from ``queries[j]`` and
    the distribution ``want`` (B, T) over positions (each row sums to 1 before its query). Its least value is
    ``want``'s entropy, reached when every head attends as ``want`` says."""
    out = []
    for j, q_at in queries.items():
        logp = attention_log_probs(captured, j, q_at).clamp(min=-1e4)  # (H, S): -inf where masked
        out.append(-(logp * want[j, : q_at + 1]).sum(-1).mean())
    return torch.stack(out).mean()


def kind_positions(input_ids: torch.Tensor, labels: torch.Tensor, kind_ids: list[int | None]) -> list[int | None]:
    """Per row, the last position of token ``kind_ids[j]`` before the row's first label (the named kind's word in
    the first question), None when the row has no kind or the word is not there. Worked example: ids [[7, 9, 5, 9,
    3, 4]], labels [[-100, -100, -100, -100, -100, 4]], kind_ids [9] -> [3]."""
    out: list[int | None] = []
    for j, kid in enumerate(kind_ids):
        first = int((labels[j] != -100).nonzero()[0, 0]) if (labels[j] != -100).any() else 0
        hits = (input_ids[j, :first] == kid).nonzero()[:, 0] if kid is not None else torch.zeros(0)
        out.append(int(hits[-1]) if len(hits) else None)
    return out


def answer_queries(labels: torch.Tensor, rows: list[int]) -> list[int]:
    """The position just before each row's first label (where the first answer is predicted from)."""
    return [int((labels[j] != -100).nonzero()[0, 0]) - 1 for j in rows]
