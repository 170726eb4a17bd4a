"""llavakit.train.place: the place targets (checked against the shapes' own tokens), the word and query positions,
and the place passes on a tiny model: they train, save a checkpoint of the same layout, reproduce the scratch
script's passes (scripts/place_pass.py, where they were found) and refuse data they cannot use."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llavakit.data.synth import write_dataset
from llavakit.data.synth_scene import Scene, Shape, generate_scene
from llavakit.processing.anyres import num_image_tokens
from llavakit.processing.processor import LlavaProcessor
from llavakit.tiny import write_tiny_checkpoint
from llavakit.train.attention_pull import kind_positions
from llavakit.train.foreground import scene_token_owners
from llavakit.train.named import attribute_shape, token_places
from llavakit.train.place import by_length, grid_places, place_pass
from script_module import load_script

DEFAULT = Path(__file__).resolve().parents[2] / "src" / "llavakit" / "assets" / "default-model"
needs_default = pytest.mark.skipif(not (DEFAULT / "config.json").exists(), reason="no bundled default model")


@needs_default
def test_token_places_worked_example_and_the_shapes_tokens_lie_around_their_centres():
    proc = LlavaProcessor.from_pretrained(DEFAULT)
    xy = token_places(100, 300, proc)  # the module docstring's example
    assert xy.shape == (num_image_tokens(100, 300, proc.geometry), 2)
    assert torch.allclose(xy[0], torch.tensor([-0.8, -0.8]), atol=0.01)
    assert torch.allclose(xy[24], torch.tensor([0.8, 0.8]), atol=0.01)  # the base view's last token
    ok = ~xy[:, 0].isnan()
    assert int((~ok).sum()) == 5 and xy[ok].abs().max() <= 1  # one newline per row of the tile grid (5 rows)
    checked = 0  # another route to the same places: each shape's tokens (rendered alone) lie around its centre
    for seed in range(6):
        scene = generate_scene(seed, min_side=112, max_side=224)
        owner = scene_token_owners(scene, proc)
        places = token_places(scene.height, scene.width, proc)
        for i, sh in enumerate(scene.shapes):
            mine = places[owner == i]
            if len(mine) >= 4:
                want = torch.tensor([sh.cx / scene.width * 2 - 1, sh.cy / scene.height * 2 - 1])
                assert (mine.mean(0) - want).abs().max() < 0.25, (seed, i)
                checked += 1
    assert checked >= 6


def test_grid_places_and_kind_positions_worked_examples():
    t = grid_places(5)
    assert t.shape == (25, 2) and t[7].tolist() == [0.0, -0.5]  # row 1, column 2
    assert t[0].tolist() == [-1.0, -1.0] and t[24].tolist() == [1.0, 1.0]
    ids = torch.tensor([[7, 9, 5, 9, 3, 4], [7, 8, 5, 9, 3, 4]])
    labels = torch.full((2, 6), -100)
    labels[:, 5] = 4
    assert kind_positions(ids, labels, [9, 6]) == [3, None]
    assert kind_positions(ids, labels, [None, 9]) == [None, 3]


@pytest.fixture(scope="module")
def position_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("place")
    init = write_tiny_checkpoint(root / "m", "llava_next")
    write_dataset(root / "d", 8, 3, "instruct", min_side=112, max_side=160, qtypes=("position",))
    return init, root / "d"


def test_the_passes_train_log_and_keep_the_layout(position_data, tmp_path):
    init, data = position_data
    logs: list[str] = []
    first = place_pass(init, [data], tmp_path / "a", final=False, drop=(1.0, 0.0), batch=4, log=logs.append)
    assert len(first) == 2 and all(loss > 0 for loss in first)
    assert "kind_mass" in logs[0] and "final_mass" not in logs[0]
    place_pass(tmp_path / "a", [data], tmp_path / "b", final=True, batch=4, log=logs.append)
    assert "final_mass" in logs[-1]
    start, a, b = (load_file(p / "model.safetensors") for p in (init, tmp_path / "a", tmp_path / "b"))
    assert start.keys() == a.keys() == b.keys()  # the heads are not saved
    marker = json.loads((tmp_path / "b" / "place.json").read_text())
    assert marker["init"] == str(tmp_path / "a") and marker["final"] is True and len(marker["loss"]) == 2
    key = "model.language_model.layers.1.self_attn.q_proj.weight"
    assert not torch.equal(start[key], a[key]) and not torch.equal(a[key], b[key])


def test_the_passes_reproduce_the_scratch_scripts(position_data, tmp_path):
    """The recipe's passes are scripts/place_pass.py's options of the runs KP2 and KP4 (docs/default-model.md)."""
    init, data = position_data
    script = load_script("place_pass")
    common = ["--data", str(data), "--batch", "4", "--place-weight", "1", "--decoder-place", "1", "--answer-query",
              "kind", "--answer-ground", "1", "--answer-target", "named-all", "--answer-heads", "all",
              "--answer-layers", "1", "--answer-place", "1"]  # fmt: skip
    assert script.main(["--init", str(init), "--out", str(tmp_path / "s1"), *common, "--drop", "1", "0"]) == 0
    place_pass(init, [data], tmp_path / "l1", final=False, drop=(1.0, 0.0), batch=4, log=lambda _: None)
    final = ["--final-place", "1", "--final-ground", "1"]
    assert script.main(["--init", str(tmp_path / "s1"), "--out", str(tmp_path / "s2"), *common, *final]) == 0
    place_pass(tmp_path / "l1", [data], tmp_path / "l2", final=True, batch=4, log=lambda _: None)
    for s, lib in (("s1", "l1"), ("s2", "l2")):
        want, got = load_file(tmp_path / s / "model.safetensors"), load_file(tmp_path / lib / "model.safetensors")
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5, msg=k)
    moved = load_file(init / "model.safetensors")["model.language_model.layers.1.self_attn.q_proj.weight"]
    assert not torch.equal(moved, got["model.language_model.layers.1.self_attn.q_proj.weight"])


def test_the_passes_refuse_data_they_cannot_use(position_data, tmp_path):
    init, data = position_data
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "instruct.json").write_text(json.dumps([]))
    with pytest.raises(FileNotFoundError, match="llava data synth"):
        place_pass(init, [bare], tmp_path / "x", final=False)
    with pytest.raises(ValueError, match="fewer than one batch"):
        place_pass(init, [data], tmp_path / "x", final=False, batch=64)
    other = tmp_path / "existence"  # no question names, counts or reads: the pass's own losses would never train
    write_dataset(other, 8, 3, "instruct", min_side=112, max_side=160, qtypes=("existence",))
    with pytest.raises(ValueError, match="qtypes=\\('position',\\)"):
        place_pass(init, [other], tmp_path / "x", final=False, batch=4)
    assert not (tmp_path / "x").exists()


def test_the_passes_run_on_the_single_resolution_family(tmp_path):
    """The ablation arm (`--family llava`, one padded view, no newlines) goes through the same passes."""
    init = write_tiny_checkpoint(tmp_path / "m", "llava")
    write_dataset(tmp_path / "d", 8, 3, "instruct", min_side=112, max_side=160, qtypes=("position",))
    proc = LlavaProcessor.from_pretrained(init)
    xy = token_places(100, 150, proc)  # one view: the scene padded to a square, 100 rows of 150 in the middle
    assert xy.shape == (num_image_tokens(100, 150, proc.geometry), 2)
    g = proc.geometry.grid
    assert xy[:g].isnan().all() or xy[0, 1] < -0.5  # the top row: padding, or the scene's top
    middle = xy[(g // 2) * g : (g // 2) * g + g]  # the middle row spans the scene's width from left to right
    assert middle[0, 0] < -0.5 and middle[-1, 0] > 0.5 and (middle[1:, 0] > middle[:-1, 0]).all()
    losses = place_pass(init, [tmp_path / "d"], tmp_path / "out", final=True, batch=4, log=lambda _: None)
    assert len(losses) == 2 and (tmp_path / "out" / "model.safetensors").exists()


def test_attribute_shape_names_the_one_shape_a_colour_or_shape_question_asks_about():
    shapes = (
        Shape("circle", "red", "large", 40, 40, 30),
        Shape("star", "blue", "small", 150, 60, 15),
        Shape("circle", "green", "small", 250, 120, 15),
    )
    scene = Scene(width=300, height=160, background=(255, 255, 255), shapes=shapes, text=None)
    assert attribute_shape(scene, "<image>\nWhat color is the star?\nAnswer the question using a single word.") == (
        1,
        "star",
    )
    assert attribute_shape(scene, "What shape is the green object?") == (2, "green")
    assert attribute_shape(scene, "What color is the circle?") is None  # two circles: no one shape
    assert attribute_shape(scene, "What shape is the pink object?") is None
    assert attribute_shape(scene, "Is the star on the left or the right side of the image?") is None


def test_the_attribute_pass_reads_colour_and_kind_at_the_naming_word(tmp_path):
    """``attributes``: colour and shape conversations train the gathering at the naming word and the named shape's
    colour and kind read there (and, with ``final``, at the answer); the marker records it."""
    init = write_tiny_checkpoint(tmp_path / "m", "llava_next")
    write_dataset(tmp_path / "d", 12, 3, "instruct", min_side=112, max_side=160, qtypes=("color", "shape"))
    logs: list[str] = []
    place_pass(init, [tmp_path / "d"], tmp_path / "a", final=True, attributes=True, batch=4, log=logs.append)
    assert all(k in logs[0] for k in ("kind_mass", "kind_attr", "final_attr", "final_mass")), logs[0]
    assert json.loads((tmp_path / "a" / "place.json").read_text())["attributes"] is True
    with pytest.raises(ValueError, match="qtypes=\\('position',\\)"):  # without: colour questions name nothing
        place_pass(init, [tmp_path / "d"], tmp_path / "b", final=True, batch=4, log=logs.append)
    mixed = tmp_path / "mixed"  # position questions name shapes either way; the attribute heads read them too
    write_dataset(mixed, 12, 3, "instruct", min_side=112, max_side=160, qtypes=("position", "color"))
    place_pass(init, [mixed], tmp_path / "c", final=False, batch=4, log=logs.append)
    assert "kind_mass" in logs[-1] and "kind_attr" not in logs[-1]
    place_pass(init, [mixed], tmp_path / "e", final=False, attributes=True, batch=4, log=logs.append)
    assert "kind_attr" in logs[-1]
    c, e = (load_file(tmp_path / d / "model.safetensors") for d in ("c", "e"))
    key = "model.language_model.layers.1.mlp.down_proj.weight"  # the layer whose output the heads read
    assert not torch.equal(c[key], e[key])


def test_by_length_worked_example_and_its_batches_pad_less():
    import random

    got = by_length([0, 1, 2, 3], [5, 90, 7, 80], 2, 2, random.Random(0))
    assert sorted([sorted(got[:2]), sorted(got[2:])]) == [[0, 2], [1, 3]]
    rng = random.Random(1)
    lengths = [rng.randint(50, 400) for _ in range(100)]
    order = list(range(100))
    rng.shuffle(order)
    grouped = by_length(order, lengths, 8, 4, random.Random(2))
    assert sorted(grouped) == list(range(100))  # every item once
    assert all(set(grouped[k : k + 32]) == set(order[k : k + 32]) for k in range(0, 100, 32))  # runs stay apart

    def padded(o: list[int]) -> int:
        return sum(max(lengths[i] for i in o[k : k + 8]) * 8 for k in range(0, 96, 8))

    assert padded(grouped) < 0.85 * padded(order)


def test_length_groups_keep_the_steps_and_change_only_the_order(position_data, tmp_path):
    init, data = position_data
    plain = place_pass(init, [data], tmp_path / "a", final=False, batch=2, log=lambda _: None)
    grouped = place_pass(init, [data], tmp_path / "b", final=False, batch=2, length_groups=2, log=lambda _: None)
    assert len(plain) == len(grouped) and plain != grouped
    assert json.loads((tmp_path / "b" / "place.json").read_text())["length_groups"] == 2


def test_only_a_pass_that_hides_the_background_computes_foreground_flags(position_data, tmp_path, monkeypatch):
    """The flags cost ~6.6 ms a sample (two thirds of loading it) and serve only ``drop``; leaving them out changes
    no weight (the passes' results stay what they were)."""
    import llavakit.train.data as data_module
    import llavakit.train.place as place_module

    init, data = position_data
    real, calls = data_module.sample_foreground, []
    monkeypatch.setattr(data_module, "sample_foreground", lambda *a: calls.append(1) or real(*a))
    place_pass(init, [data], tmp_path / "a", final=False, batch=4, log=lambda _: None)
    assert calls == []
    place_pass(init, [data], tmp_path / "b", final=False, drop=(1.0, 0.0), batch=4, log=lambda _: None)
    assert len(calls) >= 8  # every sample of the pass, at least once
    real_build = place_module.build_dataset
    monkeypatch.setattr(place_module, "build_dataset", lambda *a, **k: real_build(*a, **{**k, "foreground": True}))
    place_pass(init, [data], tmp_path / "c", final=False, batch=4, log=lambda _: None)  # flags computed, unused
    without, with_flags = (load_file(tmp_path / d / "model.safetensors") for d in ("a", "c"))
    assert all(torch.equal(without[k], with_flags[k]) for k in without)
