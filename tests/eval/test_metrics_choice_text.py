"""Multiple-choice (MMBench, ScienceQA), GQA, ChartQA and ANLS metrics against the official definitions, with
hand-computed expectations."""

import pytest

from llavakit.eval.metrics import (
    anls,
    anls_score,
    extract_option_letter,
    extract_scienceqa_letter,
    gqa_accuracy,
    gqa_normalize,
    levenshtein,
    mmbench_circular_accuracy,
    relaxed_accuracy,
    relaxed_correctness,
    scienceqa_accuracy,
)

# ---------------------------------------------------------------- MMBench

OPTIONS = {"A": "dog", "B": "cat", "C": "bird", "D": "fish"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("B", "B"),
        ("b", None),  # letters are case-sensitive in VLMEvalKit's can_infer_option
        ("b.", None),  # ... and "b" is no option text either
        ("B.", "B"),
        ("(B)", "B"),
        ("(B) cat", "B"),
        ("B. cat", "B"),
        ("The answer is B", "B"),
        ("The answer is (C).", "C"),
        ("Answer: D", "D"),
        ("cat", "B"),  # the option text itself
        ("It is a cat.", "B"),  # the option text inside the answer
        # VLMEvalKit refuses the article "A" only when its VERBOSE env var is set: by default it is option A
        ("A cat is sitting on the mat", "A"),
        ("Cannot determine the answer", None),  # a refusal: VLMEvalKit's "Z"
        ("B or bird", "B"),  # one letter: the option rule wins before the texts are looked at
        ("A or B. The cat.", "B"),  # two letters: VLMEvalKit falls back to the option texts
        ("Z", None),  # VLMEvalKit's "no answer" letter
        ("A or B", None),  # two letters: ambiguous
        ("a cat or a dog", None),  # two option texts: ambiguous
        ("E", None),  # not an option
        ("The answer is a whale", None),
        ("", None),
    ],
)
def test_extract_option_letter(text, expected):
    assert extract_option_letter(text, OPTIONS) == expected


def test_extract_option_letter_rejects_bad_labels():
    with pytest.raises(ValueError, match="single upper-case letters"):
        extract_option_letter("A", {"a": "dog"})


def test_mmbench_circular_group_with_one_failed_rotation():
    # Question 7: 3 rotations (indices 7, 1000007, 2000007), the second is wrong -> question 7 fails.
    # Question 8: 2 rotations, both right -> passes.  Question 9: 1 rotation, no letter extracted -> fails.
    records = [
        {"index": 7, "prediction": "A", "answer": "A", "category": "ocr"},
        {"index": 1_000_007, "prediction": "A", "answer": "B", "category": "ocr"},
        {"index": 2_000_007, "prediction": "C", "answer": "C", "category": "ocr"},
        {"index": 8, "prediction": "B", "answer": "B", "category": "ocr"},
        {"index": 1_000_008, "prediction": "c", "answer": "C", "category": "ocr"},
        {"index": 9, "prediction": None, "answer": "D", "category": "scene"},
    ]
    result = mmbench_circular_accuracy(records)
    assert result["num_questions"] == 3
    assert result["overall"] == pytest.approx(1 / 3)  # only question 8
    assert result["vanilla"] == pytest.approx(4 / 6)  # 4 of the 6 rotations are right on their own
    assert result["per_category"] == {"ocr": pytest.approx(1 / 2), "scene": 0.0}
    # Without the modulo every rotation is its own question: 4 of 6.
    assert mmbench_circular_accuracy(records, index_modulo=None)["overall"] == pytest.approx(4 / 6)


def test_mmbench_inconsistent_category_is_refused():
    records = [
        {"index": 1, "prediction": "A", "answer": "A", "category": "x"},
        {"index": 1_000_001, "prediction": "A", "answer": "A", "category": "y"},
    ]
    with pytest.raises(ValueError, match="disagree"):
        mmbench_circular_accuracy(records)
    assert mmbench_circular_accuracy(records[:1])["per_category"] == {"x": 1.0}
    assert mmbench_circular_accuracy([{"index": 1, "prediction": "A", "answer": "A"}])["per_category"] == {}


# ---------------------------------------------------------------- ScienceQA


@pytest.mark.parametrize(
    ("text", "num_choices", "expected"),
    [
        ("A", 2, "A"),
        (" C ", 3, None),  # the official check is `pred_text in options`, without stripping
        ("A. The magnet", 2, "A"),
        ("The answer is B.", 2, "B"),
        ("Because of X. The answer is B.", 2, "B"),
        ("The answer is B", 2, None),  # the official regex needs a character after the letter
        ("The answer is A. The answer is B.", 2, None),  # two matches: failed
        ("A\nBecause ...", 2, None),  # "A" then a newline is not "A. "
        ("A.", 2, None),  # LLaVA's rule needs a space after the period
        ("A.B", 2, None),
        ("(A)", 2, None),
        ("the answer is b", 2, None),  # case-sensitive
        ("D", 3, None),  # beyond the question's choices
        ("AB", 3, None),
        ("", 3, None),
    ],
)
def test_extract_scienceqa_letter(text, num_choices, expected):
    assert extract_scienceqa_letter(text, num_choices) == expected


def test_extract_scienceqa_letter_lenient():
    assert extract_scienceqa_letter("A.", 2, lenient=True) == "A"
    assert extract_scienceqa_letter("(B)", 2, lenient=True) == "B"
    assert extract_scienceqa_letter("(C)", 2, lenient=True) is None
    with pytest.raises(ValueError):
        extract_scienceqa_letter("A", 6)


def test_scienceqa_accuracy_on_image_questions():
    records = [
        {"prediction": "A", "answer": 0, "num_choices": 2, "has_image": True},  # right
        {"prediction": "The answer is C.", "answer": "C", "num_choices": 4, "has_image": True},  # right
        {"prediction": "B.", "answer": 1, "num_choices": 2, "has_image": True},  # unparsed -> wrong
        {"prediction": "B", "answer": 0, "num_choices": 2, "has_image": False},  # wrong, text-only
    ]
    assert scienceqa_accuracy(records) == pytest.approx(2 / 3)
    assert scienceqa_accuracy(records, image_only=False) == pytest.approx(2 / 4)
    assert scienceqa_accuracy(records, lenient=True) == 1.0
    with pytest.raises(ValueError, match="no questions"):
        scienceqa_accuracy(records[3:])


# ---------------------------------------------------------------- GQA


def test_gqa():
    assert gqa_normalize(" Yes. ") == "yes"
    assert gqa_normalize("Left...") == "left"
    assert gqa_normalize("St. Louis") == "st. louis"  # only trailing periods go
    assert gqa_normalize(".5") == ".5"
    assert gqa_accuracy(["Yes.", "left side", "Red"], ["yes", "left", "red"]) == pytest.approx(2 / 3)
    assert gqa_accuracy({"q1": "No"}, {"q1": "no"}) == 1.0


def test_gqa_keeps_a_space_left_before_the_stripped_period():
    """LLaVA's convert_gqa_for_eval.py is ``text.rstrip('.').lower()``: a space before the final period stays, and
    the GQA evaluation's exact match then fails it."""
    assert gqa_normalize("yes .") == "yes "
    assert gqa_accuracy(["yes .", "left"], ["yes", "left"]) == 0.5


# ---------------------------------------------------------------- ChartQA


@pytest.mark.parametrize(
    ("prediction", "target", "expected"),
    [
        ("104.9", "100", True),  # 4.9% off
        ("95.1", "100", True),
        ("95", "100", True),  # exactly 5% is still right (<=)
        ("105.1", "100", False),  # 5.1% off
        ("94.9", "100", False),
        ("-100", "-98", True),  # |(-100) - (-98)| / |-98| = 2.04%
        ("0", "0", True),  # target 0: exact string match
        ("0.0", "0", False),
        ("0.001", "0", False),
        ("5%", "0.05", True),  # percentages are /100
        ("5%", "5", False),  # 0.05 vs 5
        ("5", "5%", False),  # 5 vs 0.05
        ("4.8%", "5%", True),  # 0.048 vs 0.05: 4% off
        ("Yes", "yes", True),  # text: case-insensitive exact match
        ("blue", "red", False),
        ("1,000", "1000", False),  # "1,000" is not a Python float: string compare fails
        ("12", "twelve", False),
        (" 12 ", "12", True),
    ],
)
def test_relaxed_correctness(prediction, target, expected):
    assert relaxed_correctness(prediction, target) is expected


def test_relaxed_correctness_divides_by_the_target():
    # |100 - 95| / 95 = 5.26% > 5%, but |95 - 100| / 100 = 5%.
    assert relaxed_correctness("100", "95") is False
    assert relaxed_correctness("95", "100") is True


def test_relaxed_accuracy():
    predictions = ["104", "cat", "7"]
    references = ["100", ["dog", "Cat"], "8"]  # right (4%), right (second target), wrong (12.5%)
    assert relaxed_accuracy(predictions, references) == pytest.approx(2 / 3)


# ---------------------------------------------------------------- ANLS


@pytest.mark.parametrize(
    ("a", "b", "distance"),
    [
        ("kitten", "sitting", 3),
        ("", "abc", 3),
        ("abc", "", 3),
        ("abc", "abc", 0),
        ("flaw", "lawn", 2),
        ("", "", 0),
    ],
)
def test_levenshtein(a, b, distance):
    assert levenshtein(a, b) == distance
    assert levenshtein(b, a) == distance


def test_anls_threshold():
    gold = "a" * 100
    # 49 substitutions in 100 characters: NL = 0.49 < 0.5 -> score 1 - 0.49 = 0.51
    assert anls_score("a" * 51 + "b" * 49, [gold]) == pytest.approx(0.51)
    # 51 substitutions: NL = 0.51 -> 0
    assert anls_score("a" * 49 + "b" * 51, [gold]) == 0.0
    # exactly 0.5 is kept (the official test is `1 - NL < 0.5 -> 0`)
    assert anls_score("a" * 50 + "b" * 50, [gold]) == pytest.approx(0.5)
    assert anls_score("abxy", ["abcd"]) == pytest.approx(0.5)
    assert anls_score("axyz", ["abcd"]) == 0.0  # 1 - 3/4 = 0.25 < 0.5


def test_anls_normalisation_and_best_gold():
    assert anls_score("  Hello   World ", ["hello world"]) == 1.0
    # gold "denver broncos" (14 chars) vs "denver bronco": distance 1 -> 1 - 1/14
    assert anls_score("Denver Bronco", ["Denver R. Broncos", "denver broncos"]) == pytest.approx(1 - 1 / 14)


def test_anls_empty_strings():
    assert anls_score("", [""]) == 1.0  # both empty: NL = 0
    assert anls_score("", ["abc"]) == 0.0  # NL = 3/3
    assert anls_score("abc", [""]) == 0.0
    assert anls_score("   ", [""]) == 1.0  # only whitespace normalises to empty: distance 0


def test_anls_lengths_are_of_the_raw_strings():
    # Official quirk: the distance is taken on normalised strings but divided by the raw lengths.
    # "Denver  Bronco " (15 raw chars) vs "denver broncos" (14): distance 1, NL = 1/15 (not 1/14).
    assert anls_score("Denver  Bronco ", ["denver broncos"]) == pytest.approx(1 - 1 / 15)
    with pytest.raises(ValueError, match="gold answers"):
        anls_score("abc", [])


def test_anls_average():
    # 1.0 (exact) + (1 - 1/4) ("abcd" vs "abce") + 0 ("xyz" vs "abc") over 3 questions
    score = anls(["abc", "abce", "xyz"], [["ABC"], ["abcd"], ["abc"]])
    assert score == pytest.approx((1.0 + 0.75 + 0.0) / 3)
    with pytest.raises(ValueError, match="no questions"):
        anls([], [])
