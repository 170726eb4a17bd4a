"""POPE and MME metrics against the official definitions, with hand-computed expectations."""

import pytest

from llavakit.eval.metrics import (
    COGNITION_SUBTASKS,
    PERCEPTION_SUBTASKS,
    mme_answer,
    mme_scores,
    pope_answer,
    pope_metrics,
    pope_scores,
)

# ---------------------------------------------------------------- POPE


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Yes, there is a dog in the image.", "yes"),
        ("No, there is no dog.", "no"),
        ("There is not a dog", "no"),
        ("No.", "no"),
        ("no", "no"),
        ("Yes. But there is no cat.", "yes"),  # only the first sentence counts
        ("I don't know", "yes"),  # "don't" is not "not"
        ("No!", "yes"),  # literal word match: "No!" is not "No"
        ("NO", "yes"),
        ("yes", "yes"),
    ],
)
def test_pope_answer(text, expected):
    assert pope_answer(text) == expected


def test_pope_metrics_hand_counted():
    # pred:  yes yes no  no  yes   (raw texts below parse to these)
    # label: yes no  no  yes yes
    # TP = 2 (items 1, 5), FP = 1 (item 2), TN = 1 (item 3), FN = 1 (item 4)
    predictions = ["Yes, there is.", "yes", "No, there is not.", "There is no dog.", "Yes"]
    labels = ["yes", "no", "no", "yes", "yes"]
    result = pope_metrics(predictions, labels)
    assert (result["tp"], result["fp"], result["tn"], result["fn"]) == (2, 1, 1, 1)
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert result["precision"] == pytest.approx(2 / 3)  # 2 / (2 + 1)
    assert result["recall"] == pytest.approx(2 / 3)  # 2 / (2 + 1)
    assert result["f1"] == pytest.approx(2 / 3)  # 2PR / (P + R) with P = R
    assert result["yes_ratio"] == pytest.approx(3 / 5)


def test_pope_metrics_asymmetric_and_degenerate():
    # pred yes yes yes no; label yes no no no -> TP 1, FP 2, TN 1, FN 0
    result = pope_metrics(["yes", "yes", "yes", "no"], ["yes", "no", "no", "no"])
    assert result["precision"] == pytest.approx(1 / 3)
    assert result["recall"] == 1.0
    assert result["f1"] == pytest.approx(2 * (1 / 3) * 1 / (1 / 3 + 1))  # = 0.5
    assert result["f1"] == pytest.approx(0.5)
    assert result["yes_ratio"] == 0.75
    # Never "yes": precision and F1 are defined as 0 instead of dividing by zero.
    never = pope_metrics(["no", "no"], ["yes", "no"])
    assert (never["precision"], never["recall"], never["f1"], never["accuracy"]) == (0.0, 0.0, 0.0, 0.5)
    with pytest.raises(ValueError, match="'yes' or 'no'"):
        pope_metrics(["yes"], ["maybe"])
    with pytest.raises(ValueError):
        pope_metrics(["yes"], ["yes", "no"])


def test_pope_scores_per_split_and_overall():
    records = [
        {"category": "random", "prediction": "Yes", "label": "yes"},
        {"category": "random", "prediction": "No", "label": "no"},
        {"category": "popular", "prediction": "Yes", "label": "no"},
        {"category": "popular", "prediction": "No", "label": "no"},
        {"category": "adversarial", "prediction": "Yes", "label": "no"},
        {"category": "adversarial", "prediction": "Yes", "label": "yes"},
    ]
    result = pope_scores(records)
    assert set(result) == {"random", "popular", "adversarial", "overall"}
    assert result["random"]["accuracy"] == 1.0
    assert result["popular"]["accuracy"] == 0.5
    assert result["popular"]["yes_ratio"] == 0.5
    assert result["adversarial"]["precision"] == 0.5
    # Overall pools all 6: TP 2, FP 2, TN 2, FN 0.
    overall = result["overall"]
    assert (overall["tp"], overall["fp"], overall["tn"], overall["fn"]) == (2, 2, 2, 0)
    assert overall["accuracy"] == pytest.approx(4 / 6)


# ---------------------------------------------------------------- MME


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Yes", "yes"),
        ("No.", "no"),
        ("yes, there is a dog", "yes"),
        ("Not really", "no"),
        ("nope", "no"),
        (" yes", "yes"),
        ("There is a dog", "other"),
        ("There is no dog", "other"),  # "no" is beyond the first 4 characters
        ("know", "no"),  # literal official rule
        ("", "other"),
    ],
)
def test_mme_answer(text, expected):
    assert mme_answer(text) == expected


def _mme_image(subtask, image, first_right, second_right):
    # The first question's answer is "yes", the second's "no" (as in MME); each prediction right or wrong.
    return [
        {"subtask": subtask, "image": image, "answer": "Yes", "prediction": "Yes" if first_right else "No"},
        {"subtask": subtask, "image": image, "answer": "No", "prediction": "No" if second_right else "Maybe"},
    ]


def test_mme_acc_plus_hand_computed():
    records = (
        _mme_image("existence", "1.jpg", True, True)  # both right
        + _mme_image("existence", "2.jpg", True, False)  # one right ("Maybe" parses to "other")
        + _mme_image("existence", "3.jpg", False, False)  # none right
        + _mme_image("code_reasoning", "c.png", True, True)
    )
    result = mme_scores(records)
    existence = result["subtasks"]["existence"]
    assert existence["acc"] == pytest.approx(100 * 3 / 6)  # 3 of 6 questions
    assert existence["acc_plus"] == pytest.approx(100 * 1 / 3)  # 1 of 3 images
    assert existence["score"] == pytest.approx(50 + 100 / 3)  # 83.33
    assert result["subtasks"]["code_reasoning"]["score"] == 200.0
    assert result["perception"] == pytest.approx(50 + 100 / 3)
    assert result["cognition"] == 200.0
    assert "count" in result["missing"] and "existence" not in result["missing"]


def test_mme_perfect_scores_reach_the_maxima():
    records = []
    for subtask in PERCEPTION_SUBTASKS + COGNITION_SUBTASKS:
        records += _mme_image(subtask, "a", True, True) + _mme_image(subtask, "b", True, True)
    result = mme_scores(records)
    assert result["perception"] == 2000.0
    assert result["cognition"] == 800.0
    assert result["missing"] == []
    assert list(result["subtasks"]) == list(PERCEPTION_SUBTASKS + COGNITION_SUBTASKS)


def test_mme_refuses_bad_input():
    with pytest.raises(ValueError, match="expected 2"):
        mme_scores(_mme_image("color", "x", True, True)[:1])
    with pytest.raises(ValueError, match="unknown subtask"):
        mme_scores(_mme_image("colour", "x", True, True))
    with pytest.raises(ValueError, match="'yes' or 'no'"):
        mme_scores([{"subtask": "OCR", "image": "i", "answer": "maybe", "prediction": "yes"}] * 2)
