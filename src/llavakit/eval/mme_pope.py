"""Yes/no benchmarks: POPE (fractions in [0, 1]) and MME (official points: acc and acc+ in percent)."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any, Literal, TypedDict

__all__ = [
    "BinaryMetrics",
    "pope_answer",
    "pope_metrics",
    "pope_scores",
    "PERCEPTION_SUBTASKS",
    "COGNITION_SUBTASKS",
    "MMESubtaskScore",
    "MMEResult",
    "mme_answer",
    "mme_scores",
]

# ---------------------------------------------------------------- POPE


class BinaryMetrics(TypedDict):
    accuracy: float
    precision: float  # of "yes" (the positive class); 0.0 when nothing was predicted "yes"
    recall: float  # 0.0 when no label is "yes"
    f1: float  # 0.0 when precision + recall is 0
    yes_ratio: float  # fraction of predictions that are "yes"
    tp: int
    fp: int
    tn: int
    fn: int


def pope_answer(text: str) -> Literal["yes", "no"]:
    """LLaVA's POPE rule (``llava/eval/eval_pope.py``): keep the text before the first ``"."``, delete commas,
    split on single spaces; ``"no"`` if a word is exactly ``No``, ``not`` or ``no``, else ``"yes"``.

    The rule is literal and kept so: ``"No, there is not."`` -> ``"no"``; ``"There is no dog."`` -> ``"no"``;
    but ``"NO"``, ``"No!"`` and ``"Not"`` all give ``"yes"`` (no exact word match), as does ``"Yes"``.
    """
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def _yes_no_label(label: str) -> bool:
    value = str(label).strip().lower()
    if value not in ("yes", "no"):
        raise ValueError(f"POPE labels must be 'yes' or 'no', got {label!r}")
    return value == "yes"


def pope_metrics(predictions: Sequence[str], labels: Sequence[str]) -> BinaryMetrics:
    """Accuracy, precision, recall, F1 and yes-ratio with "yes" as the positive class.

    ``predictions`` are raw model answers (parsed with :func:`pope_answer`; plain ``"yes"``/``"no"`` pass
    through unchanged); ``labels`` are ``"yes"``/``"no"``. Example: predictions yes, yes, no, no, yes against
    labels yes, no, no, yes, yes: TP=2, FP=1, TN=1, FN=1, accuracy 3/5, precision 2/3, recall 2/3, F1 2/3,
    yes-ratio 3/5.
    """
    if isinstance(predictions, str) or isinstance(labels, str):
        raise TypeError("POPE: pass sequences of answers and labels, not single strings")
    if len(predictions) != len(labels):
        raise ValueError(f"POPE: {len(predictions)} predictions but {len(labels)} labels")
    if not predictions:
        raise ValueError("POPE: no questions to score")
    tp = fp = tn = fn = 0
    for prediction, label in zip(predictions, labels, strict=True):
        said_yes, is_yes = pope_answer(prediction) == "yes", _yes_no_label(label)
        tp += said_yes and is_yes
        fp += said_yes and not is_yes
        tn += not said_yes and not is_yes
        fn += not said_yes and is_yes
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return BinaryMetrics(
        accuracy=(tp + tn) / len(predictions),
        precision=precision,
        recall=recall,
        f1=2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        yes_ratio=(tp + fp) / len(predictions),
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
    )


def pope_scores(records: Iterable[Mapping[str, Any]]) -> dict[str, BinaryMetrics]:
    """POPE per split and overall. Each record: ``{"prediction", "label", "category"}`` where ``category``
    is the split (``random``, ``popular``, ``adversarial``). Returns ``{split: metrics, ..., "overall":
    metrics}``; ``overall`` pools every record (LLaVA itself prints the splits only)."""
    by_split: dict[str, tuple[list[str], list[str]]] = {}
    all_predictions: list[str] = []
    all_labels: list[str] = []
    for record in records:
        predictions, labels = by_split.setdefault(str(record["category"]), ([], []))
        predictions.append(str(record["prediction"]))
        labels.append(str(record["label"]))
        all_predictions.append(str(record["prediction"]))
        all_labels.append(str(record["label"]))
    result = {split: pope_metrics(p, lab) for split, (p, lab) in sorted(by_split.items())}
    result["overall"] = pope_metrics(all_predictions, all_labels)
    return result


# ---------------------------------------------------------------- MME

PERCEPTION_SUBTASKS: tuple[str, ...] = (
    "existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR",
)  # fmt: skip
COGNITION_SUBTASKS: tuple[str, ...] = (
    "commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning",
)  # fmt: skip


class MMESubtaskScore(TypedDict):
    acc: float  # percent of questions right
    acc_plus: float  # percent of images with both questions right
    score: float  # acc + acc_plus, 0-200


class MMEResult(TypedDict):
    perception: float  # sum of the perception subtask scores present, 0-2000
    cognition: float  # sum of the cognition subtask scores present, 0-800
    subtasks: dict[str, MMESubtaskScore]
    missing: list[str]  # official subtasks without any record (their score is not in the sums)


def mme_answer(text: str) -> Literal["yes", "no", "other"]:
    """The official MME parsing (``eval_tool/calculation.py``): lowercase; ``"yes"``/``"no"`` as is; else
    ``"yes"`` if ``yes`` occurs in the first 4 characters, else ``"no"`` if ``no`` does, else ``"other"``.

    We also strip surrounding whitespace (LLaVA's answers are stripped). Literal consequences:
    ``"Yes, it is"`` -> yes; ``"Not really"`` -> no; ``"There is no cat"`` -> other; ``"know"`` -> no.
    """
    head = text.strip().lower()[:4]  # "yes" and "no" themselves fall under the prefix tests
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def mme_scores(records: Iterable[Mapping[str, Any]]) -> MMEResult:
    """MME scores. Each record: ``{"subtask", "image", "answer", "prediction"}`` with ``answer`` yes/no.

    Per subtask: acc = 100 * right questions / questions; acc+ = 100 * images with both questions right /
    images; score = acc + acc+. Every image must have exactly 2 questions, as in the official data.

    Worked example (one subtask, 3 images, 6 questions): image 1 both right, image 2 one right, image 3 both
    wrong -> acc = 100 * 3/6 = 50, acc+ = 100 * 1/3 = 33.33, score = 83.33.
    """
    known = set(PERCEPTION_SUBTASKS) | set(COGNITION_SUBTASKS)
    images: dict[str, dict[Hashable, list[bool]]] = {}
    for record in records:
        subtask = str(record["subtask"])
        if subtask not in known:
            raise ValueError(
                f"MME: unknown subtask {subtask!r}; the official names are "
                f"{', '.join(PERCEPTION_SUBTASKS + COGNITION_SUBTASKS)}"
            )
        gold = str(record["answer"]).strip().lower()
        if gold not in ("yes", "no"):
            raise ValueError(f"MME: gold answers are 'yes' or 'no', got {record['answer']!r} in {subtask}")
        right = mme_answer(str(record["prediction"])) == gold
        images.setdefault(subtask, {}).setdefault(record["image"], []).append(right)
    if not images:
        raise ValueError("MME: no records to score")

    subtasks: dict[str, MMESubtaskScore] = {}
    for subtask, per_image in images.items():
        for image, rights in per_image.items():
            if len(rights) != 2:
                raise ValueError(
                    f"MME {subtask}: image {image!r} has {len(rights)} questions, expected 2; "
                    "acc+ needs both questions of every image (score complete subtasks only)"
                )
        questions = [right for rights in per_image.values() for right in rights]
        acc = 100 * sum(questions) / len(questions)
        acc_plus = 100 * sum(all(rights) for rights in per_image.values()) / len(per_image)
        subtasks[subtask] = MMESubtaskScore(acc=acc, acc_plus=acc_plus, score=acc + acc_plus)

    ordered = {name: subtasks[name] for name in PERCEPTION_SUBTASKS + COGNITION_SUBTASKS if name in subtasks}
    return MMEResult(
        perception=sum(subtasks[name]["score"] for name in PERCEPTION_SUBTASKS if name in subtasks),
        cognition=sum(subtasks[name]["score"] for name in COGNITION_SUBTASKS if name in subtasks),
        subtasks=ordered,
        missing=[name for name in PERCEPTION_SUBTASKS + COGNITION_SUBTASKS if name not in subtasks],
    )
