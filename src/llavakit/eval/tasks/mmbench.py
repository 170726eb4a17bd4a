"""MMBench with circular evaluation: every question is asked once per rotation of its options and counts
as right only if every rotation is answered right.

``--data``: the MMBench TSV (``index, question, hint, A, B, C, D, answer, category, image`` with base64
images; VLMEvalKit's image-by-reference rows accepted) or the lmms-lab parquet release. The prompt is
LLaVA's ``model_vqa_mmbench.py`` one: ``hint\\nquestion\\nA. ...\\nB. ...\\n`` + the letter suffix; rotation
``r`` shows the options shifted by ``r`` (``options[r:] + options[:r]``) under the row's option letters. Those are
VLMEvalKit's: every letter whose cell is not empty, so an empty C drops only C and a D after it stays (LLaVA's script
stops at the first empty cell, which would drop D).

The official TSVs already hold the rotations: the circular copies of question ``i`` are rows indexed ``i + 1e6``,
``i + 2e6``, ... (options shifted, answer moved), grouped by ``index % 1e6`` as VLMEvalKit and the MMBench server
do. Such a file's rows are asked once each, as they are; a file without copies gets its rotations made here.

Answers are matched to a letter with VLMEvalKit's exact-matching rules (no ChatGPT judge):
:func:`llavakit.eval.choice.extract_option_letter`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..choice import extract_option_letter, mmbench_circular_accuracy
from .base import LETTER_ANSWER, Sample, Task, answered
from .io import base64_image, find, parquet_image, read_parquet, read_tsv, require, tsv_image

LETTERS = "ABCDEFGHI"
CIRCULAR = 1_000_000  # row i + k * 1e6 of an official TSV is rotation k of question i


def _row_index(row: dict[str, Any]) -> int | None:
    """The row's integer index (TSV cells are text), or None when it is not a number."""
    try:
        return int(str(row.get("index")).strip())
    except ValueError:
        return None


# The texts pandas' read_csv reads as NaN by default. VLMEvalKit and LLaVA read MMBench TSVs with pandas, so a cell
# "NA", "N/A" or "nan" is no option there (VLMEvalKit keeps the options that are not ``pd.isna``): here neither.
PANDAS_NA = frozenset(
    "#N/A;#N/A N/A;#NA;-1.#IND;-1.#QNAN;-NaN;-nan;1.#IND;1.#QNAN;<NA>;N/A;NA;NULL;NaN;None;n/a;nan;null".split(";")
)


def is_none(value: Any) -> bool:
    """A missing cell: None, NaN, empty, a text pandas reads as NaN (:data:`PANDAS_NA`: "NA", "N/A", "nan", ...),
    or 'nan' / 'none' in any case (LLaVA's ``is_none``)."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    if not isinstance(value, str):
        return False
    text = value.strip()
    return text == "" or text in PANDAS_NA or text.lower() in ("nan", "none")


def rotations(row: dict[str, Any], where: str) -> list[tuple[str, dict[str, str], str]]:
    """(prompt, shown options, right letter) for every rotation of one MMBench row.

    The options are the cells A, B, C, ... that are not missing (:func:`is_none`), each under its own letter, as
    VLMEvalKit builds them: an empty cell drops only itself, so a row with A, B and D but no C shows A, B and D.
    Rotation ``r`` moves the option texts ``r`` places over those letters (LLaVA's ``options[r:] + options[:r]``);
    there are as many rotations as options, and every rotation shows the row's own letters.

    Example: options A=cat, B=dog, C=cow with answer B: rotation 1 shows A=dog, B=cow, C=cat, so its
    right letter is A; rotation 2 shows A=cow, B=cat, C=dog, right letter C. With C empty and D=cow instead,
    the letters are A, B, D: rotation 1 shows A=dog, B=cow, D=cat (right letter A), rotation 2 A=cow, B=cat, D=dog
    (right letter D).
    """
    letters = [c for c in LETTERS if c in row and not is_none(row[c])]
    texts = [str(row[c]) for c in letters]
    if len(letters) < 2:
        raise ValueError(f"{where}: a question needs at least two options, got {''.join(letters) or 'none'}")
    answer = str(row["answer"]).strip()
    if answer not in letters:
        raise ValueError(f"{where}: answer {answer!r} is not one of the options {''.join(letters)}")
    n, k = len(letters), letters.index(answer)
    question = str(row["question"])
    if not is_none(row.get("hint")):
        question = f"{row['hint']}\n{question}"
    out = []
    for r in range(n):
        shown = dict(zip(letters, texts[r:] + texts[:r]))
        lines = [f"{c}. {o}" for c, o in shown.items()]
        prompt = "\n".join([question, *lines, LETTER_ANSWER])
        out.append((prompt, shown, letters[(k - r) % n]))
    return out


def read(root: Path) -> list[Sample]:
    parquet = find(root, ["*.parquet", "data/*.parquet"])
    if parquet is not None and parquet.suffix == ".parquet":
        rows, path = read_parquet(root, "dev"), root
    else:
        path = find(root, ["*.tsv"])
        if path is None:
            raise ValueError(f"{root}: no MMBench .tsv or .parquet file")
        rows = read_tsv(path)
    by_index = {str(r.get("index")): r for r in rows}
    indices = [_row_index(r) for r in rows]
    if not any(i is not None and i >= CIRCULAR for i in indices):
        return [s for row in rows for s in _samples(row, path, by_index, None)]
    # The file holds the circular copies itself: each row is one rotation; a question's rows are put together.
    first: dict[int, int] = {}
    numbered: list[tuple[dict[str, Any], int]] = []
    for row, i in zip(rows, indices):
        if i is None:
            raise ValueError(f"{path}:{row['__line__']}: index {row.get('index')!r} is not a number")
        first.setdefault(i % CIRCULAR, len(first))
        numbered.append((row, i))
    order = sorted(numbered, key=lambda pair: (first[pair[1] % CIRCULAR], pair[1]))
    return [s for row, i in order for s in _samples(row, path, by_index, i)]


def _samples(row: dict[str, Any], path: Path, by_index: dict[str, Any], copy_index: int | None) -> list[Sample]:
    """The samples of one row: every rotation of its options, or (``copy_index`` given: a row of a file holding the
    circular copies) the row as it is, as rotation ``copy_index // 1e6`` of question ``copy_index % 1e6``."""
    samples = []
    where = f"{path}:{row['__line__']}"
    require(row, ("index", "question", "A", "B", "image"), path)
    if "answer" not in row or is_none(row["answer"]):
        raise ValueError(f"{where}: no answer (MMBench test splits are scored by the official server)")
    if isinstance(row["image"], str):
        image = base64_image(tsv_image(row, by_index, path), where)  # VLMEvalKit: "same image as row N"
    else:
        image = parquet_image(row["image"], where)
    index = str(row["index"])
    category = None if is_none(row.get("category")) else str(row["category"])
    numbered = list(enumerate(rotations(row, where)))
    if copy_index is not None:
        index = str(copy_index % CIRCULAR)
        numbered = [(copy_index // CIRCULAR, numbered[0][1])]
    for r, (prompt, shown, right) in numbered:
        ref = {"options": shown, "answer": right, "category": category, "round": r}
        samples.append(Sample(f"{index}/{r}", prompt, image, ref, group=index))
    return samples


def answer_key(record: dict[str, Any]) -> str:
    """Our ids are ``"<index>/<round>"``; LLaVA's answer files give ``question_id`` (the index) and
    ``round_id`` (absent without ``--all-rounds``: round 0)."""
    qid = str(record.get("question_id", record.get("id")))
    if "/" in qid:
        return qid
    if qid.isdigit() and int(qid) >= CIRCULAR and not record.get("round_id"):  # a circular copy's row, asked once
        return f"{int(qid) % CIRCULAR}/{int(qid) // CIRCULAR}"
    return f"{qid}/{record.get('round_id', 0)}"


def score(samples: list[Sample], predictions: dict[str, str]) -> dict[str, Any]:
    """``circular`` (all rotations right, over the questions whose every rotation was answered),
    ``first_round`` (rotation 0 only, as a single pass would score), ``rotations`` (every answered rotation
    on its own) and circular accuracy per category. Questions with unanswered rotations are counted under
    ``incomplete_questions`` and left out of the circular scores."""
    pairs = answered(samples, predictions)
    if not pairs:
        raise ValueError("MMBench: no predictions to score")
    records = [
        {
            "index": s.group,
            "prediction": extract_option_letter(p, s.ref["options"]),
            "answer": s.ref["answer"],
            "category": s.ref["category"],
            "round": s.ref["round"],
        }
        for s, p in pairs
    ]
    total: dict[str | None, int] = {}
    for s in samples:
        total[s.group] = total.get(s.group, 0) + 1
    got: dict[str | None, int] = {}
    for r in records:
        got[r["index"]] = got.get(r["index"], 0) + 1
    complete = [r for r in records if got[r["index"]] == total[r["index"]]]
    right = [r["prediction"] == r["answer"] for r in records]
    first = [r["prediction"] == r["answer"] for r in records if r["round"] == 0]
    scores: dict[str, float] = {}
    if complete:
        result = mmbench_circular_accuracy(complete, index_modulo=None)
        scores["circular"] = result["overall"]
    scores["rotations"] = sum(right) / len(right)
    if first:
        scores["first_round"] = sum(first) / len(first)
    if complete:
        scores.update({f"category/{k}": v for k, v in result["per_category"].items()})
    counts = {
        "questions": len(got),
        "rotations": len(records),
        "unparsed": sum(r["prediction"] is None for r in records),
        "incomplete_questions": len(got) - len({r["index"] for r in complete}),
    }
    return {"scores": scores, "counts": counts}


TASK = Task(
    "mmbench",
    read,
    score,
    "MMBench (dev): circular evaluation over option rotations, VLMEvalKit exact matching",
    "the MMBench .tsv (base64 images, with an answer column) or the lmms-lab parquet directory",
    key_of=answer_key,
)
