"""The held-out synthetic benchmark (``llava data synth --kind eval``; see :mod:`llavakit.data.synth`).

``eval.jsonl`` records carry the prompt (with its answer-format suffix), the answer and the question type.
Scoring: short answers match after the official VQA normalisation (``"Two."`` == ``"2"``, ``"The red"`` ==
``"red"``); existence questions use LLaVA's POPE yes/no rule and get POPE's precision / recall / F1 /
yes-ratio; multiple choice extracts the option letter; reading is also split by font-size bucket, counting by the
answer (``count_1_to_5``, ``count_2_plus``).

With the data's ``scenes.jsonl`` beside it, colour and shape questions are also split by scene: one object, or
several (where the question names the object by its other attribute), and on scenes of several objects
``{color,shape}_named_in_scene`` is the share of answers naming a colour (kind) that is in the scene, right or
not, and ``{color,shape}_several_chance`` the accuracy of a blind pick among the scene's distinct values. A
model that knows what is in a scene but not which object has which colour scores high on the first and about the
chance level on ``color_several``.
"""

from __future__ import annotations

import json
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
# count questions by their answer: the 1-5 objects issue 5's target names, and two or more (counting, not detecting)
COUNT_RANGES = {"count_1_to_5": lambda n: 1 <= n <= 5, "count_2_plus": lambda n: n >= 2}


EVAL_KEYS = ("id", "image", "question", "answer", "qtype")  # a record of ``llava data synth --kind eval``


def _is_eval_file(path: Path) -> bool:
    """Whether the first record of a JSON lines file is an eval question (not scenes.jsonl, predictions.jsonl)."""
    try:
        with path.open(encoding="utf-8") as f:
            record = json.loads(next((line for line in f if line.strip()), ""))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(record, dict) and all(k in record for k in EVAL_KEYS)


def read(root: Path) -> list[Sample]:
    path = find(root, ["eval.jsonl"])
    if path is None and root.is_dir():  # a renamed eval file; never scenes.jsonl or a run's predictions.jsonl
        path = next((p for p in sorted(root.glob("*.jsonl")) if p.is_file() and _is_eval_file(p)), None)
    if path is None:
        raise ValueError(f"{root}: no eval.jsonl; write one with `llava data synth --kind eval --out DIR --n N`")
    base = path.parent
    scenes = _scenes(base / "scenes.jsonl")
    samples = []
    for r in read_jsonl(path):
        require(r, EVAL_KEYS, path)
        ref = {k: r.get(k) for k in ("answer", "qtype", "font_bucket", "negative")}
        if (shapes := scenes.get(str(r["image"]))) is not None:
            ref["colors"] = [str(x["color"]) for x in shapes]
            ref["kinds"] = [str(x["kind"]) for x in shapes]
        samples.append(Sample(str(r["id"]), r["question"], str(base / r["image"]), ref))
    return samples


def _scenes(path: Path) -> dict[str, list[dict[str, Any]]]:
    """image -> the shapes of its scene, from ``scenes.jsonl`` (empty when the file is not there)."""
    if not path.exists():
        return {}
    out = {}
    for r in read_jsonl(path):
        require(r, ("image", "scene"), path)
        if not isinstance(r["scene"], dict) or not isinstance(r["scene"].get("shapes"), list):
            raise ValueError(
                f"{path}:{r['__line__']}: the scene has no list of shapes; rewrite it with `llava data synth`"
            )
        out[str(r["image"])] = r["scene"]["shapes"]
    return out


def options_of(prompt: str) -> dict[str, str]:
    """The lettered options of a multiple-choice prompt: lines ``"A. red"`` -> ``{"A": "red"}``."""
    return {m.group(1): m.group(2) for line in prompt.splitlines() if (m := _OPTION_LINE.match(line.strip()))}


def is_right(sample: Sample, prediction: str) -> bool:
    """One synthetic question, scored by its type (see the module docstring)."""
    qtype, answer = sample.ref["qtype"], str(sample.ref["answer"])
    if qtype == "existence":
        return pope_answer(prediction.strip()) == answer.strip().lower()  # as pope_metrics reads the gold
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
    answers = [(str(s.ref["answer"]).strip(), ok) for s, ok in rights if s.ref["qtype"] == "count"]
    for name, keep in COUNT_RANGES.items():
        oks = [ok for a, ok in answers if a.isdigit() and keep(int(a))]
        if oks:
            scores[name] = sum(oks) / len(oks)
            counts[name] = len(oks)
    _by_scene(pairs, rights, scores, counts)
    return {"scores": scores, "counts": counts}


def _by_scene(
    pairs: list[tuple[Sample, str]], rights: list[tuple[Sample, bool]], scores: dict[str, float], counts: dict[str, int]
) -> None:
    """Colour and shape accuracy on one-object and several-object scenes, and how often an answer about a
    several-object scene names something in it, and a blind pick's accuracy there (see the module docstring)."""
    for qtype, attr in (("color", "colors"), ("shape", "kinds")):
        got = [(s, p, ok) for (s, p), (_, ok) in zip(pairs, rights) if s.ref["qtype"] == qtype and attr in s.ref]
        one = [ok for s, _, ok in got if len(s.ref[attr]) == 1]
        several = [(s, p, ok) for s, p, ok in got if len(s.ref[attr]) > 1]
        named = [normalize_vqa_answer(p) in {normalize_vqa_answer(v) for v in s.ref[attr]} for s, p, _ in several]
        for name, oks in ((f"{qtype}_one_object", one), (f"{qtype}_several", [ok for *_, ok in several])):
            if oks:
                scores[name] = sum(oks) / len(oks)
                counts[name] = len(oks)
        if named:
            scores[f"{qtype}_named_in_scene"] = sum(named) / len(named)
            # a blind pick among the scene's distinct values (red, red and blue shapes: 1/2 for a colour question)
            chance = [1 / len(set(s.ref[attr])) for s, _, _ in several]
            scores[f"{qtype}_several_chance"] = sum(chance) / len(chance)


TASK = Task(
    name="synth",
    read=read,
    score=score,
    description="held-out synthetic scenes: accuracy per question type, POPE-style existence, reading by font size",
    data_help="a directory with eval.jsonl and images/ from `llava data synth --kind eval` (or the eval.jsonl)",
    max_new_tokens=16,
)
