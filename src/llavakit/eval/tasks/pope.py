"""POPE (COCO val2014 images): yes/no object-existence questions in three splits, LLaVA's ``eval_pope.py``.

``--data``: a directory with the label files ``coco_pope_{adversarial,popular,random}.json`` (JSONL lines
``{"question_id", "image", "text", "label"}``, in ``coco/`` or at the top) and the images (``val2014/``);
if LLaVA's ``llava_pope_test.jsonl`` is there too, its prompts and question ids are used, and its questions
of each split are paired with that split's labels in file order, exactly as ``eval_pope.py`` pairs them.
Or the lmms-lab parquet release (``question_id, question, answer, image, category``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..mme_pope import pope_scores
from .base import SHORT_ANSWER, Sample, Task, answered, resolve_image, suffixed
from .io import find, parquet_image, read_jsonl, read_parquet, require

SPLITS = ("adversarial", "popular", "random")


def read(root: Path) -> list[Sample]:
    if (pq := find(root, ["*.parquet", "data/*.parquet"])) is not None and pq.suffix == ".parquet":
        samples = []
        for r in read_parquet(root, "test"):
            require(r, ("question_id", "question", "answer", "image", "category"), root)
            image = parquet_image(r["image"], f"{root}:{r['__line__']}")
            ref = {"label": r["answer"], "category": r["category"]}
            samples.append(Sample(str(r["question_id"]), suffixed(r["question"], SHORT_ANSWER), image, ref))
        return samples
    base = root if root.is_dir() else root.parent
    label_files = sorted(base.glob("coco_pope_*.json")) or sorted(base.glob("coco/coco_pope_*.json"))
    if not label_files:
        raise ValueError(f"{root}: no POPE label files (coco_pope_<split>.json)")
    labels = {f.stem[len("coco_pope_") :]: read_jsonl(f) for f in label_files}
    for f in label_files:
        for r in labels[f.stem[len("coco_pope_") :]]:
            require(r, ("question_id", "image", "text", "label"), f)
    dirs = [base / d for d in ("val2014", "images")] + [base]
    samples = []
    if (qfile := find(base, ["llava_pope*.jsonl"])) is not None:
        by_split: dict[str, list[dict[str, Any]]] = {}
        for r in read_jsonl(qfile):
            require(r, ("question_id", "image", "text", "category"), qfile)
            by_split.setdefault(str(r["category"]), []).append(r)
        for split, questions in by_split.items():
            if split not in labels:
                raise ValueError(f"{qfile}: category {split!r} has no label file coco_pope_{split}.json")
            if len(questions) != len(labels[split]):
                raise ValueError(
                    f"{qfile}: {len(questions)} {split} questions but coco_pope_{split}.json has "
                    f"{len(labels[split])} labels; they are paired in order and must match"
                )
            for q, lab in zip(questions, labels[split]):
                ref = {"label": lab["label"], "category": split}
                samples.append(Sample(str(q["question_id"]), q["text"], resolve_image(q["image"], dirs), ref))
        return samples
    for split, records in labels.items():
        for r in records:
            ref = {"label": r["label"], "category": split}
            prompt = suffixed(r["text"], SHORT_ANSWER)
            samples.append(Sample(f"{split}/{r['question_id']}", prompt, resolve_image(r["image"], dirs), ref))
    return samples


def score(samples: list[Sample], predictions: dict[str, str]) -> dict[str, Any]:
    """Per split: accuracy, precision, recall, F1, yes-ratio (``<split>_<metric>``); ``accuracy`` and ``f1``
    are the means over the splits present (how LLaVA papers report POPE), ``overall_*`` pools all answers."""
    pairs = answered(samples, predictions)
    if not pairs:
        raise ValueError("POPE: no predictions to score")
    records = [{"prediction": p, "label": s.ref["label"], "category": s.ref["category"]} for s, p in pairs]
    result = pope_scores(records)
    scores: dict[str, float] = {}
    splits = [k for k in result if k != "overall"]
    for key in ("accuracy", "f1"):
        scores[key] = sum(result[k][key] for k in splits) / len(splits)
    counts: dict[str, int] = {"questions": len(pairs)}
    for split in [*splits, "overall"]:
        m = result[split]
        for key in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
            scores[f"{split}_{key}"] = m[key]
        if split != "overall":
            counts[split] = m["tp"] + m["fp"] + m["tn"] + m["fn"]
    return {"scores": scores, "counts": counts}


TASK = Task(
    "pope",
    read,
    score,
    "POPE: yes/no hallucination probe, accuracy / precision / recall / F1 / yes-ratio per split",
    "a directory with coco_pope_<split>.json label files (+ llava_pope_test.jsonl) and val2014/ images; or parquet",
)
