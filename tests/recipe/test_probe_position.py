"""scripts/probe_position.py: labels follow the scenes, every probe gets its rows, the read-out trains layer 0."""

import torch

from llavakit.data.synth import write_dataset
from llavakit.data.synth_questions import side
from llavakit.data.synth_scene import Scene, Shape
from llavakit.model.llava import LlavaModel
from llavakit.processing.processor import LlavaProcessor
from llavakit.tiny import write_tiny_checkpoint
from script_module import load_script


def test_named_shape_is_the_first_of_a_unique_kind():
    mod = load_script("probe_position")
    shapes = (Shape("star", "red", "small", 10, 10, 5), Shape("star", "blue", "small", 30, 10, 5),
              Shape("circle", "red", "large", 50, 10, 8))  # fmt: skip
    assert mod.named_shape(Scene(64, 32, (240, 240, 240), shapes)) == 2
    assert mod.named_shape(Scene(64, 32, (240, 240, 240), shapes[:2])) is None


def test_rows_and_labels_on_a_tiny_model(tmp_path):
    mod = load_script("probe_position")
    path = write_tiny_checkpoint(tmp_path / "m", "llava_next")
    write_dataset(tmp_path / "d", 12, 7, "caption", min_side=112, max_side=160)
    model, proc = LlavaModel.from_pretrained(path).eval(), LlavaProcessor.from_pretrained(path)
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
