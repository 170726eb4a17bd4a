"""GQA testdev-balanced: exact match after LLaVA's post-processing (``scripts/convert_gqa_for_eval.py``).

``--data``: a directory with ``testdev_balanced_questions.json`` (``{qid: {"imageId", "question", "answer"}}``)
and ``images/``, plus optionally LLaVA's ``llava_gqa_testdev_balanced.jsonl`` (its prompts are used then);
or the lmms-lab parquet release (instruction rows ``id, imageId, question, answer`` and image rows
``id, image``, joined on the image id); of a full lmms-lab/GQA download only the ``testdev_balanced_instructions``
and ``testdev_balanced_images`` folders are read (:func:`balanced_folders`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..metrics import gqa_normalize
from .base import SHORT_ANSWER, Sample, Task, answered, resolve_image, suffixed
from .io import find, parquet_image, question_jsonl, read_json, read_jsonl, read_parquet, require

# the question files of GQA's questions1.2 download: any but testdev_balanced_questions.json is another split
OTHER_SPLIT = r"(train|val|testdev|test|challenge|submission)_(all|balanced)_questions\.json"


def balanced_folders(root: Path) -> list[Path]:
    """The folders of an lmms-lab/GQA download to read: ``testdev_balanced_instructions`` and
    ``testdev_balanced_images``. A full download also holds ``testdev_all_*`` (the unbalanced testdev, ~14x the
    questions, its shards also named ``testdev-*``), ``train_*``, ``val_*``...: mixed in they would change the score.
    A root without such config folders (its own ``instructions/`` + ``images/``, or one folder) is read whole."""
    if root.is_file():
        return [root]
    configs = sorted({f.relative_to(root).parts[0] for f in root.glob("*/**/*.parquet")})
    lmms = [c for c in configs if c.lower().endswith(("_instructions", "_images"))]
    if not lmms:
        if root.name.lower().startswith("testdev_") and not root.name.lower().startswith("testdev_balanced"):
            raise ValueError(f"{root} is GQA's {root.name}, not testdev_balanced; point --data at the download root")
        return [root]
    balanced = [root / c for c in lmms if c.lower().startswith("testdev_balanced_")]
    if not balanced:
        raise ValueError(
            f"{root} holds GQA configs {', '.join(lmms)} but no testdev_balanced_instructions; GQA is scored on "
            "testdev-balanced: download lmms-lab/GQA's testdev_balanced_instructions and testdev_balanced_images"
        )
    return balanced


def _read_parquet(path: Path) -> list[Sample]:
    rows = [r for folder in balanced_folders(path) for r in read_parquet(folder, "testdev")]
    images = {str(r["id"]): r["image"] for r in rows if "image" in r and "question" not in r}
    samples = []
    for r in rows:
        if "question" not in r:
            continue
        require(r, ("id", "imageId", "answer"), path)
        image = images.get(str(r["imageId"]))
        # no image row: a path that does not exist, so the question is counted as missing its image, not asked blind
        absent = str(path / f"no image row for imageId {r['imageId']}")
        data = parquet_image(image, f"{path}:{r['__line__']}") if image is not None else absent
        samples.append(Sample(str(r["id"]), suffixed(r["question"], SHORT_ANSWER), data, {"answer": r["answer"]}))
    return samples


def read(root: Path) -> list[Sample]:
    if (pq := find(root, ["*.parquet", "**/*.parquet"])) is not None and pq.suffix == ".parquet":
        return _read_parquet(root)
    ann_path = find(root, ["testdev_balanced_questions.json", "*questions*.json"])
    if ann_path is None:
        raise ValueError(f"{root}: no GQA question file (testdev_balanced_questions.json)")
    if (
        root.is_dir()
        and ann_path.name != "testdev_balanced_questions.json"
        and re.fullmatch(OTHER_SPLIT, ann_path.name)
    ):
        # another split of GQA's questions1.2 download (testdev_all_questions.json...): not the one scored
        raise ValueError(
            f"{root}: no testdev_balanced_questions.json (only GQA's {ann_path.name}); GQA is scored on "
            "testdev-balanced: add that file from GQA's questions1.2 download, or pass it as --data"
        )
    ann = read_json(ann_path)
    if not isinstance(ann, dict):
        raise ValueError(f"{ann_path}: a GQA question file maps question ids to {{imageId, question, answer}}")
    for qid, q in ann.items():
        if not isinstance(q, dict) or not {"imageId", "question", "answer"} <= set(q):
            raise ValueError(f"{ann_path}: question {qid!r} lacks 'imageId', 'question' or 'answer'")
    base = root if root.is_dir() else root.parent  # --data may name the question file itself
    dirs = [base / "images", base]
    samples = []
    if (qfile := question_jsonl(base, "llava_gqa*.jsonl")) is not None:
        for r in read_jsonl(qfile):
            require(r, ("question_id", "image", "text"), qfile)
            qid = str(r["question_id"])
            if qid not in ann:
                raise ValueError(f"{qfile}:{r['__line__']}: question {qid} is not in {ann_path}")
            samples.append(Sample(qid, r["text"], resolve_image(r["image"], dirs), {"answer": ann[qid]["answer"]}))
        return samples
    for qid, q in ann.items():
        image = resolve_image(f"{q['imageId']}.jpg", dirs)
        samples.append(Sample(str(qid), suffixed(q["question"], SHORT_ANSWER), image, {"answer": q["answer"]}))
    return samples


def score(samples: list[Sample], predictions: dict[str, str]) -> dict[str, Any]:
    """Accuracy: ``prediction.rstrip('.').lower() == answer`` (see :func:`llavakit.eval.metrics.gqa_normalize`)."""
    pairs = answered(samples, predictions)
    if not pairs:
        raise ValueError("GQA: no predictions to score")
    right = sum(gqa_normalize(p) == gqa_normalize(str(s.ref["answer"])) for s, p in pairs)
    return {"scores": {"accuracy": right / len(pairs)}, "counts": {"questions": len(pairs)}}


TASK = Task(
    "gqa",
    read,
    score,
    "GQA testdev-balanced: exact-match accuracy",
    "a directory with testdev_balanced_questions.json (+ llava_gqa_testdev_balanced.jsonl) and images/; or parquet",
)
