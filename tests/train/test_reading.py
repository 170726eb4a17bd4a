"""llavakit.train.reading: which characters each answer token writes (the module's worked example), where they are
in the scene (checked against rendering), the image tokens there, and the place passes pulling reading answers."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from llavakit.data.synth import write_dataset
from llavakit.data.synth_scene import TEXT_COLOR, Scene, Shape, Text, font
from llavakit.processing.processor import LlavaProcessor
from llavakit.tiny import write_tiny_checkpoint
from llavakit.train.named import token_places
from llavakit.train.place import place_pass
from llavakit.train.reading import answer_spans, box_tokens, glyph_box, read_text


def _scene(value: str = "748", size: int = 40) -> Scene:
    f = font(size)
    x0, y0, x1, y1 = f.getbbox(value)
    box = (60, 30, 60 + x1 - x0, 30 + y1 - y0)
    return Scene(
        300, 120, (255, 255, 255), (Shape("circle", "red", "small", 250, 60, 15),), Text(value, size, "medium", box)
    )


def test_answer_spans_worked_example():
    assert answer_spans([" ", "7", "4", "</s>"], "74") == [(0, 2), (0, 1), (1, 2), None]
    assert answer_spans([" sugar", "</s>"], "sugar") == [(0, 5), None]
    assert answer_spans([" su", "gar", "</s>"], "sugar") == [(0, 2), (2, 5), None]
    assert answer_spans([" 7", "5", "4"], "74") == [(0, 1), None, None]  # a mismatch ends the walk


def test_read_text_only_for_reading_questions():
    scene = _scene()
    assert read_text(scene, "<image>\nWhat number is written in the image?\nAnswer ...") == scene.text
    assert read_text(scene, "What word is written in the image?") == scene.text
    assert read_text(scene, "What color is the circle?") is None
    assert read_text(Scene(100, 100, (0, 0, 0), scene.shapes, None), "What word is written in the image?") is None


def _ink(scene: Scene, value: str) -> np.ndarray:
    """Columns x rows of the ink of ``value`` drawn where ``render_scene`` draws the scene's text (a prefix of it)."""
    t = scene.text
    img = Image.new("L", (scene.width, scene.height), 255)
    f = font(t.font_px)
    bx0, by0, _, _ = f.getbbox(t.value)
    ImageDraw.Draw(img).text((t.box[0] - bx0, t.box[1] - by0), value, font=f, fill=TEXT_COLOR[0])
    return np.asarray(img) < 128


@pytest.mark.parametrize("value", ["748", "30", "piano"])
def test_each_glyph_box_holds_the_ink_its_characters_add(value):
    """Rendering the text's prefixes: the ink character k adds lies in glyph_box(k, k + 1), and the boxes are in
    order within the text's ink box."""
    scene = _scene(value)
    t = scene.text
    boxes = [glyph_box(t, k, k + 1) for k in range(len(value))]
    assert boxes[0][0] == t.box[0] and boxes[-1][2] <= t.box[2]
    assert all(a[2] <= b[0] + 1e-6 for a, b in zip(boxes, boxes[1:]))
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        added = _ink(scene, value[: k + 1]) & ~_ink(scene, value[:k])
        ys, xs = added.nonzero()
        assert len(xs) > 10
        assert xs.min() >= x0 - 1 and xs.max() < x1 + 1 and ys.min() >= y0 and ys.max() < y1, (k, value)


def test_box_tokens_hold_the_tokens_placed_in_the_box(tmp_path):
    proc = LlavaProcessor.from_pretrained(write_tiny_checkpoint(tmp_path / "m", "llava_next"))
    scene = _scene()
    places = token_places(scene.height, scene.width, proc)
    base = proc.geometry.grid**2
    box = glyph_box(scene.text, 0, 3)
    mine = box_tokens(box, scene.width, scene.height, places, base)
    px = (places[:, 0] + 1) / 2 * scene.width
    py = (places[:, 1] + 1) / 2 * scene.height
    inside = (px >= box[0]) & (px < box[2]) & (py >= box[1]) & (py < box[3])
    assert mine[:base].any() and mine[base:].any()
    assert (mine & ~inside).sum() <= 2  # the nearest token of each view may lie outside
    assert torch.equal(mine & inside, inside) and inside.sum() >= 2


def test_the_passes_pull_reading_answers(tmp_path):
    init = write_tiny_checkpoint(tmp_path / "m", "llava_next")
    data = tmp_path / "d"
    write_dataset(data, 12, 3, "instruct", min_side=112, max_side=160, qtypes=("reading",), text_prob=1.0)
    logs: list[str] = []
    place_pass(init, [data], tmp_path / "a", final=False, batch=4, log=logs.append)
    assert "read_mass" in logs[0] and "read_token" not in logs[0]
    assert "count_mass" not in logs[0] and "kind_mass" not in logs[0]
    place_pass(init, [data], tmp_path / "b", final=False, read_head=True, batch=4, log=logs.append)
    assert "read_mass" in logs[-1] and "read_token" in logs[-1]
    a, b = (load_file(p / "model.safetensors") for p in (tmp_path / "a", tmp_path / "b"))
    key = "model.language_model.layers.1.mlp.down_proj.weight"  # the layer whose output the token head reads
    assert not torch.equal(a[key], b[key])


def test_the_glyph_boxes_are_what_the_pass_pulls_towards(tmp_path, monkeypatch):
    """The same pass with every answer token pulled onto the first image token instead ends elsewhere: the glyph
    boxes' tokens are the pull's target."""
    import llavakit.train.place as place

    init = write_tiny_checkpoint(tmp_path / "m", "llava_next")
    data = tmp_path / "d"
    write_dataset(data, 12, 3, "instruct", min_side=112, max_side=160, qtypes=("reading",), text_prob=1.0)
    place_pass(init, [data], tmp_path / "with", final=False, batch=4, log=lambda _: None)

    def first_token(box, width, height, places, base_tokens):  # noqa: ANN001, ANN202
        out = torch.zeros(len(places), dtype=torch.bool)
        out[0] = True
        return out

    monkeypatch.setattr(place, "box_tokens", first_token)
    place_pass(init, [data], tmp_path / "without", final=False, batch=4, log=lambda _: None)
    key = "model.language_model.layers.1.self_attn.k_proj.weight"
    a, b = (load_file(tmp_path / d / "model.safetensors")[key] for d in ("with", "without"))
    assert not torch.allclose(a, b)
