"""Configuration dataclasses for the LLaVA family, and their translation to and from HF ``config.json``.

One ``LlavaConfig`` holds a ``VisionConfig`` (CLIP or SigLIP ViT), a ``TextConfig`` (Llama / Mistral / Qwen2
decoder) and the multimodal glue settings. ``model_type`` picks the family:

- ``llava``            LLaVA-1.5: one base view per image;
- ``llava_next``       LLaVA-1.6: AnyRes tiles + ``spatial_unpad`` + ``image_newline``;
- ``llava_onevision``  OneVision: ``anyres_max_N`` downsampling, multi-image, video.

``VisionConfig`` is defined in ``config_vision``, ``TextConfig`` (with transformers' text defaults) in
``config_text``; both are re-exported here, so ``from llavakit.config import TextConfig`` keeps working.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

# the vision and text sections live in config_vision / config_text; every name stays importable from here
from .config_text import (  # noqa: F401
    HF_TEXT_DEFAULTS,
    LAYER_TYPES,
    QWEN2_MAX_WINDOW_LAYERS,
    ROPE_TYPES,
    TEXT_ACTIVATIONS,
    TEXT_ARCHITECTURES,
    TEXT_TYPES,
    TextConfig,
)
from .config_vision import VISION_ACTIVATIONS, VISION_TYPES, VisionConfig, _positive  # noqa: F401

FAMILIES = ("llava", "llava_next", "llava_onevision")

V16_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def onevision_pinpoints(tile: int = 384, max_side: int = 6) -> list[list[int]]:
    """Every (i*tile, j*tile) for i, j in 1..max_side, as (height, width)."""
    return [[i * tile, j * tile] for i in range(1, max_side + 1) for j in range(1, max_side + 1)]


def _within(token_id: int | None, text: TextConfig) -> int | None:
    """A default token id, or None (the model's own default) when the vocabulary is too small for it."""
    return token_id if token_id is not None and token_id < text.vocab_size else None


def _check_assumed_text(text: TextConfig, *token_ids: object) -> None:
    """A config.json without text_config gets transformers' default language model (a 7B Llama; Qwen2's defaults
    for OneVision): an image / video token id beyond its vocabulary shows the checkpoint is another model."""
    for token_id in token_ids:
        if isinstance(token_id, int) and not 0 <= token_id < text.vocab_size:
            name = TEXT_ARCHITECTURES[text.model_type].removesuffix("ForCausalLM")
            raise ValueError(
                f"config.json has no text_config, so transformers' default {name} language model was assumed "
                f"({text.num_hidden_layers} layers, hidden size {text.hidden_size}, vocabulary {text.vocab_size}), "
                f"but its image / video token id {token_id} is outside that vocabulary; add the text_config of the "
                "checkpoint to config.json"
            )


_OV_SIDES = (384, 768, 1152, 1536, 1920, 2304)
OV_PINPOINTS = [[h, w] for h in _OV_SIDES for w in _OV_SIDES]  # transformers' OneVision default (384-pixel tiles)
# transformers' LlavaConfig / LlavaNextConfig / LlavaOnevisionConfig defaults for keys a config.json leaves out
_LLAVA_DEFAULTS: dict[str, Any] = {
    "text_model_type": "llama",
    "vision_model_type": "clip_vision_model",
    "image_token_index": 32000,
    "video_token_index": None,
    "vision_feature_layer": -2,
    "select_strategy": "default",
    "pinpoints": None,
    "vision_aspect_ratio": None,
}
HF_FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "llava": _LLAVA_DEFAULTS,
    "llava_next": {**_LLAVA_DEFAULTS, "pinpoints": V16_PINPOINTS},
    "llava_onevision": {
        "text_model_type": "qwen2",
        "vision_model_type": "siglip_vision_model",
        "image_token_index": 151646,
        "video_token_index": 151647,
        "vision_feature_layer": -1,
        "select_strategy": "full",
        "pinpoints": OV_PINPOINTS,
        "vision_aspect_ratio": "anyres_max_9",
    },
}
_MLP_RE = re.compile(r"^mlp(\d+)x_gelu$")


@dataclass
class LlavaConfig:
    """The whole model: vision tower, projector, language model and how image features are merged."""

    model_type: str = "llava"
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    image_token_id: int = 32000
    video_token_id: int | None = None
    projector_type: str = "mlp2x_gelu"  # "linear" or "mlp{N}x_gelu"
    projector_hidden_act: str = "gelu"
    projector_bias: bool = True
    vision_feature_layer: int | list[int] = -2
    vision_feature_select_strategy: str = "default"  # "default" drops CLS, "full" keeps every token
    image_grid_pinpoints: list[list[int]] | None = None  # (height, width) pairs
    vision_aspect_ratio: str | None = None  # OneVision: "anyres_max_9"
    tie_word_embeddings: bool = False

    def __post_init__(self) -> None:
        if self.model_type not in FAMILIES:
            raise ValueError(f"unknown model_type {self.model_type!r}; llavakit supports {', '.join(FAMILIES)}")
        if self.vision_feature_select_strategy not in ("default", "full"):
            raise ValueError(
                "vision_feature_select_strategy must be 'default' or 'full', "
                f"got {self.vision_feature_select_strategy!r}"
            )
        if self.projector_type != "linear" and not _MLP_RE.match(self.projector_type):
            raise ValueError(f"projector_type must be 'linear' or 'mlp<N>x_gelu', got {self.projector_type!r}")
        if self.model_type != "llava" and not self.image_grid_pinpoints:
            self.image_grid_pinpoints = (
                onevision_pinpoints(self.vision.image_size) if self.model_type == "llava_onevision" else V16_PINPOINTS
            )
        if self.model_type == "llava_onevision" and self.vision_aspect_ratio is None:
            self.vision_aspect_ratio = "anyres_max_9"
        if self.model_type == "llava_onevision" and self.video_token_id is None:
            self.video_token_id = self.image_token_id + 1
        self.tie_word_embeddings = self.tie_word_embeddings or self.text.tie_word_embeddings
        n_states = self.vision.num_hidden_layers + 1  # the embeddings and each encoder layer's output
        bad = [i for i in self.feature_layers if not -n_states <= i < n_states]
        if bad or not self.feature_layers:  # was refused only at the first image, from inside the tower
            raise ValueError(
                f"vision_feature_layer {self.vision_feature_layer} is out of range for a vision tower of "
                f"{self.vision.num_hidden_layers} layers (-{n_states}..{n_states - 1}; LLaVA reads -2): fix config.json"
            )
        for name in ("image_token_id", "video_token_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.text.vocab_size:
                raise ValueError(
                    f"{name.replace('_id', '_index')} {value} is outside the text vocabulary of "
                    f"{self.text.vocab_size} tokens (text_config.vocab_size): config.json does not match the "
                    "checkpoint's embeddings or its tokenizer; fix the config (the tokenizer's id of the token)"
                )

    @property
    def projector_depth(self) -> int:
        """Number of Linear layers in the projector: 1 for ``linear``, N for ``mlpNx_gelu``."""
        m = _MLP_RE.match(self.projector_type)
        return int(m.group(1)) if m else 1

    @property
    def feature_layers(self) -> list[int]:
        v = self.vision_feature_layer
        return [v] if isinstance(v, int) else list(v)

    @property
    def max_tiles(self) -> int | None:
        """``anyres_max_9`` -> 9; None when features are never downsampled."""
        r = self.vision_aspect_ratio
        return int(r[len("anyres_max_") :]) if r and r.startswith("anyres_max_") else None

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> LlavaConfig:
        mt = d.get("model_type")
        if mt not in FAMILIES:
            raise ValueError(
                f"config.json has model_type {mt!r}; llavakit supports {', '.join(FAMILIES)} "
                "(original-format LLaVA checkpoints are read by llavakit.checkpoint and `llava convert`)"
            )
        fam = HF_FAMILY_DEFAULTS[mt]  # what transformers' config class of the family assumes for a key left out
        text = TextConfig.from_hf({"model_type": fam["text_model_type"], **(d.get("text_config") or {})})
        image_id = d.get("image_token_id", d.get("image_token_index", fam["image_token_index"]))
        video_id = d.get("video_token_id", d.get("video_token_index", _within(fam["video_token_index"], text)))
        if not d.get("text_config"):
            _check_assumed_text(text, image_id, video_id)
        depth = 2
        return cls(
            model_type=mt,
            vision=VisionConfig.from_hf({"model_type": fam["vision_model_type"], **(d.get("vision_config") or {})}),
            text=text,
            image_token_id=image_id,
            video_token_id=video_id,
            projector_type=d.get("projector_type", f"mlp{depth}x_gelu"),
            projector_hidden_act=d.get("projector_hidden_act", "gelu"),
            projector_bias=d.get("multimodal_projector_bias", True),
            vision_feature_layer=d.get("vision_feature_layer", fam["vision_feature_layer"]),
            vision_feature_select_strategy=d.get("vision_feature_select_strategy", fam["select_strategy"]),
            image_grid_pinpoints=d.get("image_grid_pinpoints") or fam["pinpoints"],
            vision_aspect_ratio=d.get("vision_aspect_ratio", fam["vision_aspect_ratio"]),
            tie_word_embeddings=d.get("tie_word_embeddings", False) or text.tie_word_embeddings,
        )

    def to_hf(self) -> dict[str, Any]:
        arch = {
            "llava": "LlavaForConditionalGeneration",
            "llava_next": "LlavaNextForConditionalGeneration",
            "llava_onevision": "LlavaOnevisionForConditionalGeneration",
        }[self.model_type]
        d: dict[str, Any] = {
            "architectures": [arch],
            "model_type": self.model_type,
            "vision_config": self.vision.to_hf(),
            "text_config": self.text.to_hf(),
            "image_token_index": self.image_token_id,
            "projector_hidden_act": self.projector_hidden_act,
            "multimodal_projector_bias": self.projector_bias,
            "vision_feature_layer": self.vision_feature_layer,
            "vision_feature_select_strategy": self.vision_feature_select_strategy,
            "tie_word_embeddings": self.tie_word_embeddings,
        }
        if self.projector_type != "mlp2x_gelu":
            d["projector_type"] = self.projector_type  # not read by transformers: only mlp2x_gelu loads there
        if self.model_type != "llava":
            d["image_grid_pinpoints"] = self.image_grid_pinpoints
        if self.model_type == "llava_onevision":
            d["vision_aspect_ratio"] = self.vision_aspect_ratio
            d["video_token_index"] = self.video_token_id
        return d


# weight-only quantization (``llavakit.load(quantize=...)``, ``--quantize``): the decoder's Linears, "+head" the LM
# head too (engine.quantize.quantize_llava)
QUANTIZE_MODES: tuple[str, ...] = ("int8", "int4", "int8+head", "int4+head")
