"""Evaluation metrics of the LLaVA benchmarks, as pure functions.

Scale: every score is a fraction in [0, 1] (print ``100 * x`` for the usual percentages), except MME, which is
reported on its own official points scale (per subtask 0-200; perception 0-2000, cognition 0-800).

| benchmark                | per question                                | aggregate                         |
|--------------------------|---------------------------------------------|-----------------------------------|
| VQAv2 / TextVQA / VizWiz | ``vqa_accuracy``, ``vqa_accuracy_official``, ``vizwiz_accuracy`` | ``vqa_score`` |
| POPE                     | ``pope_answer``                             | ``pope_metrics``, ``pope_scores`` |
| MMBench                  | ``extract_option_letter``                   | ``mmbench_circular_accuracy``     |
| ScienceQA-IMG            | ``extract_scienceqa_letter``                | ``scienceqa_accuracy``            |
| GQA                      | ``gqa_normalize``                           | ``gqa_accuracy``                  |
| ChartQA                  | ``relaxed_correctness``                     | ``relaxed_accuracy``              |
| DocVQA / InfoVQA         | ``anls_score``                              | ``anls``                          |
| MME                      | ``mme_answer``                              | ``mme_scores``                    |

Aggregates take predictions and references either as two dicts keyed by question id (the key sets must be
equal) or as two sequences of the same length.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Literal, TypeVar

from llavakit.eval.choice import (
    MMBenchResult,
    extract_option_letter,
    extract_scienceqa_letter,
    mmbench_circular_accuracy,
    scienceqa_accuracy,
)
from llavakit.eval.mme_pope import (
    COGNITION_SUBTASKS,
    PERCEPTION_SUBTASKS,
    BinaryMetrics,
    MMEResult,
    MMESubtaskScore,
    mme_answer,
    mme_scores,
    pope_answer,
    pope_metrics,
    pope_scores,
)
from llavakit.eval.vqa_normalize import evalai_answer_processor, normalize_vqa_answer, process_punctuation

__all__ = [
    # VQAv2 / TextVQA / VizWiz
    "normalize_vqa_answer",
    "evalai_answer_processor",
    "vqa_accuracy",
    "vqa_accuracy_official",
    "vizwiz_accuracy",
    "vqa_score",
    # POPE
    "BinaryMetrics",
    "pope_answer",
    "pope_metrics",
    "pope_scores",
    # MMBench, ScienceQA
    "MMBenchResult",
    "extract_option_letter",
    "mmbench_circular_accuracy",
    "extract_scienceqa_letter",
    "scienceqa_accuracy",
    # GQA, ChartQA, DocVQA / InfoVQA
    "gqa_normalize",
    "gqa_accuracy",
    "relaxed_correctness",
    "relaxed_accuracy",
    "levenshtein",
    "anls_score",
    "anls",
    # MME
    "PERCEPTION_SUBTASKS",
    "COGNITION_SUBTASKS",
    "MMESubtaskScore",
    "MMEResult",
    "mme_answer",
    "mme_scores",
]

R = TypeVar("R")


def _pairs(
    predictions: Mapping[Hashable, str] | Sequence[str],
    references: Mapping[Hashable, R] | Sequence[R],
    benchmark: str,
) -> list[tuple[str, R]]:
    """Line predictions up with references (dicts by key, sequences by position); refuse any mismatch."""
    if isinstance(predictions, Mapping) and isinstance(references, Mapping):
        missing = [key for key in references if key not in predictions]
        extra = [key for key in predictions if key not in references]
        if missing or extra:
            raise ValueError(
                f"{benchmark}: {len(missing)} questions have no prediction (e.g. {missing[:3]}) and "
                f"{len(extra)} predictions have no reference (e.g. {extra[:3]}); score matching question ids"
            )
        pairs = [(predictions[key], references[key]) for key in references]
    elif isinstance(predictions, Mapping) or isinstance(references, Mapping):
        raise TypeError(f"{benchmark}: pass predictions and references both as dicts or both as sequences")
    elif isinstance(predictions, str) or isinstance(references, str):
        raise TypeError(f"{benchmark}: predictions and references must be sequences, not one string")
    else:
        if len(predictions) != len(references):
            raise ValueError(
                f"{benchmark}: {len(predictions)} predictions but {len(references)} references; "
                "they must line up one to one"
            )
        pairs = list(zip(predictions, references, strict=True))
    if not pairs:
        raise ValueError(f"{benchmark}: no questions to score")
    return pairs


# ---------------------------------------------------------------- VQAv2 / TextVQA / VizWiz


def _leave_one_out(prediction: str, answers: Sequence[str]) -> float:
    """Mean over the n leave-one-out subsets of the human answers of min(1, matches / 3).

    With 10 answers of which k equal the prediction: removing one of the k leaves k - 1 matches (k subsets),
    removing another leaves k (10 - k subsets). So k = 1: (1*0 + 9*(1/3)) / 10 = 0.3;
    k = 2: (2*(1/3) + 8*(2/3)) / 10 = 0.6; k = 3: (3*(2/3) + 7*1) / 10 = 0.9; k >= 4: 1.0.
    """
    if len(answers) < 2:
        raise ValueError(f"VQA accuracy needs a question's human answers (10 in VQA), got {len(answers)}")
    matches = sum(answer == prediction for answer in answers)
    subset_scores = [min(1.0, (matches - (answer == prediction)) / 3) for answer in answers]
    return sum(subset_scores) / len(subset_scores)


def vqa_accuracy(prediction: str, gt_answers: Sequence[str]) -> float:
    """VQA accuracy as LLaVA computes it for TextVQA (``TextVQAAccuracyEvaluator`` in ``m4c_evaluator.py``).

    Prediction and every human answer go through :func:`evalai_answer_processor`, then the leave-one-out
    average of min(1, matches / 3) is taken (see :func:`_leave_one_out` for the arithmetic).

    >>> vqa_accuracy("Two.", ["2", "2", "two", "3", "3", "3", "3", "3", "3", "3"])
    0.9
    """
    answers = [evalai_answer_processor(answer) for answer in gt_answers]
    return _leave_one_out(evalai_answer_processor(prediction), answers)


def vqa_accuracy_official(prediction: str, gt_answers: Sequence[str]) -> float:
    """VQA accuracy exactly as the official VQAv2 evaluation computes it (``VQAEval.evaluate`` in GT-Vision-Lab's
    ``vqaEval.py``, which the EvalAI server runs).

    The prediction always gets newlines/tabs turned into spaces, its ends stripped and the full
    :func:`normalize_vqa_answer` (punctuation, then number words / articles / contractions). The human answers
    only get the punctuation step, and only when they are not all identical; their articles and number words
    stay as written. So "A dog" matches a human "dog", not a human "a dog":

    >>> vqa_accuracy_official("Yes.", ["yes"] * 10)
    1.0
    >>> vqa_accuracy_official("A dog", ["a dog"] * 5 + ["dog"] + ["cat"] * 4)  # one human "dog" -> 0.3
    0.3
    """
    if len(set(gt_answers)) > 1:
        gt_answers = [process_punctuation(answer) for answer in gt_answers]
    return _leave_one_out(normalize_vqa_answer(prediction), list(gt_answers))


def vizwiz_accuracy(prediction: str, gt_answers: Sequence[str]) -> float:
    """VizWiz-VQA accuracy as its official evaluation (``VQAEval.evaluate`` of the VizWiz API) computes it: the
    prediction normalised as in :func:`vqa_accuracy_official`, the human answers compared as they are stored.

    >>> vizwiz_accuracy("Unanswerable.", ["unanswerable"] * 10)
    1.0
    >>> vizwiz_accuracy("A can of soup.", ["a can of soup"] * 5 + ["soup"] * 5)  # "can of soup": no human wrote it
    0.0
    """
    return _leave_one_out(normalize_vqa_answer(prediction), list(gt_answers))


def vqa_score(
    predictions: Mapping[Hashable, str] | Sequence[str],
    references: Mapping[Hashable, Sequence[str]] | Sequence[Sequence[str]],
    *,
    protocol: Literal["textvqa", "vqav2", "vizwiz"] = "textvqa",
) -> float:
    """Mean VQA accuracy over questions; ``references`` holds the human answers of each question.

    ``protocol="textvqa"``: :func:`vqa_accuracy` (LLaVA's TextVQA evaluation).
    ``protocol="vqav2"`` / ``"vizwiz"``: LLaVA's submission path: the prediction is passed through
    :func:`evalai_answer_processor` (``convert_vqav2_for_submission.py`` / ``convert_vizwiz_for_submission.py``),
    then scored as the benchmark's server does (:func:`vqa_accuracy_official` / :func:`vizwiz_accuracy`).
    """
    pairs = _pairs(predictions, references, "VQA")
    scorers = {"textvqa": vqa_accuracy, "vqav2": vqa_accuracy_official, "vizwiz": vizwiz_accuracy}
    if protocol not in scorers:
        raise ValueError(f"unknown VQA protocol {protocol!r}; use 'textvqa', 'vqav2' or 'vizwiz'")
    if protocol == "textvqa":
        scores = [vqa_accuracy(prediction, answers) for prediction, answers in pairs]
    else:
        scores = [scorers[protocol](evalai_answer_processor(p), answers) for p, answers in pairs]
    return sum(scores) / len(scores)


# ---------------------------------------------------------------- GQA


def gqa_normalize(answer: str) -> str:
    """LLaVA's GQA post-processing (``scripts/convert_gqa_for_eval.py``): drop trailing periods, lowercase.

    Surrounding whitespace is stripped first (LLaVA's outputs are already stripped); a space before the final
    period stays, as in LLaVA (``"yes ."`` -> ``"yes "``, which the exact match fails). The official GQA script
    then compares this string with the gold answer exactly. ``"Yes."`` -> ``"yes"``; ``"left one"`` stays.
    """
    return answer.strip().rstrip(".").lower()


def gqa_accuracy(
    predictions: Mapping[Hashable, str] | Sequence[str], references: Mapping[Hashable, str] | Sequence[str]
) -> float:
    """GQA accuracy: exact match after :func:`gqa_normalize` (applied to the gold answers as well, which is a
    no-op on the official lowercase, period-free GQA answers)."""
    pairs = _pairs(predictions, references, "GQA")
    return sum(gqa_normalize(p) == gqa_normalize(gold) for p, gold in pairs) / len(pairs)


# ---------------------------------------------------------------- ChartQA


def _to_float(text: str) -> float | None:
    """pix2struct's number parsing: Python ``float``; a trailing ``%`` means /100 (``"5%"`` -> 0.05)."""
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0
        return float(text)
    except ValueError:
        return None


def relaxed_correctness(prediction: str, target: str, *, max_relative_change: float = 0.05) -> bool:
    """ChartQA relaxed correctness (pix2struct ``metrics.relaxed_correctness``; note our argument order).

    If both parse as numbers and the target is not 0: right when |prediction - target| / |target| is at most
    ``max_relative_change``. Otherwise (text, or a target of 0): case-insensitive exact string match, so
    ``"0.0"`` is wrong against ``"0"``. Percentages are divided by 100 on either side, so ``"5%"`` matches
    ``"0.05"`` but not ``"5"``. No stripping (as in lmms-eval): ``"yes "`` is not ``"yes"``.

    Example: target 100 -> 95 and 105 are right, 94.9 is wrong (5.1% off).
    """
    prediction_value, target_value = _to_float(prediction), _to_float(target)
    if prediction_value is not None and target_value:
        return abs(prediction_value - target_value) / abs(target_value) <= max_relative_change
    return prediction.lower() == target.lower()


def relaxed_accuracy(
    predictions: Mapping[Hashable, str] | Sequence[str],
    references: Mapping[Hashable, str | Sequence[str]] | Sequence[str | Sequence[str]],
    *,
    max_relative_change: float = 0.05,
) -> float:
    """Mean relaxed correctness; a reference may be one target or several (right if any target accepts)."""
    scores = []
    for prediction, reference in _pairs(predictions, references, "ChartQA"):
        targets = [reference] if isinstance(reference, str) else list(reference)
        if not targets:
            raise ValueError("ChartQA: a question has no target answer")
        scores.append(any(relaxed_correctness(prediction, t, max_relative_change=max_relative_change) for t in targets))
    return sum(scores) / len(scores)


# ---------------------------------------------------------------- DocVQA / InfoVQA


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions, each cost 1). ``levenshtein("kitten", "sitting")``
    is 3."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))  # distances from a[:0] to every prefix of b
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def _anls_normalize(text: str) -> str:
    return " ".join(text.strip().lower().split())


def anls_score(prediction: str, gt_answers: Sequence[str], *, threshold: float = 0.5) -> float:
    """ANLS of one question, as the DocVQA / InfographicVQA evaluation (and lmms-eval) compute it.

    For each gold answer: NL = levenshtein(normalised gold, normalised prediction) / max(len(gold),
    len(prediction)), where normalising lowercases, strips and collapses runs of spaces, but the lengths are
    those of the *raw* strings (an official quirk; two empty strings give NL = 0). The question scores
    1 - min NL, set to 0 when below ``threshold`` (so 1 - NL = 0.5 exactly is kept).

    Example: gold ``"denver broncos"`` (14 chars), prediction ``"denver bronco"``: distance 1, NL = 1/14,
    score 1 - 1/14 ~ 0.929. Gold ``"abcd"``, prediction ``"abxy"``: NL = 2/4, score 0.5 (kept).
    """
    if isinstance(gt_answers, str) or not gt_answers:
        raise ValueError("ANLS: give a non-empty list of gold answers for each question")
    predicted = _anls_normalize(prediction)
    distances = []
    for answer in gt_answers:
        length = max(len(answer.upper()), len(prediction.upper()))
        distances.append(levenshtein(_anls_normalize(answer), predicted) / length if length else 0.0)
    score = 1.0 - min(distances)
    return score if score >= threshold else 0.0


def anls(
    predictions: Mapping[Hashable, str] | Sequence[str],
    references: Mapping[Hashable, Sequence[str]] | Sequence[Sequence[str]],
    *,
    threshold: float = 0.5,
) -> float:
    """Average normalised Levenshtein similarity (DocVQA, InfoVQA): the mean of :func:`anls_score`."""
    pairs = _pairs(predictions, references, "ANLS")
    return sum(anls_score(p, answers, threshold=threshold) for p, answers in pairs) / len(pairs)
