"""Multiple-choice metrics: MMBench (option letters, circular evaluation) and ScienceQA-IMG.

Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterable, Mapping
from typing import Any, TypedDict

__all__ = [
    "MMBenchResult",
    "extract_option_letter",
    "mmbench_circular_accuracy",
    "extract_scienceqa_letter",
    "scienceqa_accuracy",
]


class MMBenchResult(TypedDict):
    overall: float  # circular accuracy: a question counts only if every rotation is right
    vanilla: float  # plain accuracy over all rotations (each record counted on its own)
    num_questions: int  # number of circular groups (original questions)
    per_category: dict[str, float]  # circular accuracy per category; empty when records carry no category


_LABEL_MARKS = ".()[],:;!*#{}"  # marks that may surround an option label: replaced by spaces before splitting
# Refusals VLMEvalKit maps to its "no answer" option Z.
_REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)


def extract_option_letter(text: str, options: Mapping[str, str]) -> str | None:
    """Which option of ``options`` (letter -> option text) a free-text answer picks, or ``None``.

    VLMEvalKit's ``can_infer`` (its "exact matching" policy for MMBench, i.e. without the ChatGPT judge):

    1. a refusal phrase (e.g. ``"Cannot determine the answer"``) picks nothing;
    2. ``can_infer_option``: after turning ``.()[],:;!*#{}`` into spaces and splitting on whitespace, if
       exactly one option letter stands alone as a word, that letter (case-sensitive: ``"b"`` is no letter);
       if none does but a lone ``"Z"`` does, nothing (VLMEvalKit's "no answer" letter);
    3. ``can_infer_text`` (also when several letters stand alone): if exactly one option text occurs in the
       lowercased answer, its letter.

    Quirk kept: VLMEvalKit only refuses a lone ``"A"`` in answers of more than 3 words (the article) when its
    ``VERBOSE`` environment variable is set, so by default ``"A cat is on the mat"`` picks option A.
    These are the rules of ``vlmeval/utils/matching_util.py`` as long used for MMBench; some 2025 revisions
    add a word-position condition to rule 2 and a length cap to rule 3, which are not reproduced here.

    >>> opts = {"A": "dog", "B": "black cat", "C": "bird"}
    >>> [extract_option_letter(t, opts) for t in ["B.", "(B) black cat", "The answer is B", "I see a black cat."]]
    ['B', 'B', 'B', 'B']
    >>> [extract_option_letter(t, opts) for t in ["b", "A or B", "a dog or a bird"]]
    [None, None, None]
    """
    for letter in options:
        if len(letter) != 1 or not "A" <= letter <= "Z":
            raise ValueError(f"option labels must be single upper-case letters, got {letter!r}")
    if any(refusal in text for refusal in _REFUSALS):
        return None
    spaced = text
    for mark in _LABEL_MARKS:
        spaced = spaced.replace(mark, " ")
    words = spaced.split()
    found = [letter for letter in options if letter in words]
    if len(found) == 1:
        return found[0]
    if not found and "Z" in words:  # VLMEvalKit's explicit "no answer" letter: no fallback to the texts
        return None
    lowered = text.lower()
    contained = [letter for letter, option in options.items() if str(option).lower() in lowered]
    return contained[0] if len(contained) == 1 else None


def mmbench_circular_accuracy(
    records: Iterable[Mapping[str, Any]], *, index_modulo: int | None = 1_000_000
) -> MMBenchResult:
    """MMBench circular evaluation: a question is right only if every rotation of its options is right.

    Each record is one rotation: ``{"index", "prediction", "answer"}`` and optionally ``"category"``.
    ``prediction`` is the extracted letter (see :func:`extract_option_letter`) or ``None``; ``answer`` is the
    correct letter *for that rotation*. Records are grouped by ``index``; MMBench numbers the rotations of
    question ``i`` as ``i``, ``i + 1e6``, ``i + 2e6``..., so integer indices are taken modulo ``index_modulo``
    (pass ``None`` when you already give the original index).

    Example: question 7 has 2 rotations, one right and one wrong; question 8 has 1 right rotation:
    circular = 1/2 (only question 8 counts), vanilla = 2/3.
    """
    groups: dict[Hashable, list[bool]] = {}
    categories: dict[Hashable, str | None] = {}
    for record in records:
        index = record["index"]
        if index_modulo is not None and isinstance(index, int):
            index = index % index_modulo
        prediction, answer = record["prediction"], str(record["answer"]).strip().upper()
        right = prediction is not None and str(prediction).strip().upper() == answer
        groups.setdefault(index, []).append(right)
        category = record.get("category")
        if index in categories and categories[index] != category:
            raise ValueError(
                f"MMBench question {index!r}: its rotations disagree on the category "
                f"({categories[index]!r} vs {category!r}); give every rotation the category of the question"
            )
        categories[index] = category
    if not groups:
        raise ValueError("MMBench: no records to score")

    passed = {index: all(rights) for index, rights in groups.items()}
    per_category: dict[str, list[bool]] = {}
    for index, ok in passed.items():
        category = categories[index]
        if category is not None:
            per_category.setdefault(str(category), []).append(ok)
    num_records = sum(len(rights) for rights in groups.values())
    return MMBenchResult(
        overall=sum(passed.values()) / len(passed),
        vanilla=sum(sum(rights) for rights in groups.values()) / num_records,
        num_questions=len(passed),
        per_category={name: sum(oks) / len(oks) for name, oks in sorted(per_category.items())},
    )


# LLaVA's eval_science_qa.py options; ScienceQA questions have at most 5 choices.
_SQA_LETTERS = ("A", "B", "C", "D", "E")
_SQA_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def extract_scienceqa_letter(text: str, num_choices: int, *, lenient: bool = False) -> str | None:
    """LLaVA's ScienceQA answer parsing (``llava/eval/eval_science_qa.py``); ``None`` means a failed parse.

    The answer is: the text itself if it is exactly a letter A-E (no stripping: ``" A"`` fails); else its
    first character if it starts with a letter A-E then ``". "``; else the letter of ``"The answer is X"``
    followed by any character (the official regex is ``The answer is ([A-Z]).``), only when that pattern
    occurs exactly once. A letter beyond the question's ``num_choices`` is a failed parse (the official
    ``get_pred_idx`` returns -1 for it).

    So ``"A."`` and ``"(A)"`` fail, and ``"The answer is B"`` (nothing after the letter) fails too;
    ``lenient=True`` also accepts a letter wrapped in spaces, periods or brackets, which changes scores
    relative to the published ones.

    >>> [extract_scienceqa_letter(text, 3) for text in ["B", "B. cat", "The answer is C.", "B.", "D"]]
    ['B', 'B', 'C', None, None]
    """
    if not 1 <= num_choices <= len(_SQA_LETTERS):
        raise ValueError(f"ScienceQA questions have 1 to 5 choices, got num_choices={num_choices}")
    letter: str | None = None
    if text in _SQA_LETTERS:
        letter = text
    elif len(text) >= 3 and text[0] in _SQA_LETTERS and text[1:3] == ". ":
        letter = text[0]
    elif len(found := _SQA_ANSWER_IS.findall(text)) == 1:
        letter = found[0]
    elif lenient:
        bare = text.strip(" .()[]")
        letter = bare if bare in _SQA_LETTERS else None
    if letter is None or letter not in _SQA_LETTERS[:num_choices]:
        return None
    return letter


def scienceqa_accuracy(
    records: Iterable[Mapping[str, Any]], *, image_only: bool = True, lenient: bool = False
) -> float:
    """ScienceQA accuracy; with ``image_only`` (the default) over the questions with an image (SQA-IMG).

    Each record: ``{"prediction": str, "answer": int | str, "num_choices": int, "has_image": bool}``;
    ``answer`` is the index of the right choice (as in ScienceQA's ``problems.json``) or its letter. A
    prediction that cannot be parsed (see :func:`extract_scienceqa_letter`) is wrong.
    """
    right = total = 0
    for record in records:
        if image_only and not record["has_image"]:
            continue
        answer = record["answer"]
        gold = _SQA_LETTERS[answer] if isinstance(answer, int) else str(answer).strip().upper()
        num_choices = int(record["num_choices"])
        letter = extract_scienceqa_letter(str(record["prediction"]), num_choices, lenient=lenient)
        right += letter == gold
        total += 1
    if total == 0:
        which = "with an image (has_image=True)" if image_only else "at all"
        raise ValueError(f"ScienceQA: no questions {which} to score")
    return right / total
