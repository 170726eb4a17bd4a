"""A tiny `llava train` run on files: a LLaVA data file with images and a recipe YAML for the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

from train_helpers import conv, write_image


def write_data(root: Path, n: int = 12, extra: list[dict] | None = None) -> Path:
    """``n`` one-image records (answers of a few characters) in ``root/d.json``, images under ``root/imgs``."""
    for k in range(3):
        write_image(root / "imgs" / f"{k}.png", 20 + 7 * k, 30, seed=k)
    recs = [
        {"id": f"r{i}", "image": f"{i % 3}.png", "conversations": conv("<image>\nWhat?", f"Shape {i}.")}
        for i in range(n)
    ]
    path = root / "d.json"
    path.write_text(json.dumps(recs + (extra or [])))
    return path


def write_recipe(root: Path, out: Path, *train: str) -> Path:
    """A recipe training tiny:llava on ``write_data(root)`` into ``out`` (batch 4, no checkpoints unless asked);
    ``train`` lines such as "save_every: 1" set keys of its train section."""
    data = write_data(root)
    defaults = [f"output_dir: {out}", "global_batch_size: 4", "micro_batch_size: 2", "max_steps: 3", "save_every: 0"]
    settings = {t.split(":")[0]: t for t in [*defaults, "progress: false", "warmup_ratio: 0.1", *train]}
    lines = [  # ``train`` lines replace the defaults of their key (a key given twice is refused)
        "model:\n  init: tiny:llava",
        f"data:\n  path: {data}\n  image_folder: {root / 'imgs'}\n  max_length: 200",
        "stage:\n  name: stage2\n  lr: 3.0e-3",
        "train:" + "".join(f"\n  {t}" for t in settings.values()),
    ]
    path = root / "r.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path
