"""scripts/probe_attention.py: attention split by what each image token shows, on a tiny model end to end."""

import math

import torch

from llavakit.data.synth import write_dataset
from llavakit.data.synth_scene import Scene, Shape
from llavakit.tiny import write_tiny_checkpoint
from script_module import load_script


def test_shares_and_selectivity():
    mod = load_script("probe_attention")
    owner = torch.tensor([-4, 0, 0, 1, -1, 1])
    w = torch.tensor([0.1, 0.3, 0.2, 0.1, 0.2, 0.1])
    s = mod.shares(w, owner, 0)
    assert math.isclose(s["target"], 0.5, rel_tol=1e-6) and math.isclose(s["others"], 0.2, abs_tol=1e-6)
    assert math.isclose(s["background"], 0.2, rel_tol=1e-6) and math.isclose(s["text"], 0.1, abs_tol=1e-6)
    assert math.isclose(s["selectivity"], (0.5 / 0.7) / (2 / 4), rel_tol=1e-5)  # 1.0 would be no preference


def test_named_object_only_when_exactly_one_matches():
    mod = load_script("probe_attention")
    shapes = (Shape("star", "red", "small", 10, 10, 5), Shape("circle", "red", "large", 40, 10, 8))
    scene = Scene(64, 32, (240, 240, 240), shapes)
    assert mod.named_object(scene, "color", "What color is the star?\nAnswer ...") == ("star", 0)
    assert mod.named_object(scene, "shape", "What shape is the red object?") is None  # two red objects
    assert mod.named_object(scene, "count", "How many?") is None


def test_runs_on_a_tiny_model(tmp_path, capsys):
    mod = load_script("probe_attention")
    model = write_tiny_checkpoint(tmp_path / "m", "llava_next")
    write_dataset(tmp_path / "eval", 16, 7, "eval", min_side=112, max_side=140)
    result = mod.main([str(model), str(tmp_path / "eval"), "--limit", "6"])
    assert result, capsys.readouterr().out
    for row in result.values():
        total = row["target"] + row["others"] + row["background"] + row["text"]
        assert 0 <= row["target"] <= total <= 1 + 1e-5 and math.isfinite(row["selectivity"])
    assert "| question, layer |" in capsys.readouterr().out
