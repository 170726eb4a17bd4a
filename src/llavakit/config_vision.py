"""The vision tower's configuration: a CLIP or SigLIP ViT, and its translation to and from HF's ``vision_config``.

``llavakit.config`` re-exports everything here; ``_positive`` is the integer check every config section shares.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

VISION_TYPES = ("clip_vision_model", "siglip_vision_model")
VISION_ACTIVATIONS = ("quick_gelu", "gelu", "gelu_pytorch_tanh")  # model/vision.py ACTIVATIONS


def _positive(cfg: object, section: str, *names: str) -> None:
    """ValueError naming the config.json key if any of ``names`` is not a positive integer."""
    for name in names:
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"config.json: {section}.{name} must be a positive integer, got {value!r}")


@dataclass
class VisionConfig:
    """A ViT: CLIP (pre-LN, CLS token, quick_gelu) or SigLIP (no CLS, gelu tanh)."""

    model_type: str = "clip_vision_model"
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    num_channels: int = 3
    image_size: int = 336
    patch_size: int = 14
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.model_type not in VISION_TYPES:
            raise ValueError(f"unknown vision model_type {self.model_type!r}; supported: {', '.join(VISION_TYPES)}")
        _positive(self, "vision_config", "hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads", "num_channels", "image_size", "patch_size")  # fmt: skip
        if self.hidden_size % self.num_attention_heads or self.image_size < self.patch_size:
            raise ValueError(
                f"vision_config: hidden_size {self.hidden_size} must be a multiple of num_attention_heads "
                f"{self.num_attention_heads} and image_size {self.image_size} at least patch_size {self.patch_size}"
            )
        if self.hidden_act not in VISION_ACTIVATIONS:
            raise ValueError(
                f"vision_config.hidden_act {self.hidden_act!r} is not supported; supported: "
                f"{', '.join(VISION_ACTIVATIONS)}"
            )

    @property
    def has_cls(self) -> bool:
        return self.model_type == "clip_vision_model"

    @property
    def grid(self) -> int:
        """Patches per side of one tile: 336 // 14 = 24."""
        return self.image_size // self.patch_size

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> VisionConfig:
        mt = d.get("model_type", "clip_vision_model")
        defaults = {"hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6} if "siglip" in mt else {}
        kw = {f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d}
        return cls(**{**defaults, **kw, "model_type": mt})

    def to_hf(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if self.model_type == "siglip_vision_model":
            d["vision_use_head"] = False
        return d
