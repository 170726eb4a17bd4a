"""How a run's samples become optimizer steps, counted as transformers' Trainer counts them.

An epoch is every sample once, in global batches of ``global_batch_size`` samples; its last step takes what is
left (fewer samples, fewer micro-batches). The step counts are Trainer's (``set_initial_training_values``):

    steps_per_epoch = ceil(samples / global_batch)    Trainer: ceil(ceil(samples / (micro * processes)) / accum),
                                                      the same number (nested ceilings of divisions compose)
    total           = ceil(epochs * steps_per_epoch)  Trainer's max_steps when train.max_steps is not given

Worked example: 10 samples, global batch 4 (micro 2 x accumulation 2) -> steps of 4, 4 and 2 samples, 3 steps per
epoch; ``epochs: 1.5`` -> ceil(4.5) = 5 steps. One deviation: the product is rounded to 6 decimals before the
ceiling, so 1.1 epochs of 50 steps is 55 steps (Trainer: ceil(55.00000000000001) = 56).

Runs started before this counting kept only full global batches (the leftovers waited for the next epoch's
shuffle, ``samples // global_batch`` steps per epoch, ``int(epochs * steps_per_epoch)`` steps): their checkpoints
say so (no ``full_batches_only`` key) and they resume with that arithmetic, ending on the step they would have.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def steps_per_epoch(samples: int, global_batch: int, full_batches_only: bool = False) -> int:
    """Optimizer steps per epoch: ``ceil(samples / global_batch)`` (``floor`` for a run of full batches only).

    >>> steps_per_epoch(10, 4), steps_per_epoch(10, 4, full_batches_only=True)
    (3, 2)
    """
    if full_batches_only:
        return samples // global_batch
    return -(-samples // global_batch)


def total_steps(epochs: float, per_epoch: int, max_steps: int | None, full_batches_only: bool = False) -> int:
    """The run's steps: ``max_steps`` when given, else ``ceil(epochs * per_epoch)`` (at least 1).

    >>> total_steps(1.5, 3, None), total_steps(1.1, 50, None), total_steps(1.5, 2, None, full_batches_only=True)
    (5, 55, 3)
    """
    if max_steps is not None:
        return max_steps
    if full_batches_only:
        return max(1, int(epochs * per_epoch))
    return max(1, math.ceil(round(epochs * per_epoch, 6)))  # 1.1 * 50 = 55.00000000000001 is 55 steps


def epoch_batches(
    dataset: Any, epoch: int, seed: int, group: bool, size: int, full_batches_only: bool = False
) -> list[list[int]]:
    """The epoch's global batches of ``size`` indices, the last one shorter when ``size`` does not divide the
    dataset (``full_batches_only``: left out, its samples wait for the next epoch's shuffle): length-grouped, one
    modality per full batch (the data helper's sampler), or a seeded shuffle."""
    if group and hasattr(dataset, "lengths") and hasattr(dataset, "modalities"):
        from .collate import LengthGroupedSampler

        sampler = LengthGroupedSampler(dataset.lengths, dataset.modalities, size, seed)
        sampler.set_epoch(epoch)
        return [b for b in sampler.global_batches() if len(b) == size or not full_batches_only]
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(dataset), generator=g).tolist()
    end = len(order) - size + 1 if full_batches_only else len(order)
    return [order[k : k + size] for k in range(0, end, size)]


def process_micro_batches(chunk: list[int], micro: int, world: int, rank: int) -> list[list[int]]:
    """This process's micro-batches of the global batch ``chunk``: round ``m`` of ``micro * world`` samples gives
    process ``rank`` its ``micro`` of them. Every process gets the same number of rounds (DDP and FSDP need the same
    forward passes everywhere); in the short last step of an epoch a process may get a short or an empty one (empty:
    the loop runs a sample whose labels are all ignored, which adds nothing to the loss or the gradients).

    chunk of 4, micro 1, 2 processes -> rank 0: [[c0], [c2]], rank 1: [[c1], [c3]];
    chunk of 3 -> rank 0: [[c0], [c2]], rank 1: [[c1], []].
    """
    span = micro * world
    rounds = -(-len(chunk) // span)
    return [chunk[m * span + rank * micro :][:micro] for m in range(rounds)]
