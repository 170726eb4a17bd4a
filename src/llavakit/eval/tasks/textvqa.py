"""TextVQA val: VQA accuracy as LLaVA's ``eval_textvqa.py`` (m4c ``TextVQAAccuracyEvaluator``).

Two tasks read the same layouts and differ only in the prompts they build:

* ``textvqa``: the question, capitalised, + the short-answer suffix: lmms-eval's TextVQA prompt (``ocr: false``);
* ``textvqa_ocr``: the OCR-token prompt of LLaVA-1.5's ``llava_textvqa_val_v051_ocr.jsonl`` and of lmms-eval's
  TextVQA with ``ocr: true`` (:func:`textvqa_prompt`), the prompt LLaVA-1.5's published number was made with.

``--data`` (searched in this order):

* the lmms-lab parquet release (``validation-*.parquet``; its ``ocr_tokens`` column feeds ``textvqa_ocr``);
* ``TextVQA_0.5.1_val.json`` + ``train_images/`` + LLaVA's ``llava_textvqa_val_v051_ocr.jsonl``: the question file's
  prompts are asked as they are, by both tasks (they already carry the OCR tokens);
* ``TextVQA_0.5.1_val.json`` + ``train_images/`` alone: the prompts are built; ``textvqa_ocr`` takes each record's
  ``ocr_tokens``, else the image's tokens in ``TextVQA_Rosetta_OCR_v0.2_val.json`` beside it.

Question ids are ``"<image_id>|<question lowercased>"``, the only key LLaVA's answer files allow (their
``question_id`` is the image id; the prompt gives the question). The same question asked twice of one image gives two
questions with one key: ``eval_textvqa.py`` maps a key to the *last* such annotation and scores every answer line
against it, lmms-eval scores each question with its own answers. Here every question is kept (the n-th of a key has
the id ``key#n``, see :func:`llavakit.eval.tasks.base.numbered`); with LLaVA's question file, whose lines cannot say
which of the two they are, both take the last annotation's answers, as ``eval_textvqa.py`` does (its number is
reproduced); prompts built from the annotations or parquet rows keep each question's own answers, as lmms-eval does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import SHORT_ANSWER, Sample, Task, numbered, resolve_image
from .io import find, parquet_image, question_jsonl, read_json, read_jsonl, read_parquet, require
from .vqa import human_answers, vqa_scorer

OCR_LINE = "Reference OCR token: "
ROSETTA = "TextVQA_Rosetta_OCR_v0.2_val.json"  # the OCR tokens TextVQA ships for its val images


def textvqa_question(prompt: str) -> str:
    """LLaVA's ``prompt_processor`` (eval_textvqa.py): the question line of a prompt, lowercased."""
    lines = prompt.split("\n")
    if OCR_LINE in prompt and len(lines) == 3:
        return (lines[1] if prompt.startswith(OCR_LINE.strip()) else lines[0]).lower()
    return lines[0].lower()


def textvqa_key(record: dict[str, Any]) -> str:
    """LLaVA's TextVQA answer files key questions by image id + question (its question_id is the image
    id); our sample ids are ``"<image_id>|<question lowercased>"`` (``#n`` added for repeats)."""
    qid = str(record.get("question_id", record.get("id")))
    if "|" in qid or "prompt" not in record:
        return qid
    return f"{qid}|{textvqa_question(str(record['prompt']))}"


def textvqa_prompt(question: str, ocr_tokens: list[str] | None = None) -> str:
    """The prompt of one question, as lmms-eval's ``textvqa_doc_to_text`` builds it: the question through
    ``str.capitalize`` (first letter up, the rest lowered; not stripped), then, given ``ocr_tokens``, a line
    ``Reference OCR token: `` + the tokens joined by ``", "``, then the short-answer suffix on its own line.

    ``("what brand is SONY?",)`` -> ``"What brand is sony?\\nAnswer the question using a single word or phrase."``;
    ``("what brand is it?", ["SONY", "A7"])`` ->
    ``"What brand is it?\\nReference OCR token: SONY, A7\\nAnswer the question using a single word or phrase."``;
    an image without tokens keeps the line, empty after its colon and space, as lmms-eval writes it."""
    ocr = "" if ocr_tokens is None else f"\n{OCR_LINE}{', '.join(ocr_tokens)}"
    return f"{question.capitalize()}{ocr}\n{SHORT_ANSWER}"


def _tokens(value: Any, where: str) -> list[str]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(t, str) for t in value):
        raise ValueError(f"{where}: 'ocr_tokens' must be a list of strings, got {type(value).__name__}")
    return list(value)


def _read_parquet(path: Path, ocr: bool) -> list[Sample]:
    seen: dict[str, int] = {}
    samples = []
    for row in read_parquet(path, "validation"):
        where = f"{path}:{row['__line__']}"
        require(row, ("image_id", "question", "answers", "image"), path)
        if ocr and "ocr_tokens" not in row:
            raise ValueError(
                f"{where}: no 'ocr_tokens' column for the OCR-token prompts; use the lmms-lab/textvqa release, "
                "which has one, or task textvqa"
            )
        tokens = _tokens(row["ocr_tokens"], where) if ocr else None
        key = numbered(f"{row['image_id']}|{str(row['question']).lower()}", seen)
        image = parquet_image(row["image"], where)
        answers = human_answers(row["answers"], where)
        samples.append(Sample(key, textvqa_prompt(str(row["question"]), tokens), image, {"answers": answers}))
    return samples


def _annotation_file(root: Path) -> Path | None:
    """``TextVQA_0.5.1_val.json`` (or a file named like it), never the Rosetta OCR file beside it."""
    if root.is_file():
        return root
    for pattern in ("TextVQA_0.5.1_val.json", "TextVQA_*.json", "*textvqa*.json"):
        hits = sorted(p for p in root.glob(pattern) if p.is_file() and "rosetta" not in p.name.lower())
        if hits:
            return hits[0]
    return None


def _rosetta_tokens(base: Path, ann_path: Path) -> tuple[Path, dict[str, list[str]]]:
    path = find(base, [ROSETTA, "*Rosetta_OCR*val*.json"])
    if path is None or path == ann_path:
        raise ValueError(
            f"{ann_path}: its records have no 'ocr_tokens' and no {ROSETTA} lies in {base}; put TextVQA's Rosetta OCR "
            "file there for the OCR-token prompts (or run task textvqa, whose prompts have none)"
        )
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise ValueError(f"{path}: not a TextVQA OCR file (no 'data' list of {{image_id, ocr_tokens}})")
    tokens = {}
    for i, r in enumerate(data["data"]):
        if not isinstance(r, dict) or not {"image_id", "ocr_tokens"} <= set(r):
            raise ValueError(f"{path}: record {i} lacks 'image_id' or 'ocr_tokens'")
        tokens[str(r["image_id"])] = _tokens(r["ocr_tokens"], f"{path}: record {i}")
    return path, tokens


def _ocr_tokens(base: Path, ann_path: Path, records: list[dict[str, Any]]) -> list[list[str]]:
    """Each record's OCR tokens: its own ``ocr_tokens``, else its image's in the Rosetta OCR file."""
    rosetta: tuple[Path, dict[str, list[str]]] | None = None
    out = []
    for i, a in enumerate(records):
        if "ocr_tokens" in a:
            out.append(_tokens(a["ocr_tokens"], f"{ann_path}: record {i}"))
            continue
        rosetta = rosetta or _rosetta_tokens(base, ann_path)
        if str(a["image_id"]) not in rosetta[1]:
            raise ValueError(
                f"{ann_path}: record {i}: image {a['image_id']!r} has no OCR tokens in {rosetta[0]}; "
                f"use the {ROSETTA} of the same TextVQA release"
            )
        out.append(rosetta[1][str(a["image_id"])])
    return out


def read_textvqa(root: Path, ocr: bool = False) -> list[Sample]:
    """TextVQA val samples; ``ocr``: build OCR-token prompts (LLaVA's question file is asked as it is either way)."""
    if (pq := find(root, ["*.parquet", "data/*.parquet"])) is not None and pq.suffix == ".parquet":
        return _read_parquet(pq if root.is_file() else pq.parent, ocr)
    ann_path = _annotation_file(root)
    if ann_path is None:
        raise ValueError(f"{root}: no TextVQA annotation file (TextVQA_0.5.1_val.json)")
    ann = read_json(ann_path)
    if not isinstance(ann, dict) or not isinstance(ann.get("data"), list):
        raise ValueError(f"{ann_path}: not a TextVQA annotation file (no 'data' list)")
    records: list[dict[str, Any]] = ann["data"]
    for i, a in enumerate(records):
        if not isinstance(a, dict) or not {"image_id", "question", "answers"} <= set(a):
            raise ValueError(f"{ann_path}: record {i} lacks 'image_id', 'question' or 'answers'")
    keys = [f"{a['image_id']}|{str(a['question']).lower()}" for a in records]
    base = root if root.is_dir() else root.parent
    dirs = [base / d for d in ("train_images", "images")] + [base]
    seen: dict[str, int] = {}
    samples = []
    qfile = question_jsonl(base, "llava_textvqa*.jsonl")
    if qfile is not None:
        last = dict(zip(keys, records))  # eval_textvqa.py: the last annotation of a key answers all its lines
        for r in read_jsonl(qfile):
            require(r, ("question_id", "image", "text"), qfile)
            key = f"{r['question_id']}|{textvqa_question(r['text'])}"
            if key not in last:
                raise ValueError(f"{qfile}:{r['__line__']}: no annotation in {ann_path} for this image and question")
            answers = human_answers(last[key]["answers"], f"{ann_path}")
            samples.append(
                Sample(numbered(key, seen), r["text"], resolve_image(r["image"], dirs), {"answers": answers})
            )
        return samples
    tokens: list[list[str] | None] = [None] * len(records)
    if ocr:
        tokens = list(_ocr_tokens(base, ann_path, records))
    for i, (key, a, toks) in enumerate(zip(keys, records, tokens)):
        image = resolve_image(f"{a['image_id']}.jpg", dirs)
        answers = human_answers(a["answers"], f"{ann_path}: record {i}")
        samples.append(
            Sample(numbered(key, seen), textvqa_prompt(str(a["question"]), toks), image, {"answers": answers})
        )
    return samples


def read_textvqa_ocr(root: Path) -> list[Sample]:
    """TextVQA val with the OCR-token prompts (:func:`read_textvqa` with ``ocr=True``)."""
    return read_textvqa(root, ocr=True)


TEXTVQA = Task(
    "textvqa",
    read_textvqa,
    vqa_scorer("textvqa"),
    "TextVQA: VQA accuracy as LLaVA's eval_textvqa.py (m4c TextVQAAccuracyEvaluator)",
    "a directory with TextVQA_0.5.1_val.json (+ llava_textvqa_val_v051_ocr.jsonl) and train_images/; or parquet",
    key_of=textvqa_key,
    number_repeats=True,
)
TEXTVQA_OCR = Task(
    "textvqa_ocr",
    read_textvqa_ocr,
    vqa_scorer("textvqa"),
    "TextVQA with the OCR-token prompts LLaVA-1.5 reported (Reference OCR token: ...); scored as textvqa",
    f"a directory with TextVQA_0.5.1_val.json, {ROSETTA} (or llava_textvqa_val_v051_ocr.jsonl) and train_images/; "
    "or the lmms-lab parquet (ocr_tokens column)",
    key_of=textvqa_key,
    number_repeats=True,
)
