"""Configuration dataclasses for the LLaVA family, and their translation to and from HF ``config.json``.

One ``LlavaConfig`` holds a ``VisionConfig`` (CLIP or SigLIP ViT), a ``TextConfig`` (Llama / Mistral / Qwen2
decoder) and the multimodal glue settings. ``model_type`` picks the family:

- ``llava``            LLaVA-1.5: one base view per image;
- ``llava_next``       LLaVA-1.6: AnyRes tiles + ``spatial_unpad`` + ``image_newline``;
- ``llava_onevision``  OneVision: ``anyres_max_N`` downsampling, multi-image, video.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

FAMILIES = ("llava", "llava_next", "llava_onevision")
VISION_TYPES = ("clip_vision_model", "siglip_vision_model")
TEXT_TYPES = ("llama", "mistral", "qwen2")
TEXT_ACTIVATIONS = ("silu", "gelu", "gelu_pytorch_tanh", "gelu_new")  # model/text.py ACTIVATIONS
VISION_ACTIVATIONS = ("quick_gelu", "gelu", "gelu_pytorch_tanh")  # model/vision.py ACTIVATIONS
ROPE_TYPES = ("default", "linear", "dynamic", "llama3")  # model/rope.py
LAYER_TYPES = ("full_attention", "sliding_attention")  # transformers' layer_types entries we run
QWEN2_MAX_WINDOW_LAYERS = 28  # transformers' Qwen2Config default

V16_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def onevision_pinpoints(tile: int = 384, max_side: int = 6) -> list[list[int]]:
    """Every (i*tile, j*tile) for i, j in 1..max_side, as (height, width)."""
    return [[i * tile, j * tile] for i in range(1, max_side + 1) for j in range(1, max_side + 1)]


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


@dataclass
class TextConfig:
    """A decoder-only LM covering Llama/Vicuna/Yi, Mistral (sliding window) and Qwen2 (qkv bias)."""

    model_type: str = "llama"
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None  # None -> num_attention_heads (MHA)
    head_dim: int | None = None  # None -> hidden_size // num_attention_heads
    hidden_act: str = "silu"
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    # None or {"rope_type": "linear"|"dynamic"|"llama3", "factor": float, ...} (HF names)
    rope_scaling: dict[str, Any] | None = None
    qkv_bias: bool | None = None  # None -> True for Qwen2, else False
    o_bias: bool = False  # Llama attention_bias=True sets both
    mlp_bias: bool = False
    sliding_window: int | None = None  # Mistral; Qwen2 only with use_sliding_window
    # per layer "full_attention" / "sliding_attention" (transformers' layer_types); None: sliding_window, if set,
    # applies to every layer (Mistral). Qwen2 windows only the layers from max_window_layers on.
    layer_types: list[str] | None = None
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.model_type not in TEXT_TYPES:
            raise ValueError(f"unknown text model_type {self.model_type!r}; supported: {', '.join(TEXT_TYPES)}")
        _positive(self, "text_config", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads", "max_position_embeddings")  # fmt: skip
        for name in ("num_key_value_heads", "head_dim"):
            if getattr(self, name) is not None:
                _positive(self, "text_config", name)
        kind = (self.rope_scaling or {}).get("rope_type", "default")
        if kind not in ROPE_TYPES:
            raise ValueError(
                f"text_config rope_type {kind!r} is not supported; llavakit supports {', '.join(ROPE_TYPES)}"
            )
        if self.hidden_act not in TEXT_ACTIVATIONS:
            raise ValueError(
                f"text_config.hidden_act {self.hidden_act!r} is not supported; supported: {', '.join(TEXT_ACTIVATIONS)}"
            )
        if self.qkv_bias is None:
            self.qkv_bias = self.model_type == "qwen2"
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.layer_types is not None:
            self.layer_types = list(self.layer_types)
            unknown = sorted(set(self.layer_types) - set(LAYER_TYPES))
            if unknown or len(self.layer_types) != self.num_hidden_layers:
                raise ValueError(
                    f"text_config.layer_types must list one of {', '.join(LAYER_TYPES)} for each of the "
                    f"{self.num_hidden_layers} layers, got {self.layer_types}"
                )
            if self.sliding_window is None or all(k == "sliding_attention" for k in self.layer_types):
                self.layer_types = None  # the same as no per-layer list: one window (or none) for every layer
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )

    def layer_window(self, layer: int) -> int | None:
        """The sliding window of decoder layer ``layer`` (None: it attends to every earlier token)."""
        if self.layer_types is not None and self.layer_types[layer] != "sliding_attention":
            return None
        return self.sliding_window

    @property
    def context_length(self) -> int:
        """Tokens the model takes (prompt + answer): ``max_position_embeddings``, stretched by RoPE scaling.

        With scaling, the longer of ``max_position_embeddings`` and ``factor`` times the original context
        (``original_max_position_embeddings``, else ``max_position_embeddings``): e.g. linear x2 over 4096 ->
        8192; Llama 3.1 (llama3 x8, original 8192, max 131072) -> 131072."""
        n = self.max_position_embeddings
        if not self.rope_scaling:
            return n
        factor = float(self.rope_scaling.get("factor", 1.0))
        base = int(self.rope_scaling.get("original_max_position_embeddings") or n)
        return max(n, int(factor * base))

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> TextConfig:
        mt = d.get("model_type", "llama")
        # keys a saved config leaves out take transformers' defaults for that model type (older transformers
        # wrote only the values that differ from them): a Qwen2 without max_position_embeddings has 32768 tokens
        kw = {**HF_TEXT_DEFAULTS.get(mt, {})}
        kw |= {f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d}
        # rope: transformers >= 5 writes rope_parameters {rope_theta, rope_type, ...}; older configs write
        # rope_theta and rope_scaling {type|rope_type, factor, ...}.
        rope = dict(d.get("rope_parameters") or {})
        scaling = dict(d.get("rope_scaling") or {})
        if "rope_theta" in rope:
            kw["rope_theta"] = rope.pop("rope_theta")
        scaling = {**scaling, **rope}
        if "type" in scaling and "rope_type" not in scaling:
            scaling["rope_type"] = scaling.pop("type")
        scaling.pop("type", None)
        kw["rope_scaling"] = scaling if scaling.get("rope_type", "default") != "default" else None
        if mt == "qwen2":
            kw["qkv_bias"] = True
            kw["o_bias"] = False
            if not d.get("use_sliding_window", False):
                kw["sliding_window"] = None
            elif not d.get("layer_types"):  # transformers' rule: the layers from max_window_layers on are windowed
                first = int(d.get("max_window_layers", QWEN2_MAX_WINDOW_LAYERS))
                n = int(kw.get("num_hidden_layers", 0))
                kw["layer_types"] = ["sliding_attention" if i >= first else "full_attention" for i in range(n)]
        elif mt == "mistral":  # transformers' Mistral has no biases: a stray attention_bias key changes nothing
            kw["qkv_bias"] = kw["o_bias"] = False
        elif d.get("attention_bias"):
            kw["qkv_bias"] = kw["o_bias"] = True
        if mt != "llama":  # only Llama reads mlp_bias
            kw["mlp_bias"] = False
        return cls(**{**kw, "model_type": mt})

    def to_hf(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("qkv_bias")
        d.pop("o_bias")
        d.pop("rope_scaling")
        d.pop("rope_theta")
        rope: dict[str, Any] = {"rope_theta": self.rope_theta, "rope_type": "default"}
        rope.update(self.rope_scaling or {})
        d["rope_parameters"] = rope
        if d["layer_types"] is None:
            d.pop("layer_types")  # transformers' Mistral warns about the key; Qwen2 derives it from the next two
        if self.model_type == "qwen2":
            d["use_sliding_window"] = self.sliding_window is not None
            sliding = [self.layer_window(i) is not None for i in range(self.num_hidden_layers)]
            d["max_window_layers"] = sliding.index(True) if any(sliding) else self.num_hidden_layers
        elif self.model_type == "llama":
            d["attention_bias"] = self.qkv_bias
        if self.model_type != "llama":
            d.pop("mlp_bias")
        # vLLM builds the language model from text_config by its architectures (llava-hf configs carry it)
        d["architectures"] = [TEXT_ARCHITECTURES[self.model_type]]
        return d


def _within(token_id: int | None, text: TextConfig) -> int | None:
    """A default token id, or None (the model's own default) when the vocabulary is too small for it."""
    return token_id if token_id is not None and token_id < text.vocab_size else None


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
TEXT_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
# transformers' LlamaConfig / MistralConfig / Qwen2Config defaults where they differ from TextConfig's
HF_TEXT_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"max_position_embeddings": 2048, "bos_token_id": 1, "eos_token_id": 2},
    "mistral": {"intermediate_size": 14336, "num_key_value_heads": 8, "max_position_embeddings": 4096 * 32,
                "sliding_window": 4096, "bos_token_id": 1, "eos_token_id": 2},
    "qwen2": {"vocab_size": 151936, "intermediate_size": 22016, "num_key_value_heads": 32,
              "max_position_embeddings": 32768},
}  # fmt: skip
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
        depth = 2
        return cls(
            model_type=mt,
            vision=VisionConfig.from_hf({"model_type": fam["vision_model_type"], **(d.get("vision_config") or {})}),
            text=text,
            image_token_id=d.get("image_token_id", d.get("image_token_index", fam["image_token_index"])),
            video_token_id=d.get("video_token_id", d.get("video_token_index", _within(fam["video_token_index"], text))),
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
