"""GQA testdev-balanced: exact match after LLaVA's post-processing (``scripts/convert_gqa_for_eval.py``).

``--data``: a directory with ``testdev_balanced_questions.json`` (``{qid: {"imageId", "question", "answer"}}``)
and ``images/``, plus optionally LLaVA's ``llava_gqa_testdev_balanced.jsonl`` (its prompts are used then);
or the lmms-lab parquet release (instruction rows ``id, imageId, question, answer`` and image rows
``id, image``, joined on the image id).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..metrics import gqa_normalize
from .base import SHORT_ANSWER, Sample, Task, answered, resolve_image, suffixed
from .io import find, parquet_image, read_json, read_jsonl, read_parquet, require


def _read_parquet(path: Path) -> list[Sample]:
    rows = read_parquet(path, "testdev")
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
    ann = read_json(ann_path)
    if not isinstance(ann, dict):
        raise ValueError(f"{ann_path}: a GQA question file maps question ids to {{imageId, question, answer}}")
    for qid, q in ann.items():
        if not isinstance(q, dict) or not {"imageId", "question", "answer"} <= set(q):
            raise ValueError(f"{ann_path}: question {qid!r} lacks 'imageId', 'question' or 'answer'")
    dirs = [root / "images", root]
    samples = []
    if (qfile := find(root, ["llava_gqa*.jsonl", "*.jsonl"])) is not None:
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
