"""The optimisation loop shared by the stage-0 trainers (CLIP tower and language model).

Stage 0 trains on in-memory tensors for a fixed number of steps; it needs none of the recipe loop's data
pipeline, checkpointing or distribution, only warmup + cosine, clipping, a log line and a time budget.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn


class StepsConfig(Protocol):
    steps: int
    warmup: int
    lr: float
    max_seconds: float | None


def cosine_lr(step: int, steps: int, warmup: int, lr: float) -> float:
    """Linear warmup to ``lr`` over ``warmup`` steps, then cosine to 0 at ``steps``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def run_steps(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    cfg: StepsConfig,
    step_loss: Callable[[], torch.Tensor],
    name: str,
    log: Callable[[str], None] = print,
) -> list[float]:
    """``cfg.steps`` AdamW steps on ``step_loss()`` (which draws its own batch); returns every step's loss.

    Stops early, with a log line, once ``cfg.max_seconds`` have passed. Leaves the model in eval mode.
    """
    losses: list[float] = []
    start = time.perf_counter()
    model.train()
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, cfg.steps, cfg.warmup, cfg.lr)
        loss = step_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 25 == 0 or step == cfg.steps - 1:
            log(f"{name} step {step}/{cfg.steps} loss {loss.item():.3f} ({time.perf_counter() - start:.0f}s)")
        if cfg.max_seconds is not None and time.perf_counter() - start > cfg.max_seconds:
            log(f"{name}: time budget of {cfg.max_seconds:.0f}s spent after {step + 1} steps")
            break
    model.eval()
    return losses
