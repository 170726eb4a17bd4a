"""Deterministic synthetic scenes in LLaVA format: captions (stage 1), conversations (stage 2), eval sets.

``write_dataset(out, n, seed, kind)`` renders scene ``i`` from ``scene_seed(seed, i)``, a sha256 of both (not
Python's salted ``hash()``), so a dataset is reproducible byte for byte on the same Pillow version, and
datasets with different seeds share no scene. Convention: training sets use seeds below `EVAL_SEED_BASE`
(stage 1 and stage 2 may share a seed: same images, different annotations), held-out evaluation sets use
seeds from `EVAL_SEED_BASE` up. Layout of ``out``::

    images/000000.png ...
    captions.json | instruct.json   LLaVA records {"id", "image", "conversations": [{"from", "value"}, ...]}
    eval.jsonl                      {"id", "image", "question", "answer", "qtype", "font_bucket", ...}
    scenes.jsonl                    ground truth of every image: {"image", "scene": Scene.to_dict()}

Example: ``write_dataset("data/train", 20000, seed=0)`` then ``write_dataset("data/test", 500,
seed=EVAL_SEED_BASE, kind="eval")``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from .synth_questions import (
    GENERATORS,
    LETTER_ANSWER,
    QA,
    QTYPES,
    SHORT_ANSWER,
    caption,
    caption_turns,
    conversation,
    eval_questions,
    eval_record,
    existence_question,
)
from .synth_render import render_scene
from .synth_scene import (
    COLORS,
    FONT_BUCKETS,
    HIGHEST_SIDE,
    KINDS,
    LOWEST_SIDE,
    MAX_SHAPES,
    MAX_SIDE,
    MIN_SIDE,
    WORDS,
    Scene,
    Shape,
    Text,
    check_sides,
    generate_scene,
    scene_seed,
    sub_rng,
)

__all__ = [
    "COLORS", "EVAL_SEED_BASE", "FONT_BUCKETS", "GENERATORS", "KINDS", "LETTER_ANSWER", "QA", "QTYPES",
    "SHORT_ANSWER", "WORDS", "Scene", "Shape", "Text", "caption", "conversation", "eval_questions",
    "existence_question", "generate_scene", "render_scene", "scene_seed", "synth_command", "write_dataset",
]  # fmt: skip

Kind = Literal["caption", "instruct", "eval"]
FILENAMES: dict[str, str] = {"caption": "captions.json", "instruct": "instruct.json", "eval": "eval.jsonl"}
EVAL_SEED_BASE = 1_000_000  # held-out eval sets use seeds >= this, training sets seeds below it


def _records(
    scene: Scene,
    rid: str,
    image: str,
    kind: str,
    max_turns: int,
    qtypes: tuple[str, ...] | None = None,
    repeats: int = 1,
) -> list[dict[str, Any]]:
    rng = sub_rng(scene.seed, kind)
    if kind == "caption":
        return [{"id": rid, "image": image, "conversations": caption_turns(scene)}]
    if kind == "instruct":
        turns = conversation(scene, rng, max_turns, qtypes, repeats)
        # a scene may support none of ``qtypes`` (no colour question when every kind occurs twice): no record
        return [{"id": rid, "image": image, "conversations": turns}] if turns else []
    return [eval_record(scene, qa, f"{rid}_{j}", image) for j, qa in enumerate(eval_questions(scene, rng))]


def write_dataset(
    out_dir: str | Path,
    n: int,
    seed: int,
    kind: Kind = "instruct",
    *,
    min_side: int = MIN_SIDE,
    max_side: int = MAX_SIDE,
    text_prob: float = 0.6,
    max_turns: int = 4,
    max_shapes: int = MAX_SHAPES,
    qtypes: tuple[str, ...] | None = None,
    repeats: int = 1,
) -> Path:
    """Render ``n`` scenes into ``out_dir``/images, write the annotation file for ``kind``, return its path.

    ``min_side``/``max_side`` bound the long side of every image (pixels; aspect ratios span 1:3 to 3:1),
    ``text_prob`` is the share of scenes with a word or number, ``max_turns`` caps the question/answer
    turns of an instruct record, ``max_shapes`` the shapes per scene (a curriculum starts with few),
    ``qtypes`` the question types of instruct records (None: all, with caption requests), ``repeats`` how
    many questions of one type a record may ask (about different objects); a scene that supports none of
    ``qtypes`` gets no instruct record (its image is still written).
    Record ids are ``s{seed}_{index:06d}`` (eval: ``..._{question}``).
    Deterministic in all arguments; the images depend only on (seed, index, min_side, max_side, text_prob,
    max_shapes), so caption, instruct and eval sets with the same seed show the same scenes. Other scenes beside
    another kind's annotation file are refused (``check_same_scenes``)."""
    if kind not in FILENAMES:
        raise ValueError(f"unknown dataset kind {kind!r}; choose one of {', '.join(FILENAMES)}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if max_turns < 1:
        raise ValueError(f"max_turns must be >= 1, got {max_turns}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if isinstance(qtypes, str) or (qtypes is not None and not qtypes):
        raise ValueError(f"qtypes must be a non-empty tuple of question types such as ('color',), got {qtypes!r}")
    if qtypes is not None and (unknown := set(qtypes) - set(QTYPES)):
        raise ValueError(f"unknown question types {sorted(unknown)}; choose from {', '.join(QTYPES)}")
    check_sides(min_side, max_side)  # before anything is written: no empty images/ left behind
    out = Path(out_dir)
    check_same_scenes(
        out,
        n,
        kind,
        lambda i: generate_scene(
            scene_seed(seed, i), text_prob, min_side=min_side, max_side=max_side, max_shapes=max_shapes
        ),
    )
    (out / "images").mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    scene_lines: list[str] = []
    for i in range(n):
        scene = generate_scene(
            scene_seed(seed, i), text_prob, min_side=min_side, max_side=max_side, max_shapes=max_shapes
        )
        image = f"images/{i:06d}.png"
        render_scene(scene).save(out / image, format="PNG")
        records += _records(scene, f"s{seed}_{i:06d}", image, kind, max_turns, qtypes, repeats)
        scene_lines.append(json.dumps({"image": image, "scene": scene.to_dict()}) + "\n")
    path = out / FILENAMES[kind]
    if kind == "eval":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        path.write_text(json.dumps(records, indent=1) + "\n")
    (out / "scenes.jsonl").write_text("".join(scene_lines))
    return path


def check_same_scenes(out: Path, n: int, kind: str, scene: Callable[[int], Scene]) -> None:
    """Refuse to write ``n`` scenes of annotation ``kind`` into ``out`` when another kind's annotation file there
    asks about other scenes: the images are shared by every annotation file of a directory, so new images would
    silently change what the other files ask about. ``scene(i)``: the scene ``i`` to be written; each scene of
    ``out/scenes.jsonl`` must equal it (same seed, sides, text_prob and max_shapes), and there must be no more of them
    than ``n``. Rewriting the only annotation file of a directory is fine. Worked example: a directory holding
    ``captions.json`` over 100 scenes of seed 0 takes an instruct set of seed 0 with 100 or 200 scenes (the same
    images asked another way), and refuses seed 1, other sides, or 50 scenes; holding only ``instruct.json``, it
    takes any of them (that file is replaced)."""
    path = out / "scenes.jsonl"
    others = [name for k, name in FILENAMES.items() if k != kind and (out / name).exists()]
    if not others or not path.is_file():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    fix = f"write to another directory (llava data synth --out), or delete {out} first"
    held = f"{out} holds {', '.join(others)} over {len(lines)} scenes"
    if len(lines) > n:
        raise ValueError(
            f"{held}; writing {n} would drop the ground truth of the rest: pass n >= {len(lines)} with the same seed "
            f"and sides, or {fix}"
        )
    for i, line in enumerate(lines):
        try:
            same = json.loads(line).get("scene") == json.loads(json.dumps(scene(i).to_dict()))  # tuples as lists
        except (json.JSONDecodeError, AttributeError):
            same = False
        if not same:
            raise ValueError(
                f"{held}, and scene {i} differs from the one asked for (another seed, sides, text_prob or max_shapes): "
                f"new images would change what {', '.join(others)} asks about; {fix}"
            )


def read_scenes(data: str | Path) -> dict[str, Scene]:
    """image path -> ``Scene``, in file order, from the ``scenes.jsonl`` that ``write_dataset`` writes in ``data``."""
    path = Path(data) / "scenes.jsonl"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: this needs the scenes of synthetic data (llava data synth and write_dataset write "
            "them beside the images)"
        )
    scenes = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        scenes[rec["image"]] = Scene.from_dict(rec["scene"])
    return scenes


def trained_sides(model_dir: str | Path) -> tuple[int, int] | None:
    """The scene long-side bounds a synthetic-recipe model was trained on (``scene_long_side`` in its
    ``training.json``), or None when the directory does not say."""
    meta = Path(model_dir) / "training.json"
    if not meta.is_file():
        return None
    try:  # a file that cannot say is one clear error naming it (``llava demo``, ``llava eval synth``)
        sides = json.loads(meta.read_text()).get("scene_long_side")
        if not sides:
            return None
        low, high = int(sides[0]), int(sides[1])
        check_sides(low, high)
    except (ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise ValueError(
            f"{meta}: cannot read scene_long_side ({type(e).__name__}: {str(e).split('; pass')[0]}); fix it to "
            f'{{"scene_long_side": [MIN, MAX]}} ({LOWEST_SIDE}-{HIGHEST_SIDE} pixels) or remove the file'
        ) from None
    return low, high


def untold_sides_note(model: str | Path, low: int, high: int) -> str:
    """What ``llava demo`` and ``llava eval synth`` say when ``model`` names no training sizes (``trained_sides``
    None) and they draw scenes of ``low``-``high`` px instead: a model trained on other sizes is asked about scenes
    it never saw."""
    return (
        f"NOTE: {model} does not say which scene sizes it was trained on (no training.json with scene_long_side), so "
        f"the scenes are {low}-{high} px on their long side; pass --sides MIN MAX to match its training (the default "
        "model's recipe: 112 224)"
    )


def synth_command(
    out: str, n: int, seed: int, kind: str = "instruct", sides: tuple[int, int] = (MIN_SIDE, MAX_SIDE)
) -> int:
    """``llava data synth --out DIR --n N --seed S --kind K [--sides MIN MAX]``: write a dataset, print a
    one-line summary."""
    start = time.perf_counter()
    try:
        path = write_dataset(out, n, seed, kind, min_side=sides[0], max_side=sides[1])  # type: ignore[arg-type]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    print(f"wrote {n} {kind} scenes to {out}/images and {path} (seed {seed}) in {seconds:.1f}s")
    return 0
