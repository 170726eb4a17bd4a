"""The benchmark registry: task name -> `Task` (one reader and one scorer per benchmark format)."""

from __future__ import annotations

from .base import Sample, Task
from .synth import TASK as SYNTH

TASKS: dict[str, Task] = {t.name: t for t in [SYNTH]}

__all__ = ["TASKS", "Sample", "Task", "get_task"]


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown eval task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[name]
