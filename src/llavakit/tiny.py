"""Tiny random-weight checkpoints with a character tokenizer: for smoke tests and the placeholder demo.

Ids follow the tiny test models: <pad>=0, <s>=1, </s>=2, printable ASCII and "\\n" from 3, <image>=120,
<video>=121, vocabulary 128. Such a model runs the whole pipeline but its answers are noise.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer as _Tok
from tokenizers import decoders, models, processors

from .config import LlavaConfig, TextConfig, VisionConfig
from .processing.tokenizer import Tokenizer

VOCAB = 128
IMAGE_ID, VIDEO_ID = 120, 121


def char_tokenizer(chat_template: str | None = None) -> Tokenizer:
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    for c in [chr(i) for i in range(32, 127)] + ["\n"]:
        vocab[c] = len(vocab)
    vocab["<unk>"] = len(vocab)
    while len(vocab) < VOCAB:
        n = len(vocab)
        vocab[{IMAGE_ID: "<image>", VIDEO_ID: "<video>"}.get(n, f"<extra_{n}>")] = n
    tok = _Tok(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.add_special_tokens(
        ["<pad>", "<s>", "</s>", "<image>", "<video>"] + [t for t in vocab if t.startswith("<extra_")]
    )
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    cfg = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "image_token": "<image>",
        "video_token": "<video>",
        "padding_side": "left",
    }
    t = Tokenizer(tok, cfg)
    t.chat_template = chat_template
    return t


def tiny_config(family: str = "llava_next") -> LlavaConfig:
    ov = family == "llava_onevision"
    vision = VisionConfig(
        model_type="siglip_vision_model" if ov else "clip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=70 if ov else 56,
        patch_size=14,
        hidden_act="gelu_pytorch_tanh" if ov else "quick_gelu",
        layer_norm_eps=1e-6 if ov else 1e-5,
    )
    text = TextConfig(
        model_type="qwen2" if ov else "llama",
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
    t = vision.image_size
    pins = None if family == "llava" else [[t, 2 * t], [2 * t, t], [2 * t, 2 * t], [3 * t, t], [t, 3 * t]]
    return LlavaConfig(
        model_type=family,
        vision=vision,
        text=text,
        image_token_id=IMAGE_ID,
        video_token_id=VIDEO_ID if ov else None,
        image_grid_pinpoints=pins,
        vision_feature_layer=-1 if ov else -2,
        vision_feature_select_strategy="full" if ov else "default",
    )


def write_tiny_checkpoint(out: str | Path, family: str = "llava_next", seed: int = 0) -> Path:
    """A complete HF-format checkpoint directory (weights, config, processor files) of a random tiny model."""
    from .model.llava import LlavaModel
    from .processing.processor import LlavaProcessor

    torch.manual_seed(seed)
    config = tiny_config(family)
    model = LlavaModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, p.shape[-1] ** -0.5)
    model.save_pretrained(out)
    template = {"llava": "llava_1_5_hf", "llava_next": "vicuna_v1", "llava_onevision": "qwen_1_5"}[family]
    LlavaProcessor.from_parts(char_tokenizer(), config, template=template).save_pretrained(out)
    return Path(out)
