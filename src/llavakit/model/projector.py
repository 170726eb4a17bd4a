"""The multimodal projector: ``linear`` (one Linear) or ``mlp{N}x_gelu`` (N Linears with GELU between)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import LlavaConfig

ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),  # transformers' NewGELU: the same tanh formula
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "relu": F.relu,
    "silu": F.silu,
}


class Projector(nn.Module):
    """(..., in_features) -> (..., out_features). Keys linear_1, linear_2, ... as HF's LlavaMultiModalProjector."""

    def __init__(self, in_features: int, out_features: int, depth: int = 2, act: str = "gelu", bias: bool = True):
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"unknown projector activation {act!r}; supported: {', '.join(ACTIVATIONS)}")
        self.depth = depth
        self.act = ACTIVATIONS[act]
        for i in range(depth):
            setattr(
                self, f"linear_{i + 1}", nn.Linear(in_features if i == 0 else out_features, out_features, bias=bias)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear_1(x)
        for i in range(2, self.depth + 1):
            x = getattr(self, f"linear_{i}")(self.act(x))
        return x


def build_projector(config: LlavaConfig) -> Projector:
    return Projector(
        config.vision.hidden_size * len(config.feature_layers),
        config.text.hidden_size,
        depth=config.projector_depth,
        act=config.projector_hidden_act,
        bias=config.projector_bias,
    )
