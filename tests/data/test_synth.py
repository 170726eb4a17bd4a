"""Synthetic scenes: determinism, answers consistent with scenes, rendering, the LLaVA record format."""

import hashlib
import json
import math
import os
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

import llavakit
from llavakit.data.synth import (
    COLORS,
    EVAL_SEED_BASE,
    KINDS,
    LETTER_ANSWER,
    QTYPES,
    SHORT_ANSWER,
    WORDS,
    Scene,
    caption,
    conversation,
    eval_questions,
    existence_question,
    generate_scene,
    render_scene,
    scene_seed,
    synth_command,
    write_dataset,
)
from llavakit.data.synth_questions import CAPTION_PROMPT, GENERATORS, aspect_label, multiple_choice
from llavakit.data.synth_render import draw_shape
from llavakit.data.synth_scene import (
    BACKGROUNDS,
    EXTENT,
    FONT_BUCKETS,
    TEXT_COLOR,
    TINY_MIN_LONG_SIDE,
    font_bucket,
)

SCENES = [generate_scene(scene_seed(0, i)) for i in range(200)]
SCENE_3_0 = generate_scene(scene_seed(3, 0))  # the first scene of a dataset with seed 3
PLURAL_TO_KIND = {("crosses" if k == "cross" else k + "s"): k for k in KINDS}
EVAL_KEYS = set("id image question answer qtype font_bucket font_px negative width height".split())


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- determinism and seeds ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["caption", "instruct", "eval"])
def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path: Path, kind: str) -> None:
    a = _files(write_dataset(tmp_path / "a", 5, seed=7, kind=kind).parent)
    b = _files(write_dataset(tmp_path / "b", 5, seed=7, kind=kind).parent)
    c = _files(write_dataset(tmp_path / "c", 5, seed=8, kind=kind).parent)
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[name] != c[name] for name in a)


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for name, data in _files(root).items():
        h.update(name.encode() + data)
    return h.hexdigest()


def test_output_does_not_depend_on_python_hash_seed(tmp_path: Path) -> None:
    code = (
        "import sys; from llavakit.data.synth import write_dataset as w; "
        "[w(sys.argv[1], 6, 3, k) for k in ('caption', 'instruct', 'eval')]"
    )
    src = str(Path(llavakit.__file__).parents[1])
    digests = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": src}
        out = tmp_path / hash_seed
        subprocess.run([sys.executable, "-c", code, str(out)], env=env, check=True, timeout=120)
        digests.append(_digest(out))
    for kind in ("caption", "instruct", "eval"):
        write_dataset(tmp_path / "here", 6, 3, kind)  # type: ignore[arg-type]
    assert digests[0] == digests[1] == _digest(tmp_path / "here")


def test_dataset_seeds_never_share_scenes() -> None:
    seeds = [{scene_seed(s, i) for i in range(2000)} for s in (0, 1, EVAL_SEED_BASE)]
    assert all(len(x) == 2000 for x in seeds)
    assert not (seeds[0] & seeds[1]) and not (seeds[0] & seeds[2]) and not (seeds[1] & seeds[2])
    train = set(SCENES)  # Scene equality ignores the seed: this compares content
    assert not any(generate_scene(scene_seed(EVAL_SEED_BASE, i)) in train for i in range(100))


def test_scene_round_trips_through_json() -> None:
    for scene in SCENES[:30]:
        again = Scene.from_dict(json.loads(json.dumps(scene.to_dict())))
        assert again == scene and again.seed == scene.seed


# --- geometry -----------------------------------------------------------------------------------------------


def test_scene_geometry() -> None:
    scenes = SCENES + [generate_scene(scene_seed(1, i)) for i in range(200)]
    ratios = [s.width / s.height for s in scenes]
    assert all(1 / 3 <= r <= 3 for r in ratios)
    assert min(ratios) < 0.34 and max(ratios) > 2.95 and any(0.9 < r < 1.1 for r in ratios)
    for s in scenes:
        assert 336 <= max(s.width, s.height) <= 1008
        assert 1 <= len(s.shapes) <= 8
        assert s.background in BACKGROUNDS
        for a in s.shapes:
            assert a.kind in KINDS and a.color in COLORS and a.size in ("small", "large")
            assert a.radius < a.cx < s.width - a.radius and a.radius < a.cy < s.height - a.radius
            assert a.radius * 336 / max(s.width, s.height) >= 7  # still visible in a 336 px view
        if s.text is not None:
            x0, y0, x1, y1 = s.text.box
            assert 0 <= x0 < x1 <= s.width and 0 <= y0 < y1 <= s.height
            assert s.text.bucket == font_bucket(s.text.font_px)
            assert s.text.value in WORDS or re.fullmatch(r"0|[1-9]\d{0,2}", s.text.value)
    buckets = Counter(s.text.bucket for s in scenes if s.text)
    assert set(buckets) == set(FONT_BUCKETS) and min(buckets.values()) > 30
    assert sum(len({x.kind for x in s.shapes}) < len(s.shapes) for s in scenes) > 50  # repeated kinds
    assert {len(s.shapes) for s in scenes} == set(range(1, 9))


def test_side_bounds_are_respected_and_checked() -> None:
    for i in range(100):
        s = generate_scene(scene_seed(2, i), min_side=200, max_side=400)
        assert 200 <= max(s.width, s.height) <= 400 and 1 / 3 <= s.width / s.height <= 3
    with pytest.raises(ValueError, match="min_side <= max_side"):
        generate_scene(0, min_side=500, max_side=400)
    with pytest.raises(ValueError, match="112 <= min_side"):
        generate_scene(0, min_side=50, max_side=400)


def test_font_sizes_hard_at_336_and_readable_at_full_resolution() -> None:
    heights = [ImageFont.load_default(size=n).getbbox("Hg")[3] for n in (10, 13, 22, 38, 60)]
    assert heights == sorted(heights) and heights[-1] > 4 * heights[0]
    for s in SCENES:
        if s.text is None:
            continue
        at_336 = s.text.font_px * 336 / max(s.width, s.height)
        if s.text.bucket == "tiny":
            assert s.text.font_px >= 10 and max(s.width, s.height) >= TINY_MIN_LONG_SIDE and at_336 <= 6
        if s.text.bucket == "large":
            assert at_336 >= 14


def _shape_mask(scene: Scene, index: int) -> np.ndarray:
    img = Image.new("RGB", (scene.width, scene.height), (0, 0, 0))
    draw_shape(ImageDraw.Draw(img), scene.shapes[index])
    return np.asarray(img).any(axis=-1)  # (H, W); every named colour is nonzero


def test_shapes_do_not_overlap_stay_in_their_extent_and_are_large_enough() -> None:
    for scene in SCENES[:40]:
        total = np.zeros((scene.height, scene.width), dtype=int)
        ys, xs = np.mgrid[: scene.height, : scene.width]
        for i, s in enumerate(scene.shapes):
            mask = _shape_mask(scene, i)
            assert mask.sum() >= s.radius**2  # the thinnest kind (triangle) covers ~1.17 r^2
            reach = np.hypot(xs[mask] - s.cx, ys[mask] - s.cy).max()
            assert reach <= EXTENT * s.radius + 2  # + rasterisation
            total += mask
        assert total.max() == 1, scene.seed
        if scene.text is not None:
            x0, y0, x1, y1 = scene.text.box
            assert total[y0:y1, x0:x1].sum() == 0


def test_colours_are_distinct_from_backgrounds_and_each_other() -> None:
    assert min(math.dist(c, b) for c in COLORS.values() for b in BACKGROUNDS) > 100
    rgb = list(COLORS.values())
    assert min(math.dist(a, b) for i, a in enumerate(rgb) for b in rgb[i + 1 :]) > 60
    assert len(COLORS) >= 8


# --- rendering ----------------------------------------------------------------------------------------------


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


# --- questions ----------------------------------------------------------------------------------------------


def _check(scene: Scene, question: str, answer: str, qtype: str) -> None:
    """Re-derive the answer of ``question`` from the scene alone."""
    shapes = scene.shapes
    body, suffix = question.rsplit("\n", 1)
    if qtype == "mc":
        assert suffix == LETTER_ANSWER
        first, *options = body.split("\n")
        assert [o[:3] for o in options] == ["A. ", "B. ", "C. ", "D. "]
        options = [o[3:] for o in options]
        assert len(set(options)) == 4
        chosen = options["ABCD".index(answer)]
        if first == "Which shape is in the image?":
            assert [o in {x.kind for x in shapes} for o in options].count(True) == 1
            assert chosen in {x.kind for x in shapes}
        else:
            kind = re.fullmatch(r"What color is the (\w+)\?", first).group(1)
            (target,) = [x for x in shapes if x.kind == kind]
            assert chosen == target.color
        return
    assert suffix == SHORT_ANSWER
    position = r"Is the (?:(\w+) )?(\w+) (?:on|in) the (left or the right|top or the bottom) .*\?"
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
    elif m := re.fullmatch(position, body):
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
                    _check(scene, qa.question, qa.answer, qa.qtype)
                    seen[qtype] += 1
    assert set(seen) == set(QTYPES) and min(seen.values()) > 100


def test_yes_no_balance_and_pope_style_negatives() -> None:
    rng = random.Random(0)
    pairs = [(s, existence_question(s, rng)) for s in SCENES for _ in range(2)]
    assert 0.4 <= sum(qa.answer == "yes" for _, qa in pairs) / len(pairs) <= 0.6
    negatives = Counter()
    for scene, qa in pairs:
        m = re.match(r"Is there an? (?:(\w+) )?(\w+) in", qa.question)
        color, kind = m.groups()
        hard = any(x.kind == kind or x.color == color for x in scene.shapes)
        assert qa.negative == (None if qa.answer == "yes" else "adversarial" if hard else "random")
        negatives[qa.negative] += 1
    assert negatives["adversarial"] > 0.5 * (negatives["adversarial"] + negatives["random"])
    assert negatives["random"] > 10
    # over an instruct dataset (existence questions mixed into conversations) and an eval set
    turns = [t for i in range(600) for t in conversation(SCENES[i % 200], random.Random(i))]
    answers = [t["value"] for t in turns if t["value"] in ("yes", "no")]
    assert len(answers) > 150 and 0.4 <= answers.count("yes") / len(answers) <= 0.6
    evals = [qa.answer for s in SCENES[:50] for qa in eval_questions(s, rng) if qa.qtype == "existence"]
    assert evals.count("yes") == evals.count("no") == 50


def test_mc_letters_are_uniform_and_bad_options_rejected() -> None:
    rng = random.Random(1)
    letters = Counter(qa.answer for s in SCENES for _ in range(3) if (qa := GENERATORS["mc"](s, rng)))
    total = sum(letters.values())
    assert set(letters) == set("ABCD") and all(0.18 < n / total < 0.32 for n in letters.values())
    with pytest.raises(ValueError, match="distinct distractors"):
        multiple_choice("Which?", "red", ["red", "blue", "green"], rng)


def test_caption_names_the_aspect_every_shape_and_the_text() -> None:
    sizes = [(1000, 500), (336, 1008), (500, 500), (700, 520)]
    assert [aspect_label(w, h) for w, h in sizes] == ["2:1", "1:3", "1:1", "4:3"]
    for scene in SCENES[:50]:
        text = caption(scene)
        assert text.startswith(f"A {aspect_label(scene.width, scene.height)} image with ")
        assert text.endswith(".")
        for x in scene.shapes:
            assert f"{x.size} {x.color} {x.kind}" in text  # plurals contain the kind
        if scene.text is not None:
            assert f"'{scene.text.value}' written in {scene.text.bucket} text" in text


def test_conversations_never_repeat_a_question() -> None:
    for i, scene in enumerate(SCENES):
        turns = conversation(scene, random.Random(i), max_turns=4)
        firsts = [t["value"].removeprefix("<image>\n").split("\n")[0] for t in turns[::2]]
        assert 1 <= len(firsts) <= 4 and len(set(firsts)) == len(firsts)


def test_repeats_ask_one_type_about_several_objects() -> None:
    colors = []
    for i, scene in enumerate(SCENES):
        once = conversation(scene, random.Random(i), max_turns=7)
        assert conversation(scene, random.Random(i), max_turns=7, repeats=1) == once  # the default, same draws
        turns = conversation(scene, random.Random(i), max_turns=14, repeats=3)
        firsts = [t["value"].removeprefix("<image>\n").split("\n")[0] for t in turns[::2]]
        assert len(set(firsts)) == len(firsts) <= 14
        colors.append(sum(f.startswith("What color is the") for f in firsts))
    assert max(colors) >= 2  # two colour questions about two different shapes of one image
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        conversation(SCENES[0], random.Random(0), repeats=0)


def _fact(question: str, answer: str) -> tuple[str, str] | None:
    """The (colour, kind) pair a colour, shape or "Is there a red star" question rests on, parsed from its text."""
    if m := re.match(r"What color is the (\w+)\?\nAnswer the question", question):
        return answer, m.group(1)
    if m := re.match(r"What shape is the (\w+) object\?", question):
        return m.group(1), answer
    if m := re.match(r"Is there an? (\w+) (\w+) in the image", question):
        return m.group(1), m.group(2)
    return None


def test_no_answer_can_be_read_from_an_earlier_turn() -> None:
    # "What shape is the red object? star" then "What color is the star?" would teach reading the conversation
    # instead of the image; a caption names everything, so it is asked alone
    captions = skipped_before = 0
    for i, scene in enumerate(SCENES):
        turns = conversation(scene, random.Random(i), max_turns=14, repeats=3)
        questions = [t["value"].removeprefix("<image>\n") for t in turns[::2]]
        answers = [t["value"] for t in turns[1::2]]
        if CAPTION_PROMPT in questions:
            captions += 1
            assert len(questions) == 1
        revealed: set[tuple[str, str]] = set()
        for q, a in zip(questions, answers, strict=True):
            fact = _fact(q, a)
            assert fact is None or fact not in revealed, (i, q, a, revealed)
            if fact is not None and a != "no":
                revealed.add(fact)
        skipped_before += len(revealed)
    assert captions > 10 and skipped_before > 100  # both kinds of turn still occur


# --- files --------------------------------------------------------------------------------------------------


def test_instruct_skips_scenes_without_an_askable_question(tmp_path: Path) -> None:
    # scene 19 of seed 3 at these sizes holds two brown squares: no unique kind or colour, so no colour or shape
    # question; it gets no record (an empty conversation would stop the trainer) and its image stays on disk
    sides = {"min_side": 112, "max_side": 224, "max_shapes": 4}
    scene = generate_scene(scene_seed(3, 19), 0.6, **sides)
    assert [(s.kind, s.color) for s in scene.shapes] == [("square", "brown")] * 2
    path = write_dataset(tmp_path, 21, 3, "instruct", **sides, qtypes=("color", "shape"), max_turns=8, repeats=4)
    records = json.loads(path.read_text())
    assert [r["id"] for r in records] == [f"s3_{i:06d}" for i in range(21) if i != 19]
    assert all(r["conversations"] for r in records)
    assert (tmp_path / "images" / "000019.png").is_file()


def test_llava_record_format(tmp_path: Path) -> None:
    out = tmp_path / "d"
    instruct = json.loads(write_dataset(out, 8, seed=3, kind="instruct").read_text())
    captions = json.loads(write_dataset(out, 8, seed=3, kind="caption").read_text())
    evals = [json.loads(line) for line in write_dataset(out, 8, seed=3, kind="eval").read_text().splitlines()]
    for rec in instruct + captions:
        assert set(rec) == {"id", "image", "conversations"} and (out / rec["image"]).is_file()
        turns = rec["conversations"]
        assert 2 <= len(turns) <= 8 and len(turns) % 2 == 0
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert turns[0]["value"].startswith("<image>\n")
        assert sum("<image>" in t["value"] for t in turns) == 1
        assert all(t["value"].strip() for t in turns)
    assert [r["image"] for r in instruct] == [f"images/{i:06d}.png" for i in range(8)]
    assert [r["id"] for r in instruct] == [f"s3_{i:06d}" for i in range(8)]
    assert Image.open(out / "images/000000.png").size == (SCENE_3_0.width, SCENE_3_0.height)
    assert len({r["id"] for r in evals}) == len(evals)
    assert {r["qtype"] for r in evals} >= {"existence", "count", "color"}
    for rec in evals:
        assert set(rec) == EVAL_KEYS
        assert rec["qtype"] in QTYPES and "<image>" not in rec["question"]
        reading = rec["qtype"] == "reading"
        assert (rec["font_bucket"] in FONT_BUCKETS) == reading == (rec["font_px"] is not None)
        assert (rec["negative"] is not None) == (rec["qtype"] == "existence" and rec["answer"] == "no")
    lines = (out / "scenes.jsonl").read_text().splitlines()
    scenes = [json.loads(line) for line in lines]
    assert [s["image"] for s in scenes] == [f"images/{i:06d}.png" for i in range(8)]
    assert Scene.from_dict(scenes[0]["scene"]) == SCENE_3_0


def test_synth_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert synth_command(str(tmp_path), 2, 0, "caption") == 0
    assert "wrote 2 caption" in capsys.readouterr().out
    assert (tmp_path / "captions.json").is_file() and (tmp_path / "images" / "000001.png").is_file()
    assert synth_command(str(tmp_path), 2, 0, "bogus") == 2
    assert "unknown dataset kind 'bogus'" in capsys.readouterr().err
    assert synth_command(str(tmp_path), -1, 0) == 2
    with pytest.raises(ValueError, match="unknown dataset kind"):
        write_dataset(tmp_path, 1, 0, kind="bogus")  # type: ignore[arg-type]


def test_max_shapes_caps_scenes_and_the_default_keeps_the_old_scenes() -> None:
    """A curriculum's easy scenes hold at most ``max_shapes`` shapes; the default (8) draws exactly as before."""
    from llavakit.data.synth_scene import MAX_SHAPES

    for seed in range(40):
        assert len(generate_scene(seed, min_side=112, max_side=224, max_shapes=2).shapes) <= 2
        assert generate_scene(seed, max_shapes=MAX_SHAPES) == generate_scene(seed)
    assert max(len(generate_scene(s, max_shapes=3).shapes) for s in range(60)) == 3


def test_synth_command_sides_bound_the_images(tmp_path: Path) -> None:
    assert synth_command(str(tmp_path), 3, 0, "eval", (112, 160)) == 0
    for line in (tmp_path / "eval.jsonl").read_text().splitlines():
        r = json.loads(line)
        assert 112 <= max(r["width"], r["height"]) <= 160
    assert synth_command(str(tmp_path), 1, 0, "eval", (100, 90)) == 2  # bad bounds: a message, not a traceback


@pytest.mark.parametrize("sides", [(100, 200), (300, 200), (336, 60000)])
def test_bad_sides_are_refused_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sides: tuple[int, int]
) -> None:
    """Bounds below 112, the wrong way round or above 4096 px (a 60000 px scene exhausts memory) are one line on
    stderr naming --sides, and no empty images/ directory is left behind."""
    out = tmp_path / "data"
    assert synth_command(str(out), 2, 0, "caption", sides) == 2
    err = capsys.readouterr()
    assert "--sides MIN MAX" in err.err and not err.out
    assert not out.exists()


def test_eval_synth_generates_scenes_of_the_models_training_sizes(tmp_path: Path) -> None:
    """Without --sides, `llava eval synth` renders scenes of the long sides recorded in the model's training.json."""
    from llavakit.data.synth import trained_sides
    from llavakit.eval.command import synth_data

    model = tmp_path / "model"
    model.mkdir()
    assert trained_sides(model) is None
    (model / "training.json").write_text(json.dumps({"scene_long_side": [112, 224]}))
    assert trained_sides(model) == (112, 224)
    data = synth_data(tmp_path / "out", 4, 1_000_000, trained_sides(model))
    sizes = [json.loads(x) for x in (data / "eval.jsonl").read_text().splitlines()]
    assert sizes and all(112 <= max(r["width"], r["height"]) <= 224 for r in sizes)


def test_eval_synth_data_killed_mid_write_is_written_again_whole(tmp_path: Path, monkeypatch) -> None:
    """A run killed after eval.jsonl but before scenes.jsonl must not leave a set the next run takes as whole."""
    from llavakit.eval.command import synth_data

    real_write_text = Path.write_text

    def killed(self: Path, *args, **kwargs):  # noqa: ANN202
        if self.name == "scenes.jsonl":
            raise KeyboardInterrupt
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", killed)
    with pytest.raises(KeyboardInterrupt):
        synth_data(tmp_path / "out", 3, 1_000_000)
    monkeypatch.setattr(Path, "write_text", real_write_text)
    data = synth_data(tmp_path / "out", 3, 1_000_000)
    fresh = write_dataset(tmp_path / "fresh", 3, 1_000_000, kind="eval")
    assert (data / "scenes.jsonl").read_text() == (fresh.parent / "scenes.jsonl").read_text()
    assert (data / "eval.jsonl").read_text() == fresh.read_text()


def test_qtypes_restrict_the_questions_of_a_warm_up_set(tmp_path: Path) -> None:
    """A curriculum's warm-up asks only the named question types, one per image, and no caption requests."""
    path = write_dataset(tmp_path, 30, 3, "instruct", max_turns=1, max_shapes=1, qtypes=("color", "shape"))
    records = json.loads(path.read_text())
    assert len(records) == 30
    questions = [r["conversations"][0]["value"].split("\n")[1] for r in records]
    assert all(len(r["conversations"]) == 2 for r in records)
    assert all(q.startswith(("What color is the", "What shape is the")) for q in questions)
    assert {q.split()[1] for q in questions} == {"color", "shape"}
    with pytest.raises(ValueError, match="unknown question types"):
        write_dataset(tmp_path, 1, 3, "instruct", qtypes=("colour",))


def test_eval_synth_names_a_bad_training_json(tmp_path):
    """``llava eval synth`` without --sides reads the model's training.json: one that cannot say is one line
    naming it (a traceback before)."""
    from llavakit.data.synth import trained_sides

    model = tmp_path / "m"
    model.mkdir()
    bad = [("[1]", "AttributeError"), ("{bad", "JSONDecodeError"), ('{"scene_long_side": [5, 10]}', "5, 10")]
    for text, word in bad:
        (model / "training.json").write_text(text)
        with pytest.raises(ValueError, match=f"training.json: cannot read scene_long_side .*{word}"):
            trained_sides(model)
    (model / "training.json").write_text('{"scene_long_side": [112, 224]}')
    assert trained_sides(model) == (112, 224)
    (model / "training.json").write_text("{}")
    assert trained_sides(model) is None


def test_a_directory_of_other_scenes_is_refused(tmp_path: Path) -> None:
    """Every annotation file of a directory shares its images: writing other scenes there (another seed, sides,
    a late scene that differs, or fewer of them) beside another kind's file is refused before anything is
    written; the same scenes asked another way, or more of them, are not, nor is replacing a directory's only file."""
    write_dataset(tmp_path, 40, 0, "caption")

    def files() -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    before = files()
    for kwargs, match in [
        ({"n": 40, "seed": 1_000_000, "kind": "eval"}, "scene 0 differs"),
        ({"n": 40, "seed": 0, "kind": "instruct", "min_side": 150, "max_side": 200}, "scene 0 differs"),
        ({"n": 40, "seed": 0, "kind": "instruct", "max_shapes": 1}, "scene 0 differs"),
        ({"n": 20, "seed": 0, "kind": "eval"}, "holds captions.json over 40 scenes; writing 20"),
    ]:
        with pytest.raises(ValueError, match=match):
            write_dataset(tmp_path, **kwargs)
        assert files() == before
    scenes = (tmp_path / "scenes.jsonl").read_text().splitlines()
    late = json.loads(scenes[30])
    late["scene"]["shapes"][0]["cx"] += 1  # a dataset that differs only late on
    (tmp_path / "scenes.jsonl").write_text("\n".join([*scenes[:30], json.dumps(late), *scenes[31:]]) + "\n")
    with pytest.raises(ValueError, match="scene 30 differs"):
        write_dataset(tmp_path, 40, 0, "eval")
    (tmp_path / "scenes.jsonl").write_text("\n".join(scenes) + "\n")
    write_dataset(tmp_path, 40, 0, "eval")  # the same scenes asked another way
    write_dataset(tmp_path, 50, 0, "instruct")  # and ten more of them
    assert len((tmp_path / "scenes.jsonl").read_text().splitlines()) == 50
    alone = tmp_path / "alone"
    write_dataset(alone, 10, 0, "instruct")
    write_dataset(alone, 5, 1, "instruct")  # its only file, replaced
    assert json.loads((alone / "instruct.json").read_text())[0]["id"] == "s1_000000"
    for bad in ("color", ()):
        with pytest.raises(ValueError, match="non-empty tuple of question types"):
            write_dataset(tmp_path / "q", 1, 0, "instruct", qtypes=bad)
