"""Tiny processors and image files for the training-data tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from llavakit.processing.processor import LlavaProcessor
from llavakit.tiny import char_tokenizer, tiny_config


def tiny_processor(family: str = "llava_next", template: str | None = None) -> LlavaProcessor:
    return LlavaProcessor.from_parts(char_tokenizer(), tiny_config(family), template=template)


def write_image(path: Path, h: int, w: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def conv(*turns: str) -> list[dict[str, str]]:
    """conv("q1", "a1", "q2", "a2") -> LLaVA conversations alternating human / gpt."""
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(turns)]


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path
