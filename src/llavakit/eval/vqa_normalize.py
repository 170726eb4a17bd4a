"""Answer normalisation of the VQA family (VQAv2, TextVQA, VizWiz).

Two normalisers exist in the reference pipeline and both are reproduced here:

* :func:`normalize_vqa_answer`: the official VQA evaluation (GT-Vision-Lab ``vqaEval.py``, also run by the
  EvalAI servers of VQAv2 and VizWiz) applies it to the prediction: punctuation, then number words, articles
  and contractions. The human answers get :func:`process_punctuation` alone (VQAv2, when they disagree) or
  nothing (VizWiz): see ``metrics.vqa_accuracy_official`` / ``vizwiz_accuracy``.
* :func:`evalai_answer_processor`: LLaVA's ``EvalAIAnswerProcessor`` (from MMF, found in
  ``llava/eval/m4c_evaluator.py``). It lowercases, deletes every ``,`` and ``?``, splits ``'s`` off its
  word, then runs the same two steps. LLaVA applies it to its predictions before a VQAv2/VizWiz submission
  and to both sides in its TextVQA eval.

Rules of the official code that look like bugs are kept on purpose, since scores must match:

* The period rule is meant as "a period not between digits" but the official regex has no look-behind
  (it is written ``(?!<=\\d)``), so it deletes every period *not followed by* a digit: ``"3.5"`` and ``"x.5"``
  keep theirs, ``"5."`` and ``"u.s."`` lose them. The official call also passes ``re.UNICODE`` (= 32) in the
  ``count`` position, so at most 32 periods are removed.
* A punctuation mark is deleted (rather than turned into a space) when it touches a space somewhere in the
  answer, or when the answer contains a digit-comma-digit group anywhere (then *every* mark is deleted).
* ``none`` maps to ``0`` like the number words. The four capitalised keys of the official contraction table
  (``Im``, ``Ive``, ``Id've``, ``I'dve``) can never match after lowercasing and are left out.
"""

from __future__ import annotations

import re

__all__ = [
    "CONTRACTIONS",
    "NUMBER_WORDS",
    "ARTICLES",
    "PUNCTUATION",
    "normalize_vqa_answer",
    "evalai_answer_processor",
]

# The official contraction table (keys: as typed without apostrophes), minus the dead keys named above.
CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've",
    "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't",
    "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're", "theres": "there's",
    "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll",
    "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've",
    "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll",
    "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip

# The official "manual map": number words zero..ten to digits, and "none" to "0".
NUMBER_WORDS: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip

ARTICLES: frozenset[str] = frozenset({"a", "an", "the"})

# The official punctuation list, in its order. Not in it: the period (own rule), ' : * # $ % & ~ ^ |.
PUNCTUATION: tuple[str, ...] = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!",
)  # fmt: skip

_PERIOD = re.compile(r"\.(?!\d)")  # what the official "(?!<=\d)(\.)(?!\d)" actually matches
_PERIOD_LIMIT = 32  # the official call passes re.UNICODE (= 32) as the `count` argument of re.sub
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")


def process_punctuation(text: str) -> str:
    """The official ``processPunctuation``: marks become "" or " ", then periods not before a digit go.

    Example: ``"well-known"`` -> ``"well known"`` (the "-" touches no space) but ``"red - blue"`` ->
    ``"red  blue"`` (it does); ``"1,000 cars!"`` -> ``"1000 cars"`` (a digit-comma-digit deletes every mark).
    """
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        # The official test looks at the input text, not at the partly processed one.
        if delete_all or (mark + " ") in text or (" " + mark) in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD.sub("", out, count=_PERIOD_LIMIT)


def _process_digit_article(text: str) -> str:
    """The official ``processDigitArticle``: lowercase, split on whitespace, number words -> digits,
    drop articles, expand contractions, join with single spaces. ``"The Two dogs"`` -> ``"2 dogs"``."""
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def normalize_vqa_answer(answer: str) -> str:
    """Normalise an answer like the official VQA evaluation (``vqaEval.py``).

    Newlines and tabs become spaces, the ends are stripped, then punctuation and number words / articles /
    contractions are processed (see the module docstring for the exact rules).

    >>> normalize_vqa_answer("Two dogs.")
    '2 dogs'
    >>> normalize_vqa_answer("The dog's ball")  # the apostrophe is not in the punctuation list
    "dog's ball"
    >>> normalize_vqa_answer("1,000")
    '1000'
    """
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    return _process_digit_article(process_punctuation(text))


def evalai_answer_processor(answer: str) -> str:
    """LLaVA's answer post-processing for VQAv2 / VizWiz submissions and TextVQA (``EvalAIAnswerProcessor``).

    Lowercase; delete every ``,`` and ``?``; ``'s`` -> `` 's``; then the official steps as in
    :func:`normalize_vqa_answer`. Because commas are deleted first, ``"1,000"`` becomes ``"1000"`` here
    too, and the digit-comma-digit rule never fires.

    >>> evalai_answer_processor("The poster shows a 10% discount.")
    'poster shows 10% discount'
    >>> evalai_answer_processor("The man's hat?")
    "man 's hat"
    """
    text = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _process_digit_article(process_punctuation(text))
