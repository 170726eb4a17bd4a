"""Gradient (activation) checkpointing of decoder blocks by swapping each block's class for a subclass whose
forward recomputes the block in backward (``torch.utils.checkpoint``, non-reentrant). Module names and state-dict
keys do not change, and the model's forward has no branch for it."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..model.text import DecoderLayer
from ..model.vision import EncoderLayer


class CheckpointedDecoderLayer(DecoderLayer):
    def forward(self, x, cos, sin, mask, cache, layer) -> torch.Tensor:  # noqa: ANN001
        if cache is not None or not torch.is_grad_enabled():
            return super().forward(x, cos, sin, mask, cache, layer)
        return checkpoint(super().forward, x, cos, sin, mask, cache, layer, use_reentrant=False)


class CheckpointedEncoderLayer(EncoderLayer):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return super().forward(x)
        return checkpoint(super().forward, x, use_reentrant=False)


def enable_gradient_checkpointing(model: nn.Module, vision: bool = True) -> int:
    """Recompute every decoder block (and vision encoder layer) in backward; returns how many were swapped."""
    n = 0
    for m in model.modules():
        if type(m) is DecoderLayer:
            m.__class__ = CheckpointedDecoderLayer
            n += 1
        elif vision and type(m) is EncoderLayer:
            m.__class__ = CheckpointedEncoderLayer
            n += 1
    return n


def disable_gradient_checkpointing(model: nn.Module) -> None:
    for m in model.modules():
        if type(m) is CheckpointedDecoderLayer:
            m.__class__ = DecoderLayer
        elif type(m) is CheckpointedEncoderLayer:
            m.__class__ = EncoderLayer
