"""scripts/probe_position.py: labels follow the scenes, every probe gets its rows, the read-out trains layer 0."""

import torch

from llavakit.data.synth import write_dataset
from llavakit.data.synth_questions import side
from llavakit.data.synth_scene import Scene, Shape
from llavakit.model.llava import LlavaModel
from llavakit.processing.processor import LlavaProcessor
from llavakit.tiny import write_tiny_checkpoint
from script_module import load_script


def _tiny(tmp_path):  # noqa: ANN202
    """The script, a tiny llava_next model and its processor; 12 synthetic scenes in tmp_path / "d"."""
    path = write_tiny_checkpoint(tmp_path / "m", "llava_next")
    write_dataset(tmp_path / "d", 12, 7, "caption", min_side=112, max_side=160)
    return load_script("probe_position"), LlavaModel.from_pretrained(path).eval(), LlavaProcessor.from_pretrained(path)


def test_named_shape_is_the_first_of_a_unique_kind():
    mod = load_script("probe_position")
    shapes = (Shape("star", "red", "small", 10, 10, 5), Shape("star", "blue", "small", 30, 10, 5),
              Shape("circle", "red", "large", 50, 10, 8))  # fmt: skip
    assert mod.named_shape(Scene(64, 32, (240, 240, 240), shapes)) == 2
    assert mod.named_shape(Scene(64, 32, (240, 240, 240), shapes[:2])) is None


def test_rows_and_labels_on_a_tiny_model(tmp_path):
    mod, model, proc = _tiny(tmp_path)
    data = mod.scenes(tmp_path / "d", 12)
    for scene, img in data:
        rows, labels = mod.features(model, proc, scene, img)
        assert all(right == (side(scene, scene.shapes[i], "x") == "right") for i, _, right in labels)
        assert sum(named for _, named, _ in labels) <= 1
        assert all(len(v) == len(labels) for k, v in rows.items() if not k.startswith("layer"))
    got = mod.collect(model, proc, data)
    x, y = got["tower all"]
    assert len(y) > 0 and x.shape == (len(y), model.config.vision.hidden_size)
    assert got["projector all"][0].shape == (len(y), model.config.text.hidden_size)
    layers = [k for k in got if k.startswith("layer")]
    assert len(layers) == 2 * model.config.text.num_hidden_layers
    assert all(len(got[k][1]) <= len(data) for k in layers)  # one question per scene at most

    before = model.model.language_model.layers[0].self_attn.v_proj.weight.clone()
    frozen = model.model.language_model.layers[-1].mlp.down_proj.weight.clone()
    exs = mod.readout_examples(proc, data)
    log = mod.readout(model, exs, exs, 2)
    assert log and 0 <= log[-1]["held_out_x"] <= 1 and 0 < log[-1]["mass"] <= 1
    assert not torch.equal(model.model.language_model.layers[0].self_attn.v_proj.weight, before)
    assert torch.equal(model.model.language_model.layers[-1].mlp.down_proj.weight, frozen)


def test_base_only_targets_and_a_frozen_projector(tmp_path):
    mod, model, proc = _tiny(tmp_path)
    data = mod.scenes(tmp_path / "d", 12)
    per_view = (model.config.vision.image_size // model.config.vision.patch_size) ** 2
    full, base = mod.readout_examples(proc, data), mod.readout_examples(proc, data, per_view)
    assert base and len(base) <= len(full)
    for ex in base:
        slots = (ex["owner"] != -4).nonzero()[:, 0]
        assert ex["target"].any() and not ex["target"][slots[per_view:]].any()
        named = ex["owner"] == ex["owner"][ex["target"]][0]  # every token of the named shape
        assert torch.equal(ex["target"][slots[:per_view]], named[slots[:per_view]])
    projector = model.model.multi_modal_projector.linear_1.weight.clone()
    mod.readout(model, base, base, 2, projector=False)
    assert torch.equal(model.model.multi_modal_projector.linear_1.weight, projector)


def test_ridge_signs_recovers_a_linear_place_and_not_noise():
    mod = load_script("probe_position")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 8, generator=g)
    y = x[:, :2] @ torch.tensor([[1.0, 0.5], [-0.5, 1.0]])  # a linear place
    assert min(mod.ridge_signs(x[:300], y[:300], x[300:], y[300:])) > 0.95
    noise = torch.randn(400, 2, generator=g)
    assert max(mod.ridge_signs(x[:300], noise[:300], x[300:], noise[300:])) < 0.7


def test_ridge_path_on_a_tiny_model(tmp_path):
    mod, model, proc = _tiny(tmp_path)
    per_view = (model.config.vision.image_size // model.config.vision.patch_size) ** 2
    exs = mod.readout_examples(proc, mod.scenes(tmp_path / "d", 12), per_view)
    v = model.model.language_model.layers[0].self_attn.v_proj.weight.clone()
    q = model.model.language_model.layers[0].self_attn.q_proj.weight.clone()
    out = mod.ridge_path(model, exs, exs, 2)
    assert set(out) == {"gathered", "layer0_word", "mass", "layer0_word_grounded"} and 0 < out["mass"] <= 1
    assert torch.equal(model.model.language_model.layers[0].self_attn.v_proj.weight, v)  # only query / key train
    assert not torch.equal(model.model.language_model.layers[0].self_attn.q_proj.weight, q)
