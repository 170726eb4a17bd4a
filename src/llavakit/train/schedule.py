"""The learning-rate schedule of a training run and the rates each step logs."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def lr_lambda(total: int, warmup_ratio: float, schedule: str) -> Callable[[int], float]:
    """Linear warmup over ceil(ratio * total) steps, then cosine to 0 (HF's get_cosine_schedule_with_warmup).

    total=100, ratio=0.03: warmup 3 steps -> factors 0, 1/3, 2/3, then 1.0 at step 3 falling to ~0 at 100.
    """
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"train.schedule must be cosine or constant, got {schedule!r}")
    warmup = math.ceil(warmup_ratio * total)

    def f(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    return f


def logged_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """The learning rates a step logs: ``lr``, the main part's (decoder or LoRA; stage 1: the projector), and
    when the parts' rates differ, each as ``lr_<part>`` (``lr_projector``, ``lr_decoder``, ``lr_vision``...)."""
    parts: dict[str, float] = {}
    base: dict[str, float] = {}  # the configured rates (the scheduler's initial_lr): every row has the same keys,
    for i, g in enumerate(optimizer.param_groups):  # warm-up's all-zero first step included
        name = str(g.get("name", i)).removesuffix("_no_decay")
        parts.setdefault(name, g["lr"])
        base.setdefault(name, g.get("initial_lr", g["lr"]))
    main = next((parts[p] for p in ("decoder", "lora") if p in parts), next(iter(parts.values())))
    if len(set(base.values())) == 1:
        return {"lr": main}
    return {"lr": main, **{f"lr_{p}": lr for p, lr in parts.items()}}
