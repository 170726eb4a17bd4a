"""The training loss: next-token cross-entropy over the supervised tokens only (the logits of the other
positions are never computed: ``supervised_positions`` is the model's ``logits_mask``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..model.llava import IGNORE_INDEX


def supervised_positions(labels: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: positions whose next token is supervised (the only logits the loss needs).

    labels [[-100, -100, 7, 8]] -> [[False, True, True, False]]: position 1 predicts 7, position 2 predicts 8.
    """
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return mask


def supervised_targets(labels: torch.Tensor) -> torch.Tensor:
    """(N,) next-token targets in the row-major order of ``supervised_positions``."""
    target = labels[:, 1:]
    return target[target != IGNORE_INDEX]


def supervised_ce_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of next-token CE over supervised positions; ``logits`` are (N, V) rows at ``supervised_positions``
    (``model(..., logits_mask=...)``) or the full (B, T, V)."""
    if logits.dim() == 3:
        logits = logits[supervised_positions(labels)]
    return F.cross_entropy(logits.float(), supervised_targets(labels), reduction="sum")
