"""Questions, captions and conversations derived from a `Scene`, always consistent with it.

Each question generator takes (scene, rng) and returns a `QA` or None when the scene cannot support an
unambiguous question of that type (e.g. a colour question needs a shape kind that occurs exactly once).
Sets are never iterated (their order depends on PYTHONHASHSEED); ordered lists keep output deterministic.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable
from typing import Any, NamedTuple

from .synth_scene import COLORS, KINDS, Scene, Shape, Text

SHORT_ANSWER = "Answer the question using a single word or phrase."
LETTER_ANSWER = "Answer with the option's letter from the given choices directly."
CAPTION_PROMPT = "Describe the image briefly."
QTYPES: tuple[str, ...] = ("color", "shape", "count", "position", "existence", "reading", "mc")
PLURALS = {"cross": "crosses"}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")
MAX_COUNT = 5  # per-kind count answers stay in 0..5
# Aspect ratios named in captions (the nearest in log space): "A 2:1 image with ...".
RATIOS: tuple[tuple[int, int], ...] = (
    (3, 1), (5, 2), (2, 1), (3, 2), (4, 3), (1, 1), (3, 4), (2, 3), (1, 2), (2, 5), (1, 3),
)  # fmt: skip


class QA(NamedTuple):
    """One question with its answer; ``negative`` is set on "no" existence questions: "adversarial" when
    the asked kind or colour is in the scene (POPE's hard case), else "random". ``fact`` is the (colour, kind)
    pair the answer rests on ("What color is the star?" -> red: ("red", "star")), None when there is none."""

    question: str
    answer: str
    qtype: str
    negative: str | None = None
    fact: tuple[str, str] | None = None


def _short(question: str, answer: str, qtype: str, fact: tuple[str, str] | None = None) -> QA:
    return QA(f"{question}\n{SHORT_ANSWER}", answer, qtype, fact=fact)


def plural(kind: str) -> str:
    """The plural the questions use: "circles", "crosses"."""
    return PLURALS.get(kind, kind + "s")


def _unique(values: list[str]) -> list[str]:
    """Values occurring exactly once, in order of first appearance."""
    counts = Counter(values)
    return [v for v in values if counts[v] == 1]


def describe(scene: Scene, shape: Shape) -> str | None:
    """Shortest unambiguous phrase for ``shape`` ("the star", "the red star"), or None if there is none."""
    if [s.kind for s in scene.shapes].count(shape.kind) == 1:
        return f"the {shape.kind}"
    if [(s.color, s.kind) for s in scene.shapes].count((shape.color, shape.kind)) == 1:
        return f"the {shape.color} {shape.kind}"
    return None


def color_question(scene: Scene, rng: random.Random) -> QA | None:
    """Asks "What color is the star?" about a kind that occurs exactly once."""
    kinds = _unique([s.kind for s in scene.shapes])
    if not kinds:
        return None
    kind = rng.choice(kinds)
    color = next(s.color for s in scene.shapes if s.kind == kind)
    return _short(f"What color is the {kind}?", color, "color", (color, kind))


def shape_question(scene: Scene, rng: random.Random) -> QA | None:
    """Asks "What shape is the red object?" about a colour that occurs exactly once."""
    colors = _unique([s.color for s in scene.shapes])
    if not colors:
        return None
    color = rng.choice(colors)
    kind = next(s.kind for s in scene.shapes if s.color == color)
    return _short(f"What shape is the {color} object?", kind, "shape", (color, kind))


def count_question(scene: Scene, rng: random.Random) -> QA | None:
    """Asks "How many circles are there?" (answer 0-5 in digits; None above 5) or, a quarter of the time,
    "How many objects are there?"."""
    if rng.random() < 0.25:
        return _short("How many objects are there?", str(len(scene.shapes)), "count")
    present = list(dict.fromkeys(s.kind for s in scene.shapes))
    absent = [k for k in KINDS if k not in present]
    kind = rng.choice(present if rng.random() < 0.8 or not absent else absent)
    n = sum(s.kind == kind for s in scene.shapes)
    return None if n > MAX_COUNT else _short(f"How many {plural(kind)} are there?", str(n), "count")


def side(scene: Scene, shape: Shape, axis: str) -> str | None:
    """Side of ``shape``: left/right (axis "x") or top/bottom (axis "y"); None within 10% of the centre."""
    if axis == "x":
        pos, extent, names = shape.cx, scene.width, ("left", "right")
    else:
        pos, extent, names = shape.cy, scene.height, ("top", "bottom")
    offset = pos - extent / 2
    if abs(offset) <= 0.1 * extent:
        return None
    return names[offset > 0]


def position_question(scene: Scene, rng: random.Random) -> QA | None:
    """Left/right or top/bottom of a shape that has an unambiguous name and is off-centre on that axis."""
    options = []
    for s in scene.shapes:
        phrase = describe(scene, s)
        for axis in ("x", "y"):
            answer = side(scene, s, axis)
            if phrase and answer:
                options.append((phrase, axis, answer))
    if not options:
        return None
    phrase, axis, answer = rng.choice(options)
    if axis == "x":
        return _short(f"Is {phrase} on the left or the right side of the image?", answer, "position")
    return _short(f"Is {phrase} in the top or the bottom part of the image?", answer, "position")


def _negative(scene: Scene, rng: random.Random) -> tuple[str, str | None]:
    """An absent (kind, colour-or-None), POPE-style: mostly adversarial (a present kind in another colour,
    or a present colour on another kind), sometimes random (any absent pair, or an absent kind)."""
    pairs = [(s.kind, s.color) for s in scene.shapes]
    kinds = list(dict.fromkeys(k for k, _ in pairs))
    colors = list(dict.fromkeys(c for _, c in pairs))
    absent_kinds = [k for k in KINDS if k not in kinds]
    strategy = rng.choice(("kind", "kind", "color", "color", "random", "absent_kind"))
    if strategy == "absent_kind" and absent_kinds:
        return rng.choice(absent_kinds), None
    if strategy == "kind":
        kind = rng.choice(kinds)
        choices = [(kind, c) for c in COLORS if (kind, c) not in pairs]
    elif strategy == "color":
        color = rng.choice(colors)
        choices = [(k, color) for k in KINDS if (k, color) not in pairs]
    else:
        choices = []
    if not choices:
        choices = [(k, c) for k in KINDS for c in COLORS if (k, c) not in pairs]
    return rng.choice(choices)


def existence_question(scene: Scene, rng: random.Random, answer: bool | None = None) -> QA:
    """A yes/no existence question ("Is there a green triangle in the image?"), yes with probability 1/2
    unless ``answer`` is given; negatives are mostly POPE-style adversarial (see `_negative`)."""
    if answer is None:
        answer = rng.random() < 0.5
    if answer:
        s = rng.choice(scene.shapes)
        kind, color = s.kind, (s.color if rng.random() < 0.7 else None)
    else:
        kind, color = _negative(scene, rng)
    noun = f"{color} {kind}" if color else kind
    article = "an" if noun[0] in "aeiou" else "a"
    question = f"Is there {article} {noun} in the image?\n{SHORT_ANSWER}"
    fact = (color, kind) if color else None
    if answer:
        return QA(question, "yes", "existence", fact=fact)
    hard = any(s.kind == kind or s.color == color for s in scene.shapes)
    return QA(question, "no", "existence", "adversarial" if hard else "random", fact)


def reading_question(scene: Scene, rng: random.Random) -> QA | None:
    """Asks "What word is written in the image?" ("number" for digits); the answer is the exact text."""
    if scene.text is None:
        return None
    what = "number" if scene.text.is_number else "word"
    return _short(f"What {what} is written in the image?", scene.text.value, "reading")


def multiple_choice(
    question: str, correct: str, distractors: list[str], rng: random.Random, fact: tuple[str, str] | None = None
) -> QA:
    """Lettered options with ``correct`` at a uniformly random position; the answer is its letter."""
    if correct in distractors or len(set(distractors)) != len(distractors) or len(distractors) > 7:
        raise ValueError(f"need up to 7 distinct distractors other than {correct!r}, got {distractors}")
    options = list(distractors)
    at = rng.randrange(len(options) + 1)
    options.insert(at, correct)
    lines = [f"{chr(65 + i)}. {o}" for i, o in enumerate(options)]
    return QA("\n".join([question, *lines, LETTER_ANSWER]), chr(65 + at), "mc", fact=fact)


def mc_question(scene: Scene, rng: random.Random) -> QA | None:
    """Four lettered options, exactly one right: the colour of a unique kind, or the one present kind
    among three absent ones ("Which shape is in the image?")."""
    present = list(dict.fromkeys(s.kind for s in scene.shapes))
    absent = [k for k in KINDS if k not in present]
    unique_kinds = _unique([s.kind for s in scene.shapes])
    if unique_kinds and (rng.random() < 0.5 or len(absent) < 3):
        kind = rng.choice(unique_kinds)
        color = next(s.color for s in scene.shapes if s.kind == kind)
        others = rng.sample([c for c in COLORS if c != color], 3)
        return multiple_choice(f"What color is the {kind}?", color, others, rng, (color, kind))
    if len(absent) < 3:
        return None
    return multiple_choice("Which shape is in the image?", rng.choice(present), rng.sample(absent, 3), rng)


GENERATORS: dict[str, Callable[[Scene, random.Random], QA | None]] = {
    "color": color_question,
    "shape": shape_question,
    "count": count_question,
    "position": position_question,
    "existence": existence_question,
    "reading": reading_question,
    "mc": mc_question,
}


def aspect_label(width: int, height: int) -> str:
    """Nearest simple ratio from `RATIOS`: 1000x500 -> "2:1", 336x1008 -> "1:3"."""
    a, b = min(RATIOS, key=lambda r: abs(math.log(width * r[1] / (height * r[0]))))
    return f"{a}:{b}"


def listing(shapes: list[Shape], text: Text | None) -> str:
    """Shapes left to right, identical ones grouped, then the text: "a large red circle, two small blue stars
    and the word 'apple' written in small text"; "" when there is nothing."""
    order = sorted(shapes, key=lambda s: (s.cx, s.cy))
    groups = Counter((s.size, s.color, s.kind) for s in order)
    parts = []
    for (size, color, kind), n in groups.items():  # Counter keeps first-seen order
        noun = kind if n == 1 else plural(kind)
        parts.append(f"{'a' if n == 1 else NUMBER_WORDS[n]} {size} {color} {noun}")
    if text is not None:
        what = "number" if text.is_number else "word"
        parts.append(f"the {what} '{text.value}' written in {text.bucket} text")
    if not parts:
        return ""
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def caption(scene: Scene) -> str:
    """Deterministic one-sentence caption, shapes left to right, identical ones grouped: "A 2:1 image with
    a large red circle, two small blue stars and the word 'apple' written in small text." """
    return f"A {aspect_label(scene.width, scene.height)} image with {listing(list(scene.shapes), scene.text)}."


def caption_turns(scene: Scene) -> list[dict[str, str]]:
    """The caption request and its answer, LLaVA format: a stage-1 record, or a stage-2 conversation alone."""
    return [{"from": "human", "value": f"<image>\n{CAPTION_PROMPT}"}, {"from": "gpt", "value": caption(scene)}]


def conversation(
    scene: Scene,
    rng: random.Random,
    max_turns: int = 4,
    qtypes: tuple[str, ...] | None = None,
    repeats: int = 1,
) -> list[dict[str, str]]:
    """1..max_turns question/answer turns, or a caption request alone, LLaVA format, with ``<image>\\n`` at the
    start of the first human turn only; up to ``repeats`` questions of each type (e.g. the colours of two
    different shapes: the same image asked twice, each answer tied to its own object). ``qtypes`` restricts the
    question types (no caption request then); None: all of `QTYPES`, captions included.

    No answer can be read from an earlier turn, so every answer needs the image: no question is asked twice
    (a multiple choice "What color is the star?" after the short-answer one would give its answer away), none
    rests on a (colour, kind) pair an earlier answer revealed ("What shape is the red object? star" and then
    "What color is the star?" or "Is there a red star?" is skipped), and a caption, which names everything,
    is asked alone."""
    if qtypes is None and rng.random() < 0.15:
        return caption_turns(scene)
    qas: list[QA] = []
    revealed: list[tuple[str, str]] = []
    want = rng.randint(1, max_turns)
    kinds = QTYPES if qtypes is None else tuple(qtypes)
    if unknown := set(kinds) - set(QTYPES):
        raise ValueError(f"unknown question types {sorted(unknown)}; choose from {', '.join(QTYPES)}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for qtype in [t for _ in range(repeats) for t in rng.sample(kinds, len(kinds))]:
        if len(qas) >= want:
            break
        qa = GENERATORS[qtype](scene, rng)
        asked = [q.question.split("\n", 1)[0] for q in qas]
        if qa is None or qa.question.split("\n", 1)[0] in asked or (qa.fact is not None and qa.fact in revealed):
            continue
        qas.append(qa)
        if qa.fact is not None and qa.answer != "no":
            revealed.append(qa.fact)
    turns: list[dict[str, str]] = []
    for i, qa in enumerate(qas):
        turns.append({"from": "human", "value": ("<image>\n" if i == 0 else "") + qa.question})
        turns.append({"from": "gpt", "value": qa.answer})
    return turns


def eval_questions(scene: Scene, rng: random.Random) -> list[QA]:
    """One question of every type the scene supports, and two existence questions (one yes, one no),
    so the yes-ratio of an eval set is exactly 0.5."""
    out: list[QA] = []
    for qtype in QTYPES:
        if qtype == "existence":
            out += [existence_question(scene, rng, answer=True), existence_question(scene, rng, answer=False)]
        elif (qa := GENERATORS[qtype](scene, rng)) is not None:
            out.append(qa)
    return out


def eval_record(scene: Scene, qa: QA, record_id: str, image: str) -> dict[str, Any]:
    """Held-out record: ``font_bucket``/``font_px`` are set on reading questions, ``negative`` on "no"
    existence questions ("adversarial" or "random", for POPE-style breakdowns); otherwise null."""
    text = scene.text if qa.qtype == "reading" else None
    return {
        "id": record_id,
        "image": image,
        "question": qa.question,
        "answer": qa.answer,
        "qtype": qa.qtype,
        "font_bucket": text.bucket if text else None,
        "font_px": text.font_px if text else None,
        "negative": qa.negative,
        "width": scene.width,
        "height": scene.height,
    }
