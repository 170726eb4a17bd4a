"""Tiny random reference models built in-process with transformers (the reference implementation).

Sizes are chosen so the AnyRes arithmetic is non-trivial: CLIP tiles of 56 px with patch 14 give a 4x4 feature
grid; SigLIP tiles of 70 px give an odd 5x5 grid (so OneVision's pooling rounds up: 5 -> 3).
"""

from __future__ import annotations

import torch

IMAGE_TOKEN = 120
VIDEO_TOKEN = 121
VOCAB = 128


def text_config(kind: str = "llama", **kw):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    base = dict(
        vocab_size=VOCAB,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    base.update(kw)
    cls = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}[kind]
    return cls(**base)


def vision_config(kind: str = "clip", **kw):
    from transformers import CLIPVisionConfig, SiglipVisionConfig

    if kind == "clip":
        base = dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            image_size=56,
            patch_size=14,
            projection_dim=16,
        )
        base.update(kw)
        return CLIPVisionConfig(**base)
    base = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=70,
        patch_size=14,
        vision_use_head=False,
    )
    base.update(kw)
    return SiglipVisionConfig(**base)


def hf_config(family: str, text: str = "llama", vision: str | None = None, **kw):
    from transformers import LlavaConfig, LlavaNextConfig, LlavaOnevisionConfig

    if family == "llava":
        return LlavaConfig(
            vision_config=vision_config(vision or "clip"),
            text_config=text_config(text),
            image_token_index=IMAGE_TOKEN,
            **kw,
        )
    if family == "llava_next":
        t = 56
        pins = [[t, 2 * t], [2 * t, t], [2 * t, 2 * t], [3 * t, t], [t, 3 * t]]
        return LlavaNextConfig(
            vision_config=vision_config(vision or "clip"),
            text_config=text_config(text),
            image_token_index=IMAGE_TOKEN,
            image_grid_pinpoints=pins,
            **kw,
        )
    t = 70
    pins = [[i * t, j * t] for i in range(1, 7) for j in range(1, 7)]
    kw.setdefault("vision_feature_layer", -1)
    kw.setdefault("vision_feature_select_strategy", "full")
    return LlavaOnevisionConfig(
        vision_config=vision_config(vision or "siglip"),
        text_config=text_config(text or "qwen2"),
        image_token_index=IMAGE_TOKEN,
        video_token_index=VIDEO_TOKEN,
        image_grid_pinpoints=pins,
        **kw,
    )


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fill every parameter with random values (norm weights around 1) so that any mismatch shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                std = 0.5 if p.dim() == 1 else 1.5 / max(p.shape[-1], 1) ** 0.5
                p.copy_(std * torch.randn(p.shape, generator=g))
    return model


def hf_model(family: str, text: str = "llama", vision: str | None = None, seed: int = 0, **kw):
    from transformers import (
        LlavaForConditionalGeneration,
        LlavaNextForConditionalGeneration,
        LlavaOnevisionForConditionalGeneration,
    )

    cls = {
        "llava": LlavaForConditionalGeneration,
        "llava_next": LlavaNextForConditionalGeneration,
        "llava_onevision": LlavaOnevisionForConditionalGeneration,
    }[family]
    torch.manual_seed(seed)
    model = cls(hf_config(family, text, vision, **kw)).eval()
    return randomize(model, seed)


def ours_from_hf(hf) -> torch.nn.Module:
    from llavakit.checkpoint.keymaps import to_hf_keys
    from llavakit.config import LlavaConfig
    from llavakit.model.llava import LlavaModel

    model = LlavaModel(LlavaConfig.from_hf(hf.config.to_dict())).eval()
    # transformers 5 keeps the vision tower without its `vision_model.` level in memory; files carry it
    model.load_state_dict(to_hf_keys(hf.state_dict(), "hf"), strict=True)
    return model


# the text half of a tiny CLIP checkpoint (original LLaVA keeps its tower in a separate CLIP repository)
TINY_CLIP_TEXT = dict(
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    vocab_size=50,
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=1,
    projection_dim=16,
)


def current(hf) -> dict[str, torch.Tensor]:
    """Current HF layout (``model.vision_tower.vision_model.*``) of a transformers-5 model's state dict."""
    out = {}
    for k, v in hf.state_dict().items():
        if k.startswith("model.vision_tower."):
            k = "model.vision_tower.vision_model." + k.removeprefix("model.vision_tower.")
        out[k] = v
    return out
