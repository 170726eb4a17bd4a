"""Deterministic synthetic scenes in LLaVA format: captions (stage 1), conversations (stage 2), eval questions.

``write_dataset(out, n, seed, kind)`` renders scene ``i`` from ``scene_seed(seed, i)`` (a sha256 of both), so a
dataset is reproducible byte for byte and datasets with different seeds share no scene. Layout of ``out``::

    images/000000.png ...
    captions.json | instruct.json   LLaVA records {"id", "image", "conversations": [{"from", "value"}, ...]}
    eval.jsonl                      {"id", "image", "question", "answer", "qtype", "font_bucket"}
    scenes.jsonl                    the ground truth of every image: {"image", "scene": Scene.to_dict()}
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

from .synth_questions import (
    CAPTION_PROMPT,
    GENERATORS,
    QA,
    QTYPES,
    caption,
    conversation,
    eval_questions,
    eval_record,
    existence_question,
)
from .synth_render import render_scene
from .synth_scene import COLORS, FONT_BUCKETS, KINDS, WORDS, Scene, Shape, Text, generate_scene, scene_seed, sub_rng

__all__ = [
    "COLORS", "FONT_BUCKETS", "KINDS", "QA", "QTYPES", "WORDS", "GENERATORS", "Scene", "Shape", "Text",
    "caption", "conversation", "eval_questions", "existence_question", "generate_scene", "render_scene",
    "scene_seed", "synth_command", "write_dataset",
]  # fmt: skip

Kind = Literal["caption", "instruct", "eval"]
FILENAMES: dict[str, str] = {"caption": "captions.json", "instruct": "instruct.json", "eval": "eval.jsonl"}


def _records(scene: Scene, index: int, image: str, kind: str, max_turns: int) -> list[dict[str, Any]]:
    rng = sub_rng(scene.seed, kind)
    rid = f"{index:06d}"
    if kind == "caption":
        turns = [{"from": "human", "value": f"<image>\n{CAPTION_PROMPT}"}, {"from": "gpt", "value": caption(scene)}]
        return [{"id": rid, "image": image, "conversations": turns}]
    if kind == "instruct":
        return [{"id": rid, "image": image, "conversations": conversation(scene, rng, max_turns)}]
    return [eval_record(scene, qa, f"{rid}_{j}", image) for j, qa in enumerate(eval_questions(scene, rng))]


def write_dataset(
    out_dir: str | Path,
    n: int,
    seed: int,
    kind: Kind = "instruct",
    *,
    text_prob: float = 0.6,
    max_turns: int = 4,
) -> Path:
    """Render ``n`` scenes into ``out_dir`` and write the annotation file for ``kind``; returns its path.

    Deterministic in (n, seed, kind, text_prob, max_turns); the images depend only on (seed, index, text_prob),
    so caption, instruct and eval sets with the same seed show the same scenes."""
    if kind not in FILENAMES:
        raise ValueError(f"unknown dataset kind {kind!r}; choose one of {', '.join(FILENAMES)}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    scene_lines: list[str] = []
    for i in range(n):
        scene = generate_scene(scene_seed(seed, i), text_prob=text_prob)
        image = f"images/{i:06d}.png"
        render_scene(scene).save(out / image, format="PNG")
        records += _records(scene, i, image, kind, max_turns)
        scene_lines.append(json.dumps({"image": image, "scene": scene.to_dict()}))
    path = out / FILENAMES[kind]
    if kind == "eval":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        path.write_text(json.dumps(records, indent=1) + "\n")
    (out / "scenes.jsonl").write_text("".join(line + "\n" for line in scene_lines))
    return path


def synth_command(out: str, n: int, seed: int, kind: str = "instruct") -> int:
    """``llava data synth --out DIR --n N --seed S --kind K``: write a dataset, print a one-line summary."""
    if kind not in FILENAMES:
        print(f"error: unknown --kind {kind!r}; choose one of {', '.join(FILENAMES)}")
        return 2
    start = time.perf_counter()
    path = write_dataset(out, n, seed, kind)  # type: ignore[arg-type]
    print(f"wrote {n} {kind} images and {path} (seed {seed}) in {time.perf_counter() - start:.1f}s")
    return 0
