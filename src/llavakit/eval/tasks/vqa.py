"""VQAv2 and VizWiz: open-ended questions with 10 human answers, scored by VQA accuracy (TextVQA, which shares
the answers' shape and the scorer, has its own module: :mod:`.textvqa`).

Accepted layouts of ``--data`` (a directory, searched in this order):

* LLaVA-1.5's: a question file ``llava_*.jsonl`` (``{"question_id", "image", "text"}``, the text already
  ending in the answer-format suffix) + the benchmark's annotation JSON (for the answers) + the images;
* the official annotation files alone (VQAv2 ``*questions*.json`` + ``*annotations*.json``; VizWiz ``val.json``):
  the prompt is the question + LLaVA's suffix;
* the lmms-lab parquet release (``*.parquet``, images inside).

Scoring follows LLaVA: TextVQA with ``TextVQAAccuracyEvaluator`` (EvalAI processing of both sides);
VQAv2 and VizWiz as their servers do, on EvalAI-processed predictions (``protocol="vqav2"`` / ``"vizwiz"``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..metrics import evalai_answer_processor, vizwiz_accuracy, vqa_accuracy, vqa_accuracy_official
from .base import SHORT_ANSWER, UNANSWERABLE, Sample, Scorer, Task, answered, resolve_image, suffixed
from .io import find, parquet_image, question_jsonl, read_json, read_jsonl, read_parquet, require


def human_answers(raw: Any, where: str) -> list[str]:
    """Human answers as strings: VQAv2 / VizWiz give ``[{"answer": ...}]``, TextVQA plain strings."""
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{where}: 'answers' must be a non-empty list")
    return [str(a["answer"]) if isinstance(a, dict) else str(a) for a in raw]


def _parquet(path: Path, name: str, suffixes: tuple[str, ...], id_of, split: str) -> list[Sample]:  # noqa: ANN001
    samples = []
    for row in read_parquet(path, split):
        where = f"{path}:{row['__line__']}"
        require(row, ("question", "answers", "image"), path)
        answers = human_answers(row["answers"], where)
        sid = id_of(row)
        samples.append(
            Sample(sid, suffixed(row["question"], *suffixes), parquet_image(row["image"], where), {"answers": answers})
        )
    return samples


def vqa_scorer(protocol: str) -> Scorer:
    """The accuracy scorer of one protocol: ``"textvqa"`` (LLaVA's m4c evaluator), ``"vqav2"`` or ``"vizwiz"``."""

    def score(samples: list[Sample], predictions: dict[str, str]) -> dict[str, Any]:
        pairs = answered(samples, predictions)
        if not pairs:
            raise ValueError("VQA: no predictions to score")
        if protocol == "textvqa":
            accs = [vqa_accuracy(p, s.ref["answers"]) for s, p in pairs]
        else:
            official = vqa_accuracy_official if protocol == "vqav2" else vizwiz_accuracy
            accs = [official(evalai_answer_processor(p), s.ref["answers"]) for s, p in pairs]
        return {"scores": {"accuracy": sum(accs) / len(accs)}, "counts": {"questions": len(accs)}}

    return score


# ---------------------------------------------------------------- VQAv2


def read_vqav2(root: Path) -> list[Sample]:
    if (pq := find(root, ["*.parquet", "data/*.parquet"])) is not None and pq.suffix == ".parquet":
        qid = lambda r: str(r["question_id"])  # noqa: E731
        return _parquet(pq if root.is_file() else pq.parent, "vqav2", (SHORT_ANSWER,), qid, "validation")
    ann_path = find(root, ["*val*annotations*.json", "*annotations*.json"])
    if ann_path is None:
        raise ValueError(f"{root}: no VQAv2 annotation file (*annotations*.json) with the human answers")
    ann = read_json(ann_path)
    if not isinstance(ann, dict) or "annotations" not in ann:
        raise ValueError(f"{ann_path}: not a VQA annotation file (no 'annotations' list)")
    answers = {}
    for i, a in enumerate(ann["annotations"]):
        if not isinstance(a, dict) or "question_id" not in a or "answers" not in a:
            raise ValueError(f"{ann_path}: annotation {i} lacks 'question_id' or 'answers'")
        answers[str(a["question_id"])] = human_answers(a["answers"], f"{ann_path}: annotation {i}")
    subtype = ann.get("data_subtype", "val2014")
    base = root if root.is_dir() else root.parent  # --data may name the annotation file itself
    dirs = [base / d for d in (subtype, "images", "test2015", "val2014")] + [base]
    samples = []
    if (qfile := question_jsonl(base, "llava_vqav2*.jsonl")) is not None:
        for r in read_jsonl(qfile):
            require(r, ("question_id", "image", "text"), qfile)
            qid = str(r["question_id"])
            if qid not in answers:
                raise ValueError(f"{qfile}:{r['__line__']}: question {qid} has no answers in {ann_path}")
            samples.append(Sample(qid, r["text"], resolve_image(r["image"], dirs), {"answers": answers[qid]}))
        return samples
    qfile = find(base, ["*val*questions*.json", "*questions*.json"])
    if qfile is None:
        raise ValueError(f"{root}: no question file (llava_vqav2*.jsonl or *questions*.json)")
    questions = read_json(qfile)
    for i, q in enumerate(questions.get("questions", []) if isinstance(questions, dict) else []):
        if not isinstance(q, dict) or not {"question_id", "image_id", "question"} <= set(q):
            raise ValueError(f"{qfile}: question {i} lacks 'question_id', 'image_id' or 'question'")
        qid = str(q["question_id"])
        image = f"COCO_{subtype}_{int(q['image_id']):012d}.jpg"
        if qid in answers:
            samples.append(
                Sample(
                    qid, suffixed(q["question"], SHORT_ANSWER), resolve_image(image, dirs), {"answers": answers[qid]}
                )
            )
    return samples


# ---------------------------------------------------------------- VizWiz


def read_vizwiz(root: Path) -> list[Sample]:
    """VizWiz val (the test split has no public answers): ``Annotations/val.json`` + ``val/`` images, or parquet.
    Question ids are the image file names, as in VizWiz itself."""
    suffixes = (UNANSWERABLE, SHORT_ANSWER)
    if (pq := find(root, ["*.parquet", "data/*.parquet"])) is not None and pq.suffix == ".parquet":
        return _parquet(
            pq if root.is_file() else pq.parent,
            "vizwiz",
            suffixes,
            lambda r: str(r.get("question_id") or r["image_id"]),
            "val",
        )
    ann_path = find(root, ["Annotations/val.json", "val.json", "*.json"])
    if ann_path is None:
        raise ValueError(f"{root}: no VizWiz annotation file (Annotations/val.json)")
    ann = read_json(ann_path)
    if not isinstance(ann, list):
        raise ValueError(f"{ann_path}: a VizWiz annotation file is a JSON list of {{image, question, answers}}")
    base = root if root.is_dir() else root.parent
    dirs = [base / d for d in ("val", "images")] + [base]
    samples = []
    for i, a in enumerate(ann):
        if not isinstance(a, dict) or not {"image", "question", "answers"} <= set(a):
            raise ValueError(f"{ann_path}: record {i} lacks 'image', 'question' or 'answers'")
        answers = human_answers(a["answers"], f"{ann_path}: record {i}")
        samples.append(
            Sample(
                str(a["image"]),
                suffixed(a["question"], *suffixes),
                resolve_image(a["image"], dirs),
                {"answers": answers},
            )
        )
    return samples


VQAV2 = Task(
    "vqav2",
    read_vqav2,
    vqa_scorer("vqav2"),
    "VQAv2: VQA accuracy (EvalAI-processed predictions, official vqaEval rules)",
    "a directory with llava_vqav2*.jsonl or *questions*.json, *annotations*.json and the COCO images; or parquet",
)
VIZWIZ = Task(
    "vizwiz",
    read_vizwiz,
    vqa_scorer("vizwiz"),
    "VizWiz-VQA val: VQA accuracy (EvalAI-processed predictions, official rules)",
    "a directory with Annotations/val.json and val/ images; or parquet",
)
