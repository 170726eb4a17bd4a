"""Token generation on ids and embeddings: prefill once, then one-token decode steps over a preallocated cache.

The engine knows nothing about text or HTTP: it takes ids (with image tokens already expanded) and pixel tensors,
and yields token ids.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch

from .kv_cache import KVCache
from .sampling import SamplingParams, apply_repetition_penalty, is_whole, sample

if TYPE_CHECKING:
    from ..model.llava import LlavaModel


def eos_ids(model: LlavaModel, eos_token_id: int | list[int] | torch.Tensor | None) -> list[int]:
    """The ids generation stops on: ``eos_token_id`` when given, else the checkpoint's (its config's, then those
    ``generation_config.json`` adds, as loaded by ``load_model``), else the config's."""
    if eos_token_id is None:
        eos_token_id = getattr(model, "generation_eos_ids", None) or None
    eos = model.config.text.eos_token_id if eos_token_id is None else eos_token_id
    if eos is None:
        return []
    if isinstance(eos, torch.Tensor):  # transformers takes tensors, 0-d included
        eos = eos.tolist()
    ids = [eos] if isinstance(eos, numbers.Integral) or not isinstance(eos, (list, tuple)) else list(eos)
    for i in ids:  # a string was read character by character ("23" -> [2, 3]), a float raised a TypeError
        if not is_whole(i) or i < 0:
            raise ValueError(f"eos_token_id must be a token id (an int >= 0) or a list of them, got {eos_token_id!r}")
    return [int(i) for i in ids]  # numpy integers too


def check_context(model: LlavaModel, prompt_tokens: int, max_new_tokens: int) -> None:
    """Refuse requests that cannot fit the model's context, naming both numbers."""
    if not is_whole(max_new_tokens):
        raise ValueError(f"max_new_tokens must be a whole number, got {max_new_tokens!r}")
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if prompt_tokens < 1:  # nothing to predict the first token from (a torch reshape error deep in the model)
        raise ValueError("the prompt is empty: generation needs at least one input token")
    limit = model.config.text.context_length
    if prompt_tokens + max_new_tokens > limit:
        raise ValueError(
            f"prompt of {prompt_tokens} tokens + max_new_tokens {max_new_tokens} exceeds the model's context of "
            f"{limit} tokens; shorten the prompt (or use fewer/smaller images) or lower max_new_tokens"
        )


def decode_step(
    model: LlavaModel, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache, mask: torch.Tensor | None
) -> torch.Tensor:
    """One decode step: feed ``tokens`` (B,) at ``positions`` (B, 1) after what ``cache`` holds -> (B, V) logits.

    mask (B, cache.length + 1) marks real slots, or None when no row is padded. Shapes depend only on the batch
    size and the cache length, so ``torch.compile`` takes it whole (see ``engine.compile``).
    """
    embeds = model.model.language_model.embed_tokens(tokens[:, None])  # (B, 1, D)
    return model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, cache=cache).logits[:, -1]


StepFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, KVCache, "torch.Tensor | None"], torch.Tensor]


@torch.no_grad()
def decode(
    model: LlavaModel,
    embeds: torch.Tensor,
    positions: torch.Tensor,
    cache: KVCache,
    *,
    max_new_tokens: int,
    params: SamplingParams,
    eos: list[int],
    slot_mask: torch.Tensor | None = None,
    prompt_ids: torch.Tensor | None = None,
    step: StepFn = decode_step,
) -> Iterator[torch.Tensor]:
    """Prefill ``embeds`` (B, T, D) after what ``cache`` holds, then decode; yield (B,) ids per step.

    positions (B, T) are the RoPE positions of the new slots. slot_mask (B, >= cache.length + T + max_new_tokens)
    marks real slots (left padding = 0) or is None when no row is padded. A row that has finished (EOS) yields -1.
    The token yielded last is never fed back, so afterwards ``cache.length`` == slots fed. ``step`` runs each
    one-token step (``decode_step`` or its compiled form). prompt_ids (B, T) are the ids the repetition penalty
    counts as seen before the first new token; ids outside the vocabulary (negative ones, an image token id
    past it) are left out.
    """
    b, t, _ = embeds.shape
    device = embeds.device
    gen = torch.Generator(device=device).manual_seed(params.seed) if params.seed is not None else None
    eos_t = torch.tensor(eos, device=device, dtype=torch.long)
    start = cache.length
    logits = model(
        inputs_embeds=embeds,
        attention_mask=None if slot_mask is None else slot_mask[:, : start + t],
        position_ids=positions,
        cache=cache,
        logits_to_keep=1,
    ).logits[:, -1]  # (B, V)
    next_pos = positions[:, -1:] + 1  # (B, 1)
    seen = None
    if params.repetition_penalty != 1.0 and prompt_ids is not None:
        v = logits.shape[-1]
        ids = prompt_ids.to(device)
        # ids outside [0, V) (left padding marked -1, an image token past the vocabulary) land in the extra column
        seen = torch.zeros(b, v + 1, dtype=torch.bool, device=device)
        seen.scatter_(1, torch.where((ids >= 0) & (ids < v), ids, v), True)
        seen = seen[:, :v]
    done = torch.zeros(b, dtype=torch.bool, device=device)
    check_finite(logits)  # once, after the prefill (no host sync per token): NaN weights show here
    for i in range(max_new_tokens):
        if seen is not None:
            logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
        tok = sample(logits, params, gen)  # (B,)
        if eos:  # without EOS ids no row ever finishes: no bookkeeping, no host sync per token
            tok = tok.masked_fill(done, -1)
            done |= torch.isin(tok, eos_t)
        yield tok
        if i == max_new_tokens - 1 or (eos and bool(done.all())):
            return
        if eos:
            tok = tok.clamp_min(0)
        if seen is not None:
            seen.scatter_(1, tok[:, None], True)
        logits = step(model, tok, next_pos, cache, None if slot_mask is None else slot_mask[:, : cache.length + 1])
        next_pos = next_pos + 1


@torch.no_grad()
def stream_tokens(
    model: LlavaModel,
    input_ids: torch.Tensor,
    *,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 32,
    params: SamplingParams | None = None,
    eos_token_id: int | list[int] | None = None,
    step: StepFn = decode_step,
    **vision_inputs: torch.Tensor | None,
) -> Iterator[torch.Tensor]:
    """Yield (B,) next-token ids step by step for a (left-padded) batch; finished rows yield -1.

    input_ids (B, T) carry expanded image tokens; left padding is marked by ``attention_mask`` (B, T). Every row
    gets its own positions (padding does not shift them) and stops on its own EOS; its repetition penalty counts
    its real tokens only, as transformers' ``generate`` does (the padding id is often the EOS id).
    ``step``: see ``decode``.
    """
    if input_ids.dim() != 2 or input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        raise ValueError(
            f"input_ids must be integer ids of shape (B, T), got {input_ids.dtype} {tuple(input_ids.shape)}"
        )
    if attention_mask is not None and attention_mask.shape != input_ids.shape:  # a shorter mask was ignored
        raise ValueError(
            f"attention_mask must have input_ids' shape {tuple(input_ids.shape)}, got {tuple(attention_mask.shape)}"
        )
    b, t = input_ids.shape
    check_context(model, t, max_new_tokens)
    device = model.device
    slot_mask = None
    if attention_mask is not None and bool((attention_mask == 0).any()):
        slot_mask = torch.ones(b, t + max_new_tokens, dtype=torch.long, device=device)
        slot_mask[:, :t] = attention_mask
        pos = (slot_mask[:, :t].cumsum(-1) - 1).clamp_min(0)  # (B, T)
    else:
        pos = torch.arange(t, device=device).expand(b, t)
    cache = KVCache(model.config.text, b, t + max_new_tokens, dtype=model.dtype, device=device)
    embeds = model.embed(input_ids.to(device), **vision_inputs)
    seen = input_ids.to(device)
    if slot_mask is not None:
        seen = seen.masked_fill(slot_mask[:, :t] == 0, -1)  # decode leaves negative ids out
    yield from decode(
        model,
        embeds,
        pos,
        cache,
        max_new_tokens=max_new_tokens,
        params=params or SamplingParams(),
        eos=eos_ids(model, eos_token_id),
        slot_mask=slot_mask,
        prompt_ids=seen,
        step=step,
    )


def check_finite(logits: torch.Tensor) -> None:
    """A ValueError when the (B, V) logits hold NaN or inf: the weights hold them, or float16 overflowed. Without
    it greedy decoding picked a NaN's index and printed an empty or garbled answer as if nothing were wrong."""
    bad = ~torch.isfinite(logits).all(-1)  # (B,)
    if bool(bad.any()):
        rows = bad.nonzero().flatten().tolist()
        raise ValueError(
            f"the model's logits hold NaN or inf (row(s) {rows} of the batch): its weights hold NaN/inf, or float16 "
            "overflowed; check the checkpoint, or run it in bfloat16 or float32"
        )


# what the processor returns besides input_ids / attention_mask: LlavaModel.embed's inputs
VISION_INPUTS = frozenset({"pixel_values", "image_sizes", "batch_num_images", "pixel_values_videos", "multi_image"})


def generate(
    model: LlavaModel,
    input_ids: torch.Tensor,
    *,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 50,
    repetition_penalty: float = 1.0,
    seed: int | None = None,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    **vision_inputs: torch.Tensor | None,
) -> torch.Tensor:
    """HF-style ``generate``: (B, T) prompt ids -> (B, T + n) with finished rows padded by ``pad_token_id``.

    Sampling defaults are transformers' ``GenerationConfig`` ones (temperature 1.0, top_p 1.0, top_k 50), so
    ``do_sample=True`` samples as ``transformers``' ``generate`` does; ``top_k=0`` turns the top-k cut off.
    ``vision_inputs`` are the processor's outputs (``VISION_INPUTS``); any other keyword (``max_length``,
    ``num_beams``, ...) is a TypeError naming it.
    """
    unknown = sorted(set(vision_inputs) - VISION_INPUTS)
    if unknown:
        raise TypeError(
            f"generate() got unsupported argument(s) {', '.join(unknown)}; it takes max_new_tokens (for max_length: "
            "max_length minus the prompt's length), do_sample, temperature, top_p, top_k, repetition_penalty, seed, "
            f"eos_token_id, pad_token_id and the processor's outputs ({', '.join(sorted(VISION_INPUTS))}); "
            "beam search is not implemented"
        )
    params = SamplingParams(
        temperature=temperature if do_sample else 0.0,
        top_p=top_p,
        top_k=top_k,
        repetition_penalty=repetition_penalty,
        seed=seed,
    )
    if pad_token_id is not None and not is_whole(pad_token_id):
        raise ValueError(f"pad_token_id must be a token id (an int) or None, got {pad_token_id!r}")
    pad = pad_token_id if pad_token_id is not None else model.config.text.pad_token_id
    eos = eos_ids(model, eos_token_id)
    fill = pad if pad is not None else (eos[0] if eos else 0)
    steps = list(
        stream_tokens(
            model,
            input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            params=params,
            eos_token_id=eos_token_id,
            **vision_inputs,
        )
    )
    new = torch.stack(steps, dim=1)
    return torch.cat([input_ids.to(new.device), new.masked_fill(new < 0, fill)], dim=1)
