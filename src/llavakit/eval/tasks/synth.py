"""The held-out synthetic benchmark (``llava data synth --kind eval``; see :mod:`llavakit.data.synth`).

``eval.jsonl`` records carry the prompt (with its answer-format suffix), the answer and the question type.
Scoring: short answers match after the official VQA normalisation (``"Two."`` == ``"2"``, ``"The red"`` ==
``"red"``); existence questions use LLaVA's POPE yes/no rule and get POPE's precision / recall / F1 /
yes-ratio; multiple choice extracts the option letter; reading is also split by font-size bucket.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..choice import extract_option_letter
from ..mme_pope import pope_answer, pope_metrics
from ..vqa_normalize import normalize_vqa_answer
from .base import Sample, Task, answered
from .io import find, read_jsonl, require

QTYPE_ORDER = ("color", "shape", "count", "position", "existence", "reading", "mc")
BUCKET_ORDER = ("tiny", "small", "medium", "large")
_OPTION_LINE = re.compile(r"^([A-Z])\. (.*)$")


def read(root: Path) -> list[Sample]:
    path = find(root, ["eval.jsonl", "*.jsonl"])
    if path is None:
        raise ValueError(f"{root}: no eval.jsonl; write one with `llava data synth --kind eval --out DIR --n N`")
    base = path.parent
    samples = []
    for r in read_jsonl(path):
        require(r, ("id", "image", "question", "answer", "qtype"), path)
        ref = {k: r.get(k) for k in ("answer", "qtype", "font_bucket", "negative")}
        samples.append(Sample(str(r["id"]), r["question"], str(base / r["image"]), ref))
    return samples


def options_of(prompt: str) -> dict[str, str]:
    """The lettered options of a multiple-choice prompt: lines ``"A. red"`` -> ``{"A": "red"}``."""
    return {m.group(1): m.group(2) for line in prompt.splitlines() if (m := _OPTION_LINE.match(line.strip()))}


def is_right(sample: Sample, prediction: str) -> bool:
    """One synthetic question, scored by its type (see the module docstring)."""
    qtype, answer = sample.ref["qtype"], str(sample.ref["answer"])
    if qtype == "existence":
        return pope_answer(prediction.strip()) == answer
    if qtype == "mc":
        return extract_option_letter(prediction, options_of(sample.prompt)) == answer
    return normalize_vqa_answer(prediction) == normalize_vqa_answer(answer)


def score(samples: list[Sample], predictions: dict[str, str]) -> dict[str, Any]:
    """Accuracy overall and per question type; POPE metrics on existence; reading accuracy per font bucket.

    Example: 2 colour questions (1 right) and 2 existence questions (yes -> "Yes", no -> "Yes"):
    overall 2/4, color 1/2, existence 1/2, existence_precision 1/2, existence_recall 1, yes_ratio 1.
    """
    pairs = answered(samples, predictions)
    if not pairs:
        raise ValueError("synth: no predictions to score")
    rights = [(s, is_right(s, p)) for s, p in pairs]
    scores: dict[str, float] = {"overall": sum(ok for _, ok in rights) / len(rights)}
    counts: dict[str, int] = {"questions": len(rights)}
    qtypes = [q for q in QTYPE_ORDER if any(s.ref["qtype"] == q for s, _ in rights)]
    qtypes += sorted({str(s.ref["qtype"]) for s, _ in rights} - set(qtypes))
    for qtype in qtypes:
        oks = [ok for s, ok in rights if s.ref["qtype"] == qtype]
        scores[qtype] = sum(oks) / len(oks)
        counts[qtype] = len(oks)
    existence = [(s, p) for s, p in pairs if s.ref["qtype"] == "existence"]
    if existence:
        m = pope_metrics([p.strip() for _, p in existence], [str(s.ref["answer"]) for s, _ in existence])
        for key in ("precision", "recall", "f1", "yes_ratio"):
            scores[f"existence_{key}"] = m[key]
        for kind in ("adversarial", "random"):
            oks = [ok for s, ok in rights if s.ref["qtype"] == "existence" and s.ref.get("negative") == kind]
            if oks:
                scores[f"existence_no_{kind}"] = sum(oks) / len(oks)
                counts[f"existence_no_{kind}"] = len(oks)
    for bucket in BUCKET_ORDER:
        oks = [ok for s, ok in rights if s.ref["qtype"] == "reading" and s.ref.get("font_bucket") == bucket]
        if oks:
            scores[f"reading_{bucket}"] = sum(oks) / len(oks)
            counts[f"reading_{bucket}"] = len(oks)
    return {"scores": scores, "counts": counts}


TASK = Task(
    name="synth",
    read=read,
    score=score,
    description="held-out synthetic scenes: accuracy per question type, POPE-style existence, reading by font size",
    data_help="a directory with eval.jsonl and images/ from `llava data synth --kind eval` (or the eval.jsonl)",
    max_new_tokens=16,
)
