"""The benchmark registry: task name -> `Task` (one reader and one scorer per benchmark format)."""

from __future__ import annotations

from . import docs, gqa, mmbench, mme, pope, scienceqa, synth, textvqa, vqa
from .base import Sample, Task

TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        vqa.VQAV2,
        textvqa.TEXTVQA,
        textvqa.TEXTVQA_OCR,
        gqa.TASK,
        vqa.VIZWIZ,
        pope.TASK,
        scienceqa.TASK,
        mmbench.TASK,
        mme.TASK,
        docs.CHARTQA,
        docs.DOCVQA,
        docs.INFOVQA,
        synth.TASK,
    ]
}

__all__ = ["TASKS", "Sample", "Task", "get_task"]


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown eval task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[name]
