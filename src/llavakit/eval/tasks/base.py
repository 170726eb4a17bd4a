"""What every benchmark reader produces (`Sample`) and what a task is (`Task`): a reader and a scorer.

A reader turns a local copy of a benchmark into samples, each carrying the exact prompt of the LLaVA-1.5
evaluation scripts (question + the task's answer-format suffix) and the reference data its scorer needs.
A scorer is a pure function of the samples and the predicted texts (keyed by sample id).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SHORT_ANSWER = "Answer the question using a single word or phrase."
LETTER_ANSWER = "Answer with the option's letter from the given choices directly."
SINGLE_WORD = "Answer the question with a single word."  # lmms-eval's ChartQA suffix
UNANSWERABLE = "When the provided information is insufficient, respond with 'Unanswerable'."

Image = str | bytes | None  # a file path, encoded image bytes (TSV base64 / parquet), or no image


@dataclass
class Sample:
    """One question: ``id`` is unique in the task; ``group`` ties records scored together (MMBench
    rotations, MME image pairs) so that ``--limit`` never splits them; ``alias`` is the key a task's
    ``key_of`` gives to records of foreign answer files that cannot name ``id`` (MME)."""

    id: str
    prompt: str
    image: Image
    ref: dict[str, Any] = field(default_factory=dict)
    group: str | None = None
    alias: str | None = None  # how LLaVA's own answer files refer to this question, when not by ``id``


# A scorer returns {"scores": {name: fraction in [0, 1]}, "counts": {name: int}} and optionally more keys
# (MME adds "points" on its official 0-2000 / 0-800 scales).
Scorer = Callable[[list[Sample], dict[str, str]], dict[str, Any]]
Reader = Callable[[Path], list[Sample]]


@dataclass(frozen=True)
class Task:
    name: str
    read: Reader
    score: Scorer
    description: str
    data_help: str  # the accepted layouts of --data, shown in errors
    max_new_tokens: int = 128  # LLaVA's model_vqa_loader default
    # The sample id an answer-file record answers, when LLaVA's own files key it differently (TextVQA).
    key_of: Callable[[dict[str, Any]], str] | None = None
    # LLaVA's answer files may name two questions alike (TextVQA: the same image and question text): their n-th
    # record keyed ``k`` then answers the sample ``k#n``, as the reader numbers such repeats (see `numbered`).
    number_repeats: bool = False


def answered(samples: list[Sample], predictions: dict[str, str]) -> list[tuple[Sample, str]]:
    """The samples that have a prediction, with it, in sample order."""
    return [(s, predictions[s.id]) for s in samples if s.id in predictions]


def resolve_image(name: str, dirs: list[Path]) -> str:
    """The first existing ``dir / name`` among ``dirs``; else the path under the first dir (reported missing)."""
    for d in dirs:
        if (d / name).is_file():
            return str(d / name)
    return str(dirs[0] / name)


def suffixed(question: str, *suffixes: str) -> str:
    """``question`` + ``"\\n" + suffix`` for each suffix, as LLaVA's question files are built."""
    return "\n".join([question.strip(), *suffixes])


def numbered(key: str, seen: dict[str, int]) -> str:
    """``key`` the first time it is met, then ``key#2``, ``key#3``, ...: unique ids for questions that their
    benchmark's own key cannot tell apart (``seen`` counts the keys met so far)."""
    seen[key] = seen.get(key, 0) + 1
    return key if seen[key] == 1 else f"{key}#{seen[key]}"
