"""Token generation on ids and embeddings: prefill once, then one-token decode steps over a preallocated cache.

The engine knows nothing about text or HTTP: it takes ids (with image tokens already expanded) and pixel tensors,
and yields token ids.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from .kv_cache import KVCache
from .sampling import SamplingParams, apply_repetition_penalty, sample

if TYPE_CHECKING:
    from ..model.llava import LlavaModel


def _eos_set(model: LlavaModel, eos_token_id: int | list[int] | None) -> list[int]:
    eos = model.config.text.eos_token_id if eos_token_id is None else eos_token_id
    if eos is None:
        return []
    return [eos] if isinstance(eos, int) else list(eos)


@torch.no_grad()
def stream_tokens(
    model: LlavaModel,
    input_ids: torch.Tensor,
    *,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 32,
    params: SamplingParams | None = None,
    eos_token_id: int | list[int] | None = None,
    **vision_inputs: torch.Tensor | None,
) -> Iterator[torch.Tensor]:
    """Yield (B,) next-token ids step by step; a row that has finished (EOS) keeps yielding -1.

    input_ids (B, T) carry expanded image tokens; left padding is marked by ``attention_mask`` (B, T).
    """
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    params = params or SamplingParams()
    b, t = input_ids.shape
    limit = model.config.text.max_position_embeddings
    if t + max_new_tokens > limit and model.config.text.rope_scaling is None:
        raise ValueError(
            f"prompt of {t} tokens + max_new_tokens {max_new_tokens} exceeds the model's context of {limit} "
            "tokens; shorten the prompt (or use fewer/smaller images) or lower max_new_tokens"
        )
    device = model.device
    gen = torch.Generator(device=device).manual_seed(params.seed) if params.seed is not None else None
    eos = torch.tensor(_eos_set(model, eos_token_id), device=device, dtype=torch.long)

    mask = torch.ones(b, t + max_new_tokens, dtype=torch.long, device=device)
    if attention_mask is not None:
        mask[:, :t] = attention_mask
    padded = attention_mask is not None and bool((attention_mask == 0).any())
    pos = (mask[:, :t].cumsum(-1) - 1).clamp_min(0)  # (B, T)
    cache = KVCache(model.config.text, b, t + max_new_tokens, dtype=model.dtype, device=device)

    embeds = model.embed(input_ids.to(device), **vision_inputs)
    logits = model(
        inputs_embeds=embeds,
        attention_mask=mask[:, :t] if padded else None,
        position_ids=pos,
        cache=cache,
        logits_to_keep=1,
    ).logits[:, -1]  # (B, V)
    next_pos = pos[:, -1:] + 1  # (B, 1)
    seen = None
    if params.repetition_penalty != 1.0:
        seen = torch.zeros(b, logits.shape[-1], dtype=torch.bool, device=device)
        seen.scatter_(1, input_ids.to(device).clamp(0, logits.shape[-1] - 1), True)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    embed_tokens = model.model.language_model.embed_tokens
    for step in range(max_new_tokens):
        if seen is not None:
            logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
        tok = sample(logits, params, gen)  # (B,)
        tok = tok.masked_fill(done, -1)
        yield tok
        done |= torch.isin(tok, eos) if eos.numel() else torch.zeros_like(done)
        if bool(done.all()) or step == max_new_tokens - 1:
            return
        if seen is not None:
            seen.scatter_(1, tok.clamp_min(0)[:, None], True)
        s = t + step + 1
        logits = model(
            inputs_embeds=embed_tokens(tok.clamp_min(0)[:, None]),
            attention_mask=mask[:, :s] if padded else None,
            position_ids=next_pos,
            cache=cache,
        ).logits[:, -1]
        next_pos = next_pos + 1


def generate(
    model: LlavaModel,
    input_ids: torch.Tensor,
    *,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    repetition_penalty: float = 1.0,
    seed: int | None = None,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    **vision_inputs: torch.Tensor | None,
) -> torch.Tensor:
    """HF-style ``generate``: (B, T) prompt ids -> (B, T + n) with finished rows padded by ``pad_token_id``."""
    params = SamplingParams(
        temperature=temperature if do_sample else 0.0,
        top_p=top_p,
        top_k=top_k,
        repetition_penalty=repetition_penalty,
        seed=seed,
    )
    pad = pad_token_id if pad_token_id is not None else model.config.text.pad_token_id
    eos = _eos_set(model, eos_token_id)
    fill = pad if pad is not None else (eos[0] if eos else 0)
    steps = [
        tok
        for tok in stream_tokens(
            model,
            input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            params=params,
            eos_token_id=eos_token_id,
            **vision_inputs,
        )
    ]
    new = torch.stack(steps, dim=1).masked_fill(torch.stack(steps, dim=1) < 0, fill)
    return torch.cat([input_ids.to(new.device), new], dim=1)
