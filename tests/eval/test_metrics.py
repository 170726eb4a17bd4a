"""Benchmark metrics against the official definitions, with hand-computed expectations."""

import doctest
import itertools

import pytest

from llavakit.eval import choice, metrics, mme_pope, vqa_normalize
from llavakit.eval.metrics import (
    COGNITION_SUBTASKS,
    PERCEPTION_SUBTASKS,
    anls,
    anls_score,
    evalai_answer_processor,
    extract_option_letter,
    extract_scienceqa_letter,
    gqa_accuracy,
    gqa_normalize,
    levenshtein,
    mmbench_circular_accuracy,
    mme_answer,
    mme_scores,
    normalize_vqa_answer,
    pope_answer,
    pope_metrics,
    pope_scores,
    relaxed_accuracy,
    relaxed_correctness,
    scienceqa_accuracy,
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
