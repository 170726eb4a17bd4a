"""Benchmark metrics against the official definitions, with hand-computed expectations."""

import doctest
import itertools

import pytest

from llavakit.eval import choice, metrics, mme_pope, vqa_normalize
from llavakit.eval.metrics import (
    evalai_answer_processor,
    normalize_vqa_answer,
    vizwiz_accuracy,
    vqa_accuracy,
    vqa_accuracy_official,
    vqa_score,
)


@pytest.mark.parametrize("module", [vqa_normalize, choice, metrics, mme_pope])
def test_docstring_examples_hold(module):
    result = doctest.testmod(module)
    assert result.failed == 0


# ---------------------------------------------------------------- VQA normalisation


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("well-known", "well known"),  # "-" touches no space: becomes a space
        ("red - blue", "red blue"),  # "-" touches a space: deleted (the double space collapses on split)
        ("red,blue", "red blue"),  # "," inside a word: a space
        ("1,000", "1000"),  # digit-comma-digit: the comma is deleted
        ("1,000 cars!", "1000 cars"),  # ... and then every other mark is deleted too
        ("what?", "what"),
        ("(left)", "left"),
        ("x; y", "x y"),
        ("50%", "50%"),  # % is not in the official list
        ("dog's", "dog's"),  # nor is the apostrophe
        ("3.5", "3.5"),  # period followed by a digit: kept
        ("5.", "5"),  # period at the end: deleted
        ("u.s.", "us"),
        ("x.5", "x.5"),  # quirk: no look-behind, so any period before a digit stays
    ],
)
def test_official_punctuation(raw, expected):
    assert normalize_vqa_answer(raw) == expected


def test_official_period_rule_removes_at_most_32_periods():
    # The official re.sub receives re.UNICODE (32) as its count: 40 periods -> 8 survive.
    assert normalize_vqa_answer("z" + "." * 40) == "z" + "." * 8


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("The cat", "cat"),
        ("an apple", "apple"),
        ("a an the", ""),
        ("theater", "theater"),  # articles are whole words only
        ("Two", "2"),
        ("ten dogs", "10 dogs"),
        ("zero", "0"),
        ("None", "0"),  # the official manual map also sends "none" to 0
        ("eleven", "eleven"),  # only zero..ten
        ("dont", "don't"),
        ("whats up", "what's up"),
        ("Im", "im"),  # the capitalised official keys never match after lowercasing
        ("YES", "yes"),
        ("red\tcar\n", "red car"),
    ],
)
def test_official_digits_articles_contractions(raw, expected):
    assert normalize_vqa_answer(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("The poster shows a 10% discount.", "poster shows 10% discount"),
        ("The man's hat?", "man 's hat"),  # "'s" is split off its word
        ("red,blue", "redblue"),  # commas are deleted before the punctuation step (official: "red blue")
        ("1,000", "1000"),
        ("  Two Dogs\n", "2 dogs"),
        ("Whats that", "what's that"),
    ],
)
def test_evalai_answer_processor(raw, expected):
    assert evalai_answer_processor(raw) == expected


# ---------------------------------------------------------------- VQA accuracy


def _brute_force_vqa(prediction: str, answers: list[str]) -> float:
    """Independent reading of the definition: enumerate the 10-choose-9 subsets of the human answers."""
    subsets = list(itertools.combinations(range(len(answers)), len(answers) - 1))
    return sum(min(1.0, sum(answers[i] == prediction for i in s) / 3) for s in subsets) / len(subsets)


@pytest.mark.parametrize(
    ("agree", "expected"),
    [
        (0, 0.0),
        # 1 agrees: dropping it (1 subset) leaves 0 matches -> 0;
        # dropping another (9 subsets) leaves 1 -> 1/3. (0 + 9/3) / 10 = 0.3
        (1, 0.3),
        # 2 agree: 2 subsets with 1 match (1/3 each), 8 subsets with 2 matches (2/3 each):
        # (2/3 + 16/3) / 10 = 0.6
        (2, 0.6),
        # 3 agree: 3 subsets with 2 matches (2/3 each), 7 subsets with 3 matches (1 each):
        # (2 + 7) / 10 = 0.9
        (3, 0.9),
        # 4 agree: every subset keeps at least 3 matches -> 1 each -> 1.0
        (4, 1.0),
        (10, 1.0),
    ],
)
def test_vqa_leave_one_out_accuracy(agree, expected):
    answers = ["cat"] * agree + ["dog"] * (10 - agree)
    assert vqa_accuracy("cat", answers) == pytest.approx(expected)
    assert vqa_accuracy_official("cat", answers) == pytest.approx(expected)
    assert _brute_force_vqa("cat", answers) == pytest.approx(expected)


def test_vqa_accuracy_normalises_both_sides():
    # "Two." -> "2"; the human "two", "Two" and "2" all normalise to "2": 3 agree -> 0.9.
    answers = ["two", "Two", "2"] + ["3"] * 7
    assert vqa_accuracy("Two.", answers) == pytest.approx(0.9)
    assert vqa_accuracy("four", answers) == 0.0


def test_vqa_official_normalises_the_prediction_and_only_punctuation_of_humans():
    """GT-Vision-Lab ``vqaEval.py``: the prediction always fully normalised; the human answers only through
    processPunctuation, and only when they disagree (their articles and number words stay)."""
    assert vqa_accuracy_official("Yes.", ["yes"] * 10) == 1.0
    assert vqa_accuracy_official("Yes.", ["yes"] * 3 + ["no"] * 7) == pytest.approx(0.9)
    # "A dog" -> "dog": matches the one human "dog", not the five "a dog" (kept as written)
    assert vqa_accuracy_official("A dog", ["a dog"] * 5 + ["dog"] + ["cat"] * 4) == pytest.approx(0.3)
    # "two" -> "2": matches the two human "2", not the five "two"
    assert vqa_accuracy_official("two", ["two"] * 5 + ["2"] * 2 + ["3"] * 3) == pytest.approx(0.6)
    # human punctuation is processed when they disagree: "1,000" -> "1000"; a "!" becomes a space ("dog ")
    assert vqa_accuracy_official("1000", ["1,000"] * 3 + ["5"] * 7) == pytest.approx(0.9)
    assert vqa_accuracy_official("dog", ["dog!"] * 3 + ["cat"] * 7) == 0.0
    assert vqa_score(["Yes."], [["yes"] * 10], protocol="vqav2") == 1.0


def test_vizwiz_compares_the_human_answers_as_stored():
    assert vizwiz_accuracy("Unanswerable.", ["unanswerable"] * 10) == 1.0
    assert vizwiz_accuracy("A can of soup.", ["a can of soup"] * 5 + ["soup"] * 5) == 0.0
    assert vizwiz_accuracy("Two", ["two"] * 4 + ["2"] + ["3"] * 5) == pytest.approx(0.3)
    assert vqa_score(["dog!"], [["dog!"] * 10], protocol="vizwiz") == 0.0  # EvalAI drops the "!", humans keep it
    with pytest.raises(ValueError, match="unknown VQA protocol"):
        vqa_score(["x"], [["x"]], protocol="okvqa")


def test_vqa_protocols_differ_on_possessives():
    # EvalAI turns "man's" into "man 's"; the official normaliser leaves the human "man's" alone.
    answers = ["man's"] * 4 + ["woman's"] * 6
    assert vqa_score(["man's"], [answers], protocol="textvqa") == 1.0
    assert vqa_score(["man's"], [answers], protocol="vqav2") == 0.0


def test_vqa_score_inputs():
    answers = {1: ["cat"] * 10, 2: ["dog"] * 2 + ["cat"] * 8}
    assert vqa_score({1: "cat", 2: "dog"}, answers) == pytest.approx((1.0 + 0.6) / 2)
    assert vqa_score(["cat", "dog"], [answers[1], answers[2]]) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="no prediction"):
        vqa_score({1: "cat"}, answers)
    with pytest.raises(ValueError, match="line up"):
        vqa_score(["cat"], [answers[1], answers[2]])
    with pytest.raises(TypeError):
        vqa_score({1: "cat", 2: "dog"}, [answers[1], answers[2]])
    with pytest.raises(ValueError, match="protocol"):
        vqa_score(["cat"], [answers[1]], protocol="okvqa")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no questions"):
        vqa_score([], [])
    with pytest.raises(ValueError, match="human answers"):
        vqa_accuracy("cat", ["cat"])
