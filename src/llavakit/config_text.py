"""The language model's configuration: a Llama / Mistral / Qwen2 decoder, and its translation to and from HF's
``text_config`` (with transformers' defaults for the keys a saved config leaves out).

``llavakit.config`` re-exports everything here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .config_vision import _positive

TEXT_TYPES = ("llama", "mistral", "qwen2")
TEXT_ACTIVATIONS = ("silu", "gelu", "gelu_pytorch_tanh", "gelu_new")  # model/text.py ACTIVATIONS
ROPE_TYPES = ("default", "linear", "dynamic", "llama3")  # model/rope.py
LAYER_TYPES = ("full_attention", "sliding_attention")  # transformers' layer_types entries we run
QWEN2_MAX_WINDOW_LAYERS = 28  # transformers' Qwen2Config default


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


TEXT_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
# transformers' LlamaConfig / MistralConfig / Qwen2Config defaults where they differ from TextConfig's
HF_TEXT_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"max_position_embeddings": 2048, "bos_token_id": 1, "eos_token_id": 2},
    "mistral": {"intermediate_size": 14336, "num_key_value_heads": 8, "max_position_embeddings": 4096 * 32,
                "sliding_window": 4096, "bos_token_id": 1, "eos_token_id": 2},
    "qwen2": {"vocab_size": 151936, "intermediate_size": 22016, "num_key_value_heads": 32,
              "max_position_embeddings": 32768},
}  # fmt: skip
