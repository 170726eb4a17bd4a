"""Batching for training: padding collate and a length-grouped, modality-pure, resumable sampler."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ..model.llava import IGNORE_INDEX


def collate(items: Sequence[dict[str, Any]], pad_id: int, family: str | None = None) -> dict[str, torch.Tensor]:
    """Dataset items -> a batch for ``LlavaModel.forward(**batch)``.

    input_ids (B, T) right-padded with ``pad_id``; attention_mask (B, T); labels (B, T) padded with IGNORE_INDEX;
    pixel_values: llava (N, 3, S, S), AnyRes (N, max_views, 3, S, S) zero padded across the batch (N = all
    images of the batch in order); image_sizes (N, 2); foreground (B, T) bool when items carry it (True on
    padding); batch_num_images (B',) = images per sample that has
    images, for AnyRes batches unless ``family`` names a family other than llava_onevision (only OneVision
    reads it); pixel_values_videos (V, F, 3, S, S) when samples carry videos (same frame count required).

    Example: items of lengths 5 and 3, the first with a 3-view image, the second with a 5-view image ->
    input_ids (2, 5) with the second row ending in 2 pads, pixel_values (2, 5, 3, S, S) where the first
    image's views 3 and 4 are zeros.
    """
    if not items:
        raise ValueError("collate needs at least one item")
    t = max(int(it["input_ids"].shape[0]) for it in items)
    b = len(items)
    input_ids = torch.full((b, t), pad_id, dtype=torch.long)  # (B, T)
    labels = torch.full((b, t), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    mask = torch.zeros(b, t, dtype=torch.long)  # (B, T)
    for i, it in enumerate(items):
        n = it["input_ids"].shape[0]
        input_ids[i, :n] = it["input_ids"]
        labels[i, :n] = it["labels"]
        mask[i, :n] = 1
    batch: dict[str, Any] = {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
    if any(it.get("foreground") is not None for it in items):
        fg = torch.ones(b, t, dtype=torch.bool)  # (B, T); padding counts as foreground (it is masked anyway)
        for i, it in enumerate(items):
            if it.get("foreground") is not None:
                fg[i, : it["foreground"].shape[0]] = it["foreground"]
        batch["foreground"] = fg
    pix = [it["pixel_values"] for it in items if it.get("pixel_values") is not None]
    if pix:
        if len({p.dim() for p in pix}) > 1:
            raise ValueError("items mix llava (n, 3, S, S) and AnyRes (n, views, 3, S, S) pixel values")
        if pix[0].dim() == 4:
            batch["pixel_values"] = torch.cat(pix)  # (N, 3, S, S)
        else:
            most = max(p.shape[1] for p in pix)
            batch["pixel_values"] = torch.cat(  # (N, most, 3, S, S)
                [torch.cat([p, p.new_zeros(p.shape[0], most - p.shape[1], *p.shape[2:])], 1) for p in pix]
            )
            if family in (None, "llava_onevision"):
                batch["batch_num_images"] = torch.tensor([p.shape[0] for p in pix], dtype=torch.long)  # (B',)
        sizes = [it["image_sizes"] for it in items if it.get("pixel_values") is not None]
        if all(s is not None for s in sizes):
            batch["image_sizes"] = torch.cat(sizes)  # (N, 2)
    vids = [it["pixel_values_videos"] for it in items if it.get("pixel_values_videos") is not None]
    if vids:
        frames = {v.shape[1] for v in vids}
        if len(frames) > 1:
            raise ValueError(
                f"videos in one batch must have the same frame count, got {sorted(frames)}; "
                "set num_frames so every video folder has at least that many frames, or use batch size 1"
            )
        batch["pixel_values_videos"] = torch.cat(vids)  # (V, F, 3, S, S)
    return batch


class LengthGroupedSampler(torch.utils.data.Sampler[int]):
    """Indices in batches that hold one modality only (all image or all text) and similar lengths.

    Per epoch (order fixed by ``seed`` and the epoch): each modality's indices are shuffled, cut into
    megabatches of ``group`` global batches, sorted by length (longest first) inside each megabatch and cut into
    global batches of ``batch_size * world_size``; the global batches of both modalities are shuffled together;
    the incomplete tails of the modalities go last (at most one full mixed batch, then one shorter batch).
    Rank ``r`` takes slice r of every global batch, so ``DataLoader(ds, batch_size=batch_size, sampler=s)`` on
    each rank sees batches from the same global batch. With ``world_size > 1`` the last global batch is filled
    up with indices from the start so all ranks take the same number of steps.

    ``lengths`` are sizes to group by; text samples may be given as negative lengths (LLaVA's
    ``modality_lengths`` convention) when ``modalities`` is None.

    Resuming: ``state_dict(consumed)`` records the epoch and how many of this rank's indices were used
    (default: how many were yielded; a DataLoader prefetches, so pass the number of samples the loop trained
    on); after ``load_state_dict`` the next iteration of that epoch starts at that position.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        modalities: Sequence[str] | None,
        batch_size: int,
        seed: int = 0,
        *,
        world_size: int = 1,
        rank: int = 0,
        group: int = 50,
    ) -> None:
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad sampler setup: batch_size={batch_size}, world_size={world_size}, rank={rank}")
        if modalities is None:
            modalities = ["image" if n >= 0 else "text" for n in lengths]
            lengths = [abs(n) for n in lengths]
        if len(modalities) != len(lengths):
            raise ValueError(f"{len(lengths)} lengths but {len(modalities)} modalities")
        self.lengths = list(lengths)
        self.modalities = list(modalities)
        self.batch_size = batch_size
        self.seed = seed
        self.world_size = world_size
        self.rank = rank
        self.group = group
        self.epoch = 0
        self.start = 0  # position in this rank's order where the next iteration starts
        self.yielded = 0
        self._cache: tuple[int, list[int]] | None = None

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.start = 0
        self.epoch = epoch

    def global_batches(self) -> list[list[int]]:
        """This epoch's global batches (each of ``batch_size * world_size`` indices, the last may be shorter)."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        size = self.batch_size * self.world_size
        batches: list[list[int]] = []
        tails: list[int] = []
        for kind in sorted(set(self.modalities)):
            idx = [i for i, m in enumerate(self.modalities) if m == kind]
            idx = [idx[k] for k in torch.randperm(len(idx), generator=g).tolist()]
            mega = size * self.group
            rest: list[int] = []  # what the megabatches of this modality leave over: still one modality
            for s in range(0, len(idx), mega):
                chunk = sorted(idx[s : s + mega], key=lambda i: -self.lengths[i])
                full = len(chunk) // size * size
                batches += [chunk[k : k + size] for k in range(0, full, size)]
                rest += chunk[full:]
            rest.sort(key=lambda i: -self.lengths[i])
            full = len(rest) // size * size
            batches += [rest[k : k + size] for k in range(0, full, size)]
            tails += rest[full:]
        order = [batches[k] for k in torch.randperm(len(batches), generator=g).tolist()]
        # the incomplete tails of the modalities go last: at most one full mixed batch and one shorter one
        order += [tails[k : k + size] for k in range(0, len(tails), size)]
        return order

    def order(self) -> list[int]:
        """This rank's indices for the current epoch (cached per epoch)."""
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        batches = self.global_batches()
        if self.world_size > 1 and batches and len(batches[-1]) < self.batch_size * self.world_size:
            flat = [i for b in batches for i in b]
            need = self.batch_size * self.world_size - len(batches[-1])
            batches[-1] = batches[-1] + [flat[k % len(flat)] for k in range(need)]
        out = []
        for b in batches:
            per = math.ceil(len(b) / self.world_size)
            out += b[self.rank * per : (self.rank + 1) * per]
        self._cache = (self.epoch, out)
        return out

    def __iter__(self) -> Iterator[int]:
        order = self.order()
        start, self.start = self.start, 0
        self.yielded = start
        for i in order[start:]:
            self.yielded += 1
            yield i

    def __len__(self) -> int:
        return len(self.order()) - self.start

    def state_dict(self, consumed: int | None = None) -> dict[str, int]:
        """Epoch and position: ``consumed`` = this rank's samples used in this epoch (default: yielded so far)."""
        position = self.yielded if consumed is None else consumed
        return {
            "epoch": self.epoch,
            "position": position,
            "global_position": position * self.world_size,
            "global_batch": self.batch_size * self.world_size,
            "seed": self.seed,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue where ``state`` stopped; another world size works when the global batch is the same."""
        if int(state.get("seed", self.seed)) != self.seed:
            raise ValueError(f"the saved sampler used seed {state['seed']}, this run uses {self.seed}")
        self.epoch = int(state["epoch"])
        if int(state.get("world_size", self.world_size)) == self.world_size:
            self.start = int(state["position"])
            return
        if int(state["global_batch"]) != self.batch_size * self.world_size:
            raise ValueError(
                f"cannot resume: the saved run had a global batch of {state['global_batch']} samples, this one has "
                f"{self.batch_size * self.world_size}; keep batch_size * world_size equal"
            )
        self.start = int(state["global_position"]) // self.world_size
