"""scripts/place_pass.py: the place targets of a grid, and a short pass on a tiny model that saves a checkpoint
of the same layout (the place head is not in it) and trains differently with the place loss than without."""

import json

import pytest
import torch
from safetensors.torch import load_file

from attention_spy import spy_attention
from llavakit.data.synth import write_dataset
from llavakit.tiny import write_tiny_checkpoint
from script_module import load_script


def test_a_short_pass_saves_the_model_and_the_place_loss_changes_it(tmp_path):
    mod = load_script("place_pass")
    init = write_tiny_checkpoint(tmp_path / "m", "llava_next")
    write_dataset(tmp_path / "d", 8, 3, "instruct", min_side=112, max_side=160)
    weights = {}
    for w in ("0", "1"):
        out = tmp_path / f"out{w}"
        args = ["--init", str(init), "--data", str(tmp_path / "d"), "--out", str(out), "--batch", "4"]
        assert mod.main([*args, "--drop", "1", "0", "--place-weight", w]) == 0
        log = json.loads((out / "place_pass.json").read_text())["log"]
        assert len(log) == 2 and all(r["place"] > 0 for r in log)
        weights[w] = load_file(out / "model.safetensors")
    assert weights["0"].keys() == load_file(init / "model.safetensors").keys()
    name = "model.multi_modal_projector.linear_1.weight"
    assert not torch.equal(weights["0"][name], weights["1"][name])


def test_grounding_examples_target_the_named_shapes_base_view_and_the_pass_uses_them(tmp_path):
    mod = load_script("place_pass")
    init = write_tiny_checkpoint(tmp_path / "m", "llava_next")
    write_dataset(tmp_path / "d", 8, 3, "instruct", min_side=112, max_side=160)
    from llavakit.model.llava import LlavaModel
    from llavakit.processing.processor import LlavaProcessor

    model, proc = LlavaModel.from_pretrained(init), LlavaProcessor.from_pretrained(init)
    per_view = (model.config.vision.image_size // model.config.vision.patch_size) ** 2
    exs = mod.ground_examples(proc, tmp_path / "d", 8, per_view)
    assert exs
    for ex in exs:
        slots = (ex["owner"] != -4).nonzero()[:, 0]
        assert ex["target"].any() and not ex["target"][slots[per_view:]].any()
        assert len(set(ex["owner"][ex["target"]].tolist())) == 1  # one shape's tokens
    out = tmp_path / "out"
    args = ["--init", str(init), "--data", str(tmp_path / "d"), "--out", str(out), "--batch", "4"]
    assert mod.main([*args, "--ground-weight", "1", "--ground-batch", "2"]) == 0
    log = json.loads((out / "place_pass.json").read_text())["log"]
    assert all(0 < r["mass"] <= 1 for r in log)


def test_tile_flags_mark_the_image_tokens_after_the_base_view_and_hiding_them_hides_only_them():
    from llavakit.train.foreground import hide_background

    mod = load_script("place_pass")
    ids = torch.tensor([[5, 9, 9, 9, 9, 5], [9, 9, 9, 5, 5, 5]])
    flags = mod.tile_flags(ids, 9, 2)
    assert flags.tolist() == [[False, False, False, True, True, False], [False, False, True, False, False, False]]
    mask = torch.ones(2, 6, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(hide_background(mask, ~flags, 1.0, g), mask * ~flags)  # as place_pass hides the tiles
    assert torch.equal(hide_background(mask, ~flags, 0.0, g), mask)


def test_a_pass_with_the_tiles_hidden_trains_differently(tmp_path):
    mod = load_script("place_pass")
    init = write_tiny_checkpoint(tmp_path / "m", "llava_next")
    write_dataset(tmp_path / "d", 8, 3, "instruct", min_side=112, max_side=160)
    weights = {}
    for name, extra in (("plain", []), ("hidden", ["--tile-drop", "1", "1"])):
        out = tmp_path / name
        args = ["--init", str(init), "--data", str(tmp_path / "d"), "--out", str(out), "--batch", "4"]
        assert mod.main([*args, "--place-weight", "0", *extra]) == 0
        weights[name] = load_file(out / "model.safetensors")
    key = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert key in weights["plain"] and not torch.equal(weights["plain"][key], weights["hidden"][key])


def test_shuffle_positions_permutes_only_the_chosen_image_tokens_and_changes_the_pass(tmp_path):
    mod = load_script("place_pass")
    ids = torch.tensor([[5, 9, 9, 9, 9, 5]] * 40)
    pos = torch.arange(6).expand(40, 6)
    g = torch.Generator().manual_seed(0)
    base = mod.shuffle_positions(pos, ids, 9, 2, g)
    assert torch.equal(base[:, [0, 3, 4, 5]], pos[:, [0, 3, 4, 5]])  # text and tokens after the first 2 kept
    assert {tuple(r) for r in base[:, 1:3].tolist()} == {(1, 2), (2, 1)}  # both orders drawn over 40 rows
    every = mod.shuffle_positions(pos, ids, 9, None, g)
    assert sorted(every[0, 1:5].tolist()) == [1, 2, 3, 4] and any(r != [1, 2, 3, 4] for r in every[:, 1:5].tolist())
    init = write_tiny_checkpoint(tmp_path / "m", "llava_next")
    write_dataset(tmp_path / "d", 8, 3, "instruct", min_side=112, max_side=160)
    weights = {}
    for name, extra in (("plain", []), ("shuffled", ["--shuffle-positions", "base"])):
        out = tmp_path / name
        args = ["--init", str(init), "--data", str(tmp_path / "d"), "--out", str(out), "--batch", "4"]
        assert mod.main([*args, "--place-weight", "0", *extra]) == 0
        weights[name] = load_file(out / "model.safetensors")
    key = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(weights["plain"][key], weights["shuffled"][key])


def test_answer_log_mass_equals_the_attention_the_model_computes(tmp_path, monkeypatch):
    """The mass recomputed from each layer's captured input equals the softmax SDPA applies at that query."""
    from llavakit.model.llava import LlavaModel

    mod = load_script("place_pass")
    init = write_tiny_checkpoint(tmp_path / "m", "llava_next")
    model = LlavaModel.from_pretrained(init).eval()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 50, (2, 12), generator=gen)
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[0, 2:5] = 0  # hidden tokens, as place_pass hides them
    labels = torch.full((2, 12), -100)
    labels[0, 9:] = ids[0, 9:]
    labels[1, 7:] = ids[1, 7:]
    visible = torch.zeros(2, 12, dtype=torch.bool)
    visible[:, 1:6] = True
    visible &= mask.bool()
    captured, probs = spy_attention(model, monkeypatch)
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, position_ids=torch.arange(12).expand(2, 12))
        got = mod.answer_log_mass(captured, labels, visible)  # (B, layers)
        every = mod.answer_log_mass(captured, labels, visible, [1], every_head=True)  # (1, layers)
        at = mod.answer_log_mass(captured, labels, visible, [0, 1], queries=[6, 10])  # other queries
    assert got.shape == (2, len(probs)) and every.shape == (1, len(probs))
    for j, q_at in ((0, 8), (1, 6)):
        want = torch.stack([p[j, :, q_at][:, visible[j]].sum(-1).max() for p in probs])
        torch.testing.assert_close(got[j].exp(), want, rtol=1e-4, atol=1e-6)
    for j, q_at in ((0, 6), (1, 10)):
        want = torch.stack([p[j, :, q_at][:, visible[j]].sum(-1).max() for p in probs])
        torch.testing.assert_close(at[j].exp(), want, rtol=1e-4, atol=1e-6)
    want = torch.stack([p[1, :, 6][:, visible[1]].sum(-1).log().mean() for p in probs])
    torch.testing.assert_close(every[0], want, rtol=1e-4, atol=1e-5)


def test_named_targets_are_the_named_shapes_base_view_tokens(tmp_path):
    from llavakit.data.synth_scene import Scene
    from llavakit.processing.processor import LlavaProcessor
    from llavakit.train.foreground import scene_token_owners
    from llavakit.train.mixture import build_dataset

    mod = load_script("place_pass")
    init = write_tiny_checkpoint(tmp_path / "m", "llava_next")
    write_dataset(tmp_path / "d", 12, 3, "instruct", min_side=112, max_side=160, qtypes=("position",), max_turns=1)
    proc = LlavaProcessor.from_pretrained(init)
    ds = build_dataset({"path": str(tmp_path / "d" / "instruct.json"), "image_folder": str(tmp_path / "d")}, proc,
                       proc.template, 1024)  # fmt: skip
    records = json.loads((tmp_path / "d" / "instruct.json").read_text())
    scenes = {}
    for line in (tmp_path / "d" / "scenes.jsonl").read_text().splitlines():
        rec = json.loads(line)
        scenes[rec["image"]] = Scene.from_dict(rec["scene"])
    from llavakit.model.llava import LlavaModel

    cfg = LlavaModel.from_pretrained(init).config.vision
    per_view = (cfg.image_size // cfg.patch_size) ** 2
    named = mod.NamedTargets(proc, [str(tmp_path / "d")], ds, per_view)
    tiles = mod.NamedTargets(proc, [str(tmp_path / "d")], ds, per_view, "tiles")
    every = mod.NamedTargets(proc, [str(tmp_path / "d")], ds, per_view, "all")
    found = 0
    for i, r in enumerate(records):
        scene, question = scenes[r["image"]], r["conversations"][0]["value"]
        k = mod.named_shape(scene, question)
        assert k is not None  # every position question names one shape
        sh = scene.shapes[k]
        assert sh.kind in question and (f"the {sh.kind}" in question or f"the {sh.color} {sh.kind}" in question)
        target = named(i)
        if target is None:
            continue
        found += 1
        owner = scene_token_owners(scene, proc)
        assert target.shape == owner.shape and not target[per_view:].any()
        assert (owner[target] == k).all()
        assert torch.equal(every(i), owner == k)
        others = named.others(i)
        assert not others[owner == k].any() and not others[owner < 0].any()  # never the named shape, two, none
        assert others[(owner >= 0) & (owner != k)].all() and named.record_id(i) == r["id"]
        assert tiles(i) is not None and not tiles(i)[:per_view].any() and torch.equal(tiles(i) | target, owner == k)
    assert found > len(records) // 2
    assert mod.named_shape(scenes[records[0]["image"]], "What color is the star?") is None


def _position_pass(tmp_path):  # noqa: ANN001, ANN202
    """place_pass, its arguments for a 2-step pass of a tiny model on 8 position conversations, the output dir."""
    init = write_tiny_checkpoint(tmp_path / "m", "llava_next")
    write_dataset(tmp_path / "d", 8, 3, "instruct", min_side=112, max_side=160, qtypes=("position",))
    out = tmp_path / "out"
    return load_script("place_pass"), ["--init", str(init), "--data", str(tmp_path / "d"), "--out", str(out),
                                       "--batch", "4"], out  # fmt: skip


def test_a_pass_pulling_the_answer_to_the_named_shape_logs_its_mass(tmp_path):
    mod, args, out = _position_pass(tmp_path)
    assert mod.main([*args, "--answer-ground", "1", "--answer-target", "named"]) == 0
    log = json.loads((out / "place_pass.json").read_text())["log"]
    assert len(log) == 2 and all(0 < r["mass"] <= 1 for r in log)


def test_named_tiles_hidden_by_tile_drop_leave_finite_weights(tmp_path):
    """A row whose named tokens are all hidden this step has no target (it would make the loss infinite)."""
    mod, args, out = _position_pass(tmp_path)
    assert mod.main([*args, "--tile-drop", "1", "1", "--answer-ground", "1", "--answer-target", "named-tiles"]) == 0
    assert all(torch.isfinite(w).all() for w in load_file(out / "model.safetensors").values())
    with pytest.raises(SystemExit):
        mod.main([*args, "--answer-target", "named"])  # without --answer-ground


def test_a_pass_hiding_the_other_shapes_trains_differently(tmp_path):
    mod, args, out = _position_pass(tmp_path)
    assert mod.main([*args, "--place-weight", "0"]) == 0
    plain = load_file(out / "model.safetensors")
    assert mod.main([*args, "--place-weight", "0", "--others-drop", "1", "1"]) == 0
    hidden = load_file(out / "model.safetensors")
    key = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(plain[key], hidden[key])


def test_first_answer_only_worked_example():
    mod = load_script("place_pass")
    labels = torch.tensor([[-100, 5, 2, -100, 7, 2], [-100, -100, 4, 2, -100, -100], [-100] * 6])
    assert mod.first_answer_only(labels.clone()).tolist() == [
        [-100, 5, 2, -100, -100, -100],
        [-100, -100, 4, 2, -100, -100],
        [-100] * 6,
    ]


def test_image_flags_worked_example():
    mod = load_script("place_pass")
    ids = torch.tensor([[5, 9, 9, 5, 9], [9, 9, 9, 5, 5]])
    flags = [torch.tensor([False, True, True]), None]
    assert mod.image_flags(ids, 9, flags).tolist() == [[False, False, True, False, True], [False] * 5]


def test_a_pass_with_the_decoder_place_loss_logs_it_and_trains_differently(tmp_path, capsys):
    mod, args, out = _position_pass(tmp_path)
    assert mod.main(args) == 0
    plain = load_file(out / "model.safetensors")
    assert mod.main([*args, "--decoder-place", "1", "--decoder-place-layer", "1"]) == 0
    log = json.loads((out / "place_pass.json").read_text())["log"]
    assert len(log) == 2 and all(r["decoder_place"] > 0 and r["decoder_place_base"] > 0 for r in log)
    key = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(plain[key], load_file(out / "model.safetensors")[key])
    with pytest.raises(SystemExit):
        mod.main([*args, "--decoder-place", "1", "--decoder-place-layer", "9"])
    assert "--decoder-place-layer must be in" in capsys.readouterr().err


def test_a_pass_with_the_answer_place_loss_logs_it_and_trains_differently(tmp_path):
    mod, args, out = _position_pass(tmp_path)
    assert mod.main(args) == 0
    plain = load_file(out / "model.safetensors")
    assert mod.main([*args, "--answer-place", "1", "--answer-place-layer", "0"]) == 0
    log = json.loads((out / "place_pass.json").read_text())["log"]
    assert len(log) == 2 and any(r["answer_place"] > 0 for r in log)
    key = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(plain[key], load_file(out / "model.safetensors")[key])


def test_kind_positions_worked_example_and_a_pass_looking_from_the_kind_word(tmp_path, capsys):
    mod, args, out = _position_pass(tmp_path)
    ids = torch.tensor([[7, 9, 5, 9, 3, 4], [7, 8, 5, 9, 3, 4]])
    labels = torch.full((2, 6), -100)
    labels[:, 5] = 4
    assert mod.kind_positions(ids, labels, [9, 6]) == [3, None]
    assert mod.kind_positions(ids, labels, [None, 9]) == [None, 3]
    extra = ["--answer-query", "kind", "--answer-ground", "1", "--answer-target", "named-all", "--answer-layers", "1"]
    assert mod.main([*args, *extra, "--answer-place", "1"]) == 0
    log = json.loads((out / "place_pass.json").read_text())["log"]
    assert len(log) == 2 and all(0 < r["mass"] <= 1 for r in log) and any(r["answer_place"] > 0 for r in log)
    with pytest.raises(SystemExit):
        mod.main([*args, *extra[:-1], "7"])
    assert "--answer-layers must be in" in capsys.readouterr().err


def test_a_pass_reading_the_place_at_the_answer_too_logs_it(tmp_path, capsys):
    mod, args, out = _position_pass(tmp_path)
    kind = ["--answer-query", "kind", "--answer-place", "1"]
    assert mod.main([*args, *kind, "--final-place", "1", "--final-ground", "1"]) == 0
    log = json.loads((out / "place_pass.json").read_text())["log"]
    assert len(log) == 2 and any(r["final_place"] > 0 for r in log) and any(0 < r["final_mass"] <= 1 for r in log)
    with pytest.raises(SystemExit):
        mod.main([*args, "--final-place", "1"])  # without --answer-query kind
    assert "need --answer-query kind" in capsys.readouterr().err
    for bad in (["--final-place", "1"], ["--final-ground", "1"]):
        with pytest.raises(SystemExit):
            mod.main([*args, *kind, *bad, "--final-place-layer", "9"])
        assert "--final-place-layer must be in" in capsys.readouterr().err
