"""ScienceQA-IMG: the test questions with an image, LLaVA's prompt and answer parsing (eval_science_qa.py).

``--data``: a directory with ``problems.json`` and ``pid_splits.json`` (the official release) and the images
``images/test/<pid>/image.png``; LLaVA's ``llava_test_CQM-A.json`` is used for the prompts when present.
Or the lmms-lab parquet release (``image, question, choices, answer, hint``).

When LLaVA's question file is absent the prompt is built as lmms-eval's ``scienceqa_img`` builds it (the
layout of LLaVA-1.5's released question file: a context line only when there is a hint, lettered options),
plus LLaVA's ``--single-pred-prompt`` suffix::

    Context: <hint>
    <question>
    A. <choice>
    B. <choice>
    Answer with the option's letter from the given choices directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..choice import extract_scienceqa_letter
from .base import LETTER_ANSWER, Sample, Task, answered, suffixed
from .io import find, parquet_image, read_json, read_parquet, require

LETTERS = "ABCDE"


def sqa_prompt(question: str, hint: str, choices: list[str]) -> str:
    """The question text without the image token or the answer-format suffix (see the module docstring)."""
    context = f"Context: {hint.strip()}\n" if hint.strip() else ""
    options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
    return f"{context}{question}\n{options}"


def _answer_index(answer: Any, n: int, where: str) -> int:
    """The index of the right choice, in range: -1 would read as letter E and 3 of 3 choices is never right."""
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < n:
        raise ValueError(f"{where}: 'answer' must be the index of one of its {n} choices (0-{n - 1}), got {answer!r}")
    return answer


def _check_choices(choices: Any, where: str) -> list[str]:
    if not isinstance(choices, list) or not 1 <= len(choices) <= len(LETTERS):
        raise ValueError(f"{where}: 'choices' must be a list of 1 to 5 options")
    return [str(c) for c in choices]


def read(root: Path) -> list[Sample]:
    if (pq := find(root, ["*.parquet", "data/*.parquet"])) is not None and pq.suffix == ".parquet":
        samples = []
        for r in read_parquet(root, "test"):
            require(r, ("image", "question", "choices", "answer"), root)
            if r["image"] is None:
                continue  # a text-only question: not part of SQA-IMG
            where = f"{root}:{r['__line__']}"
            choices = _check_choices(list(r["choices"]), where)
            prompt = suffixed(sqa_prompt(r["question"], r.get("hint") or "", choices), LETTER_ANSWER)
            ref = {"answer": _answer_index(r["answer"], len(choices), where), "num_choices": len(choices)}
            samples.append(Sample(str(r.get("id", r["__line__"])), prompt, parquet_image(r["image"], where), ref))
        return samples
    base = root if root.is_dir() else root.parent
    problems_path = base / "problems.json"
    if not problems_path.is_file():
        raise ValueError(f"{root}: no problems.json (the ScienceQA release)")
    problems = read_json(problems_path)
    splits_path = base / "pid_splits.json"
    test_ids = read_json(splits_path)["test"] if splits_path.is_file() else list(problems)
    llava_prompts: dict[str, str] = {}
    if (qfile := find(base, ["llava_test_CQM-A.json"])) is not None:
        for i, r in enumerate(read_json(qfile)):
            try:
                value = r["conversations"][0]["value"]
            except (KeyError, IndexError, TypeError):
                raise ValueError(f"{qfile}: record {i} has no conversations[0].value") from None
            llava_prompts[str(r["id"])] = value.replace("<image>", "").strip()
    samples = []
    for pid in test_ids:
        p = problems.get(str(pid))
        if p is None:
            raise ValueError(f"{splits_path}: test id {pid!r} is not in {problems_path}")
        if not isinstance(p, dict) or not {"question", "choices", "answer"} <= set(p):
            raise ValueError(f"{problems_path}: problem {pid!r} lacks 'question', 'choices' or 'answer'")
        if not p.get("image"):
            continue
        choices = _check_choices(p["choices"], f"{problems_path}: problem {pid!r}")
        text = llava_prompts.get(str(pid)) or sqa_prompt(p["question"], p.get("hint") or "", choices)
        image = str(base / "images" / "test" / str(pid) / p["image"])
        where = f"{problems_path}: problem {pid!r}"
        ref = {"answer": _answer_index(p["answer"], len(choices), where), "num_choices": len(choices)}
        samples.append(Sample(str(pid), suffixed(text, LETTER_ANSWER), image, ref))
    return samples


def score(samples: list[Sample], predictions: dict[str, str]) -> dict[str, Any]:
    """IMG accuracy: the parsed letter (see :func:`llavakit.eval.choice.extract_scienceqa_letter`) equals
    the answer's letter; an unparsable answer is wrong."""
    pairs = answered(samples, predictions)
    if not pairs:
        raise ValueError("ScienceQA: no predictions to score")
    right = 0
    failed = 0
    for s, p in pairs:
        letter = extract_scienceqa_letter(p, s.ref["num_choices"])
        failed += letter is None
        right += letter == LETTERS[s.ref["answer"]]
    return {"scores": {"accuracy": right / len(pairs)}, "counts": {"questions": len(pairs), "unparsed": failed}}


TASK = Task(
    "scienceqa_img",
    read,
    score,
    "ScienceQA-IMG: multiple-choice accuracy on the test questions with an image",
    "a directory with problems.json, pid_splits.json (+ llava_test_CQM-A.json) and images/test/; or parquet",
)
