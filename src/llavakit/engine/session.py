"""Multi-turn generation that keeps the KV cache between turns.

Each turn passes the ids of the WHOLE conversation (rendered again by the caller) with the pixels of all its
images. The session keeps what its cache already holds, finds the longest shared prefix (whole images only, and
only when those images are the same pixels), and prefills just the rest: a follow-up question about the same
image neither re-encodes the image nor re-runs the prefill of earlier turns.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from .generate import StepFn, check_context, decode, decode_step, eos_ids
from .kv_cache import KVCache
from .sampling import SamplingParams

if TYPE_CHECKING:
    from ..model.llava import LlavaModel


def fingerprint(t: torch.Tensor) -> str:
    return hashlib.sha1(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def image_fingerprint(views: torch.Tensor, size: torch.Tensor | None) -> str:
    """One image's identity: its views without the all-zero padding views a batch adds for images with more tiles
    (a later, larger image must not make an earlier one look new), and its size. (A real normalised view is never
    all zeros: that needs every pixel at the normalisation mean, which is not a whole 8-bit value.)"""
    n = views.shape[0] if views.dim() == 4 else 1
    while n > 1 and not bool(views[n - 1].any()):
        n -= 1
    sizes = "" if size is None else ",".join(str(int(x)) for x in size)
    return fingerprint(views[:n] if views.dim() == 4 else views) + sizes


def image_runs(ids: list[int], token: int) -> list[tuple[int, int]]:
    """[start, end) of each run of image tokens. Adjacent images are told apart by their token counts later."""
    runs, start = [], None
    for i, x in enumerate(ids + [None]):
        if x == token and start is None:
            start = i
        elif x != token and start is not None:
            runs.append((start, i))
            start = None
    return runs


class ChatSession:
    """One conversation (batch size 1) on a model; ``stats`` tells what the last turn reused."""

    def __init__(self, model: LlavaModel, *, reserve: int = 256, step: StepFn = decode_step) -> None:
        self.model = model
        self.reserve = reserve
        self.step = step  # the one-token decode step (engine.generate.decode_step or its compiled form)
        self.cache: KVCache | None = None
        self.ids: list[int] = []  # tokens whose keys/values the cache holds, slot by slot
        self.images: list[tuple[str, int]] = []  # (fingerprint, token count) of the images inside self.ids
        self.stats = {"reused_tokens": 0, "prefilled_tokens": 0, "encoded_images": 0}
        self.busy = False  # an answer is being generated: its cache must not be touched by another turn

    def reset(self) -> None:
        self.ids, self.images = [], []
        if self.cache is not None:
            self.cache.reset()

    def _reusable(self, ids: list[int], images: list[tuple[str, int]]) -> tuple[int, int]:
        """(tokens, images) of the new conversation already in the cache."""
        keep = 0
        for a, b in zip(ids, self.ids):
            if a != b:
                break
            keep += 1
        keep = min(keep, len(ids) - 1)  # feed at least one token to get the next-token logits
        video = self.model.config.video_token_id
        if video is not None and video in ids:  # video frames are not fingerprinted: re-encode from the first video
            keep = min(keep, ids.index(video))
        runs = image_runs(ids, self.model.config.image_token_id)
        spans = _split_runs(runs, [n for _, n in images])
        kept_images = 0
        for (s, e), now, before in zip(spans, images, self.images + [None] * len(images)):
            if e <= keep and now == before:
                kept_images += 1
                continue
            keep = min(keep, s)
            break
        return keep, kept_images

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        *,
        max_new_tokens: int = 256,
        params: SamplingParams | None = None,
        eos_token_id: int | list[int] | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
    ) -> Iterator[int]:
        """Yield the answer's token ids for the whole-conversation ``input_ids`` (1, T) (OneVision videos:
        ``pixel_values_videos`` (V, F, 3, S, S); the cache is reused up to the first video only).

        One answer at a time: a turn started while another one's generator is still open is refused (they share
        the cache); finish or close the earlier generator first.
        """
        if self.busy:
            raise RuntimeError(
                "this conversation is still generating an earlier answer (an unfinished stream): read it to the "
                "end or close() it before asking again, or use another pipeline for concurrent answers"
            )
        model, cfg = self.model, self.model.config
        if input_ids.dim() != 2 or input_ids.shape[0] != 1:
            raise ValueError(f"a chat session takes input_ids of shape (1, T), got {tuple(input_ids.shape)}")
        ids = input_ids[0].tolist()
        check_context(model, len(ids), max_new_tokens)
        n_img = 0 if pixel_values is None else pixel_values.shape[0]
        multi = [cfg.model_type == "llava_onevision" and n_img > 1] * n_img
        counts = _image_token_counts(model, pixel_values, image_sizes, multi)
        sizes = [None if image_sizes is None else image_sizes[i] for i in range(n_img)]
        images = [(image_fingerprint(pixel_values[i], sizes[i]), counts[i]) for i in range(n_img)]
        keep, kept_images = self._reusable(ids, images) if self.ids else (0, 0)
        need = len(ids) + max_new_tokens
        if self.cache is None or self.cache.max_len < need:
            self.cache = _grown(self.cache, model, need + self.reserve, keep)
        self.cache.truncate(keep)
        # the cache now holds only the shared prefix: say so before anything below can fail (Ctrl-C while the
        # images are encoded), or the next turn would trust slots that are gone
        self.ids, self.images = ids[:keep], images[:kept_images]
        suffix = input_ids[:, keep:].to(model.device)
        vision = {}
        if n_img > kept_images:
            vision = {"pixel_values": pixel_values[kept_images:], "multi_image": multi[kept_images:]}
            if image_sizes is not None:
                vision["image_sizes"] = image_sizes[kept_images:]
        if pixel_values_videos is not None:  # every video is in the suffix (reuse stops before the first one)
            vision["pixel_values_videos"] = pixel_values_videos
        embeds = model.embed(suffix, **vision)
        self.stats = {"reused_tokens": keep, "prefilled_tokens": len(ids) - keep, "encoded_images": n_img - kept_images}
        positions = torch.arange(keep, len(ids), device=model.device)[None]
        fed: list[int] = []
        self.busy = True
        try:
            for tok in decode(
                model,
                embeds,
                positions,
                self.cache,
                max_new_tokens=max_new_tokens,
                params=params or SamplingParams(),
                eos=eos_ids(model, eos_token_id),
                prompt_ids=input_ids,
                step=self.step,
            ):
                fed.append(int(tok[0]))
                yield fed[-1]
        finally:  # whatever happened, remember exactly what the cache holds
            self.busy = False
            self.ids = (ids + fed[:-1])[: self.cache.length]
            self.images = images if len(self.ids) >= len(ids) else images[:kept_images]


def _image_token_counts(model, pixel_values, image_sizes, multi) -> list[int]:  # noqa: ANN001
    from ..processing.anyres import num_image_tokens

    if pixel_values is None:
        return []
    if image_sizes is None:
        return [model.geometry.tokens_per_tile] * pixel_values.shape[0]
    return [num_image_tokens(int(h), int(w), model.geometry, multi_image=m) for (h, w), m in zip(image_sizes, multi)]


def _split_runs(runs: list[tuple[int, int]], counts: list[int]) -> list[tuple[int, int]]:
    """Cut runs of image tokens into one span per image using each image's token count."""
    spans, i = [], 0
    for s, e in runs:
        while s < e and i < len(counts):
            spans.append((s, min(e, s + counts[i])))
            s += counts[i]
            i += 1
    return spans


def _grown(old: KVCache | None, model: LlavaModel, max_len: int, keep: int) -> KVCache:
    new = KVCache(model.config.text, 1, max_len, dtype=model.dtype, device=model.device)
    if old is not None and keep:
        for layer in range(len(new.k)):
            new.k[layer][:, :, :keep] = old.k[layer][:, :, :keep]
            new.v[layer][:, :, :keep] = old.v[layer][:, :, :keep]
        new.length = keep
    return new
