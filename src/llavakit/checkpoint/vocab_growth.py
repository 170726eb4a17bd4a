"""Growing a converted checkpoint's vocabulary: the rows ``<image>`` (and ``<video>``) get when an original LLaVA
checkpoint, which splices image features in at id -200, becomes an HF one with a real image token id."""

from __future__ import annotations

import math

import torch

from ..config import LlavaConfig
from .keymaps import LM_HEAD, TEXT


def converted_vocab_size(vocab: int, token_ids: list[int], extra: int = 2, multiple: int = 64) -> int:
    """Rows of the converted embedding matrices: ``vocab + extra`` (and every token id) rounded up to 64.

    The llava-hf conversion scripts grow the vocab by 2 (``<image>`` + ``<pad>`` for Llama/Mistral,
    ``<image>`` + ``<video>`` for Qwen), padded to a multiple of 64. Vicuna 32000 -> 32002 -> 32064;
    Yi 64000 -> 64064; Qwen2-0.5B 151936 -> 151938 -> 152000 (ids 151646/151647 fit already);
    Qwen2-7B 152064 -> 152128.
    """
    return math.ceil(max(vocab + extra, max(token_ids) + 1) / multiple) * multiple


def add_image_tokens(state_dict: dict[str, torch.Tensor], config: LlavaConfig) -> dict[str, torch.Tensor]:
    """Grow ``embed_tokens`` / ``lm_head`` (current-layout keys) to ``config.text.vocab_size`` rows.

    ``config`` is the converted config (``config_from_original(...).config``). New rows are the mean of the
    existing rows of each matrix. The llava-hf scripts draw them from N(mean, 1e-5 * covariance), i.e. the
    mean up to noise; we keep it deterministic. Image positions never look their row up (features replace
    them), so the values only set the logits of tokens the model never emits. Returns a new dict sharing the
    untouched tensors; matrices that already have the right size are left alone.
    """
    out = dict(state_dict)
    for key in (TEXT + "embed_tokens.weight", LM_HEAD + "weight"):
        if key in out:
            out[key] = grow_rows(out[key], config.text.vocab_size, key)
    return out


def grow_rows(w: torch.Tensor, rows: int, name: str = "embedding") -> torch.Tensor:
    """``w`` (V, D) with ``rows - V`` mean rows appended; (rows, D)."""
    if w.shape[0] > rows:
        raise ValueError(f"{name} has {w.shape[0]} rows, more than the config's vocab_size {rows}")
    if w.shape[0] == rows:
        return w
    mean = w.float().mean(dim=0).to(w.dtype)  # (D,)
    return torch.cat([w, mean.expand(rows - w.shape[0], -1)], dim=0)
