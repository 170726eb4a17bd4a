"""scripts/place_eval.py: the row flip of the base view's position ids, and a run on a tiny model."""

import json

import pytest
import torch

from llavakit.data.synth import write_dataset
from llavakit.tiny import write_tiny_checkpoint
from script_module import load_script


def test_flip_view_worked_example_and_only_the_base_view_moves():
    mod = load_script("place_eval")
    ids = torch.tensor([[5, 9, 9, 9, 9, 9, 5]])
    pos = torch.arange(7)[None]
    assert mod.flip_view(pos, ids, 9, 2, 0).tolist() == [[0, 3, 4, 1, 2, 5, 6]]  # rows [1 2] [3 4] swapped
    assert mod.flip_view(pos, ids, 9, 2, 1).tolist() == [[0, 2, 1, 4, 3, 5, 6]]  # within each row


def test_scores_by_axis_and_shape_count(tmp_path, capsys):
    mod = load_script("place_eval")
    init = write_tiny_checkpoint(tmp_path / "m", "llava_next")
    write_dataset(tmp_path / "d", 12, 3, "instruct", min_side=112, max_side=160, qtypes=("position",), max_turns=1)
    records = json.loads((tmp_path / "d" / "instruct.json").read_text())
    for flip in ([], ["--flip-rows"], ["--flip-cols"], ["--all-tokens"]):
        assert mod.main([str(init), str(tmp_path / "d"), *flip]) == 0
        out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert out["questions"]["all"] == len(records)
        axes = [k for k in ("left/right", "top/bottom") if k in out["questions"]]
        assert sum(out["questions"][k] for k in axes) == len(records)
        assert all(0 <= v <= 1 for v in out["accuracy"].values())


def test_a_directory_without_scenes_is_refused(tmp_path):
    mod = load_script("place_eval")
    with pytest.raises(SystemExit):
        mod.main([str(tmp_path), str(tmp_path)])
