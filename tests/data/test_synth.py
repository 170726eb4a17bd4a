"""The synthetic scene generator: determinism, answers consistent with scenes, rendering, LLaVA record format."""

import json
import math
import random
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import ImageFont

from llavakit.data.synth import (
    COLORS,
    KINDS,
    QTYPES,
    Scene,
    caption,
    existence_question,
    generate_scene,
    render_scene,
    scene_seed,
    synth_command,
    write_dataset,
)
from llavakit.data.synth_questions import GENERATORS, LETTER_ANSWER, SHORT_ANSWER, eval_questions
from llavakit.data.synth_scene import FONT_BUCKETS, TEXT_COLOR, TINY_MIN_LONG_SIDE, font_bucket

SCENES = [generate_scene(scene_seed(0, i)) for i in range(200)]
PLURAL_TO_KIND = {("crosses" if k == "cross" else k + "s"): k for k in KINDS}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("kind", ["instruct", "eval"])
def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path: Path, kind: str) -> None:
    a = _files(write_dataset(tmp_path / "a", 5, seed=7, kind=kind).parent)
    b = _files(write_dataset(tmp_path / "b", 5, seed=7, kind=kind).parent)
    c = _files(write_dataset(tmp_path / "c", 5, seed=8, kind=kind).parent)
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[name] != c[name] for name in a)


def test_dataset_seeds_never_share_scenes() -> None:
    seeds = [{scene_seed(s, i) for i in range(2000)} for s in range(3)]
    assert all(len(x) == 2000 for x in seeds)
    assert not (seeds[0] & seeds[1]) and not (seeds[1] & seeds[2])


def test_scene_geometry() -> None:
    scenes = SCENES + [generate_scene(scene_seed(1, i)) for i in range(200)]
    ratios = [s.width / s.height for s in scenes]
    assert all(1 / 3 - 0.01 <= r <= 3 + 0.01 for r in ratios)
    assert min(ratios) < 0.4 and max(ratios) > 2.5 and any(0.8 < r < 1.25 for r in ratios)
    for s in scenes:
        assert max(s.width, s.height) <= 1008 and min(s.width, s.height) >= 112
        assert 1 <= len(s.shapes) <= 8
        for i, a in enumerate(s.shapes):
            assert a.radius <= a.cx <= s.width - a.radius and a.radius <= a.cy <= s.height - a.radius
            assert all(math.hypot(a.cx - b.cx, a.cy - b.cy) > a.radius + b.radius for b in s.shapes[i + 1 :])
        if s.text is not None:
            x0, y0, x1, y1 = s.text.box
            assert 0 <= x0 < x1 <= s.width and 0 <= y0 < y1 <= s.height
            assert s.text.bucket == font_bucket(s.text.font_px)
            if s.text.bucket == "tiny":
                assert max(s.width, s.height) >= TINY_MIN_LONG_SIDE
    assert {s.text.bucket for s in scenes if s.text} == set(FONT_BUCKETS)
    assert Counter(len({(x.kind) for x in s.shapes}) < len(s.shapes) for s in scenes)[True] > 50  # repeats exist


def test_bundled_font_scales() -> None:
    heights = [ImageFont.load_default(size=n).getbbox("Hg")[3] for n in (9, 12, 22, 38, 60)]
    assert heights == sorted(heights) and heights[-1] > 4 * heights[0]


def _check(scene: Scene, question: str, answer: str, qtype: str) -> None:
    shapes = scene.shapes
    body, suffix = question.rsplit("\n", 1)
    if qtype == "mc":
        assert suffix == LETTER_ANSWER
        first, *options = body.split("\n")
        assert [o[:3] for o in options] == ["A. ", "B. ", "C. ", "D. "]
        options = [o[3:] for o in options]
        chosen = options["ABCD".index(answer)]
        if first == "Which shape is in the image?":
            assert [o in {x.kind for x in shapes} for o in options].count(True) == 1
            assert chosen in {x.kind for x in shapes}
        else:
            kind = re.fullmatch(r"What color is the (\w+)\?", first).group(1)
            (target,) = [x for x in shapes if x.kind == kind]
            assert chosen == target.color and options.count(chosen) == 1
        return
    assert suffix == SHORT_ANSWER
    if m := re.fullmatch(r"What color is the (\w+)\?", body):
        (target,) = [x for x in shapes if x.kind == m.group(1)]
        assert answer == target.color
    elif m := re.fullmatch(r"What shape is the (\w+) object\?", body):
        (target,) = [x for x in shapes if x.color == m.group(1)]
        assert answer == target.kind
    elif body == "How many objects are there?":
        assert answer == str(len(shapes))
    elif m := re.fullmatch(r"How many (\w+) are there\?", body):
        n = sum(x.kind == PLURAL_TO_KIND[m.group(1)] for x in shapes)
        assert answer == str(n) and 0 <= n <= 5
    elif m := re.fullmatch(r"Is the (?:(\w+) )?(\w+) (?:on|in) the (left or the right|top or the bottom) .*\?", body):
        color, kind, axis = m.groups()
        (target,) = [x for x in shapes if x.kind == kind and color in (None, x.color)]
        pos, extent = (target.cx, scene.width) if axis.startswith("left") else (target.cy, scene.height)
        assert abs(pos - extent / 2) > 0.1 * extent
        expected = ("left", "right") if axis.startswith("left") else ("top", "bottom")
        assert answer == expected[pos > extent / 2]
    elif m := re.fullmatch(r"Is there an? (?:(\w+) )?(\w+) in the image\?", body):
        color, kind = m.groups()
        present = any(x.kind == kind and color in (None, x.color) for x in shapes)
        assert answer == ("yes" if present else "no")
    elif m := re.fullmatch(r"What (word|number) is written in the image\?", body):
        assert scene.text is not None and answer == scene.text.value
        assert (m.group(1) == "number") == answer.isdigit()
    else:
        raise AssertionError(f"unexpected question {body!r}")


def test_answers_are_consistent_with_scenes() -> None:
    seen: Counter[str] = Counter()
    for i, scene in enumerate(SCENES):
        rng = random.Random(i)
        for qtype, make in GENERATORS.items():
            for _ in range(3):
                qa = make(scene, rng)
                if qa is not None:
                    assert qa.qtype == qtype
                    _check(scene, *qa)
                    seen[qtype] += 1
    assert set(seen) == set(QTYPES) and min(seen.values()) > 100


def test_yes_no_balance_and_adversarial_negatives() -> None:
    rng = random.Random(0)
    qas = [existence_question(s, rng) for s in SCENES for _ in range(2)]
    yes = sum(qa.answer == "yes" for qa in qas) / len(qas)
    assert 0.4 <= yes <= 0.6
    adversarial = 0
    for scene, qa in zip([s for s in SCENES for _ in range(2)], qas):
        m = re.match(r"Is there an? (\w+) (\w+) in", qa.question)
        if qa.answer == "no" and m:
            adversarial += m.group(2) in {x.kind for x in scene.shapes} or m.group(1) in {x.color for x in scene.shapes}
    assert adversarial > 0.5 * sum(qa.answer == "no" for qa in qas)
    eval_answers = Counter(qa.answer for s in SCENES[:50] for qa in eval_questions(s, rng) if qa.qtype == "existence")
    assert eval_answers["yes"] == eval_answers["no"] == 50


def test_mc_letters_are_uniform() -> None:
    rng = random.Random(1)
    letters = Counter(qa.answer for s in SCENES for _ in range(3) if (qa := GENERATORS["mc"](s, rng)))
    total = sum(letters.values())
    assert set(letters) == set("ABCD") and all(0.18 < n / total < 0.32 for n in letters.values())


def test_caption_names_every_shape_and_the_text() -> None:
    for scene in SCENES[:50]:
        text = caption(scene)
        assert text[0].isupper() and text.endswith(".")
        for x in scene.shapes:
            assert x.color in text and x.kind in text  # plurals contain the kind
        if scene.text is not None:
            assert f"'{scene.text.value}' in {scene.text.bucket} text" in text


def test_render_shape_colours_at_centres_and_text_ink_in_its_box() -> None:
    with_text = [s for s in SCENES if s.text is not None][:12]
    for scene in with_text + [s for s in SCENES if s.text is None][:4]:
        img = render_scene(scene)
        assert img.size == (scene.width, scene.height) and img.mode == "RGB"
        assert img.getpixel((0, 0)) == scene.background  # shapes and text keep a margin
        for x in scene.shapes:
            assert img.getpixel((x.cx, x.cy)) == COLORS[x.color], (scene.seed, x)
        if scene.text is not None:
            box = np.asarray(img.crop(scene.text.box)).astype(int)  # (h, w, 3)
            ink = (np.abs(box - np.array(TEXT_COLOR)).max(axis=-1) < 60).sum()
            assert ink > 5, (scene.seed, scene.text)
            assert box.max() > 150  # background shows between glyphs


def test_llava_record_format(tmp_path: Path) -> None:
    out = tmp_path / "d"
    instruct = json.loads(write_dataset(out, 8, seed=3, kind="instruct").read_text())
    captions = json.loads(write_dataset(out, 8, seed=3, kind="caption").read_text())
    evals = [json.loads(line) for line in write_dataset(out, 8, seed=3, kind="eval").read_text().splitlines()]
    for rec in instruct + captions:
        assert set(rec) == {"id", "image", "conversations"} and (out / rec["image"]).is_file()
        turns = rec["conversations"]
        assert 2 <= len(turns) <= 10 and len(turns) % 2 == 0
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert turns[0]["value"].startswith("<image>\n")
        assert sum("<image>" in t["value"] for t in turns) == 1
        assert all(t["value"].strip() for t in turns)
    assert [r["image"] for r in instruct] == [f"images/{i:06d}.png" for i in range(8)]
    assert len({r["id"] for r in evals}) == len(evals)
    for rec in evals:
        assert set(rec) == {"id", "image", "question", "answer", "qtype", "font_bucket"}
        assert rec["qtype"] in QTYPES and "<image>" not in rec["question"]
        assert (rec["font_bucket"] in FONT_BUCKETS) == (rec["qtype"] == "reading")
    scenes = [json.loads(line) for line in (out / "scenes.jsonl").read_text().splitlines()]
    assert [s["image"] for s in scenes] == [f"images/{i:06d}.png" for i in range(8)]


def test_synth_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert synth_command(str(tmp_path), 2, 0, "caption") == 0
    assert "wrote 2 caption" in capsys.readouterr().out
    assert (tmp_path / "captions.json").is_file() and (tmp_path / "images" / "000001.png").is_file()
    assert synth_command(str(tmp_path), 2, 0, "bogus") == 2
    with pytest.raises(ValueError, match="unknown dataset kind"):
        write_dataset(tmp_path, 1, 0, kind="bogus")  # type: ignore[arg-type]
