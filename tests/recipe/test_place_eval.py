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
        by_shapes = {k: v for k, v in out["questions"].items() if " shapes " in k}
        assert sum(by_shapes.values()) == len(records)
        several = sum(v for k, v in by_shapes.items() if not k.startswith("1 shapes"))
        across = sum(v for k, v in out["questions"].items() if k.endswith("across"))
        assert several > 0 and across == several  # each question about one of several shapes: split by what is across
        assert all(0 <= v <= 1 for v in out["accuracy"].values())


def test_a_directory_without_scenes_is_refused(tmp_path, capsys):
    mod = load_script("place_eval")
    (tmp_path / "instruct.json").write_text("[]")
    with pytest.raises(SystemExit) as err:
        mod.main([str(tmp_path), str(tmp_path)])
    assert err.value.code == 2 and "scenes.jsonl not found" in capsys.readouterr().err


def test_other_questions_are_refused(tmp_path):
    mod = load_script("place_eval")
    init = write_tiny_checkpoint(tmp_path / "m", "llava_next")
    write_dataset(tmp_path / "d", 6, 3, "instruct", min_side=112, max_side=160, qtypes=("color",), max_turns=1)
    with pytest.raises(SystemExit, match="not a position"):
        mod.main([str(init), str(tmp_path / "d")])


def test_answer_right_needs_every_token_of_the_word_but_the_last():
    mod = load_script("place_eval")
    labels = torch.tensor([-100, -100, 7, 8, 2, -100])
    logits = torch.zeros(6, 10)
    logits[1, 7] = logits[2, 8] = 1
    assert mod.answer_right(logits, labels)  # the end of the turn (2) is not asked for
    logits[2, 8] = 0
    logits[2, 3] = 1
    assert not mod.answer_right(logits, labels)
    one = torch.tensor([-100, 5, -100])  # a one-token answer is still scored
    assert not mod.answer_right(torch.zeros(3, 10), one)


def test_samples_too_long_are_refused_not_misattributed(tmp_path):
    mod = load_script("place_eval")
    init = write_tiny_checkpoint(tmp_path / "m", "llava_next")
    write_dataset(tmp_path / "d", 6, 3, "instruct", min_side=112, max_side=160, qtypes=("position",), max_turns=1)
    from llavakit.processing.processor import LlavaProcessor
    from llavakit.train.mixture import build_dataset

    proc = LlavaProcessor.from_pretrained(init)
    spec = {"path": str(tmp_path / "d" / "instruct.json"), "image_folder": str(tmp_path / "d")}
    ds = build_dataset(spec, proc, proc.template, 4096)
    starts = sorted(int((ds[i]["labels"] != -100).nonzero().min()) for i in range(6))  # each answer's first token
    assert starts[0] < starts[-1]  # images of several sizes: a length that leaves some answers and not others
    with pytest.raises(SystemExit, match="wrong records: raise --max-length"):
        mod.main([str(init), str(tmp_path / "d"), "--max-length", str(starts[-1])])
    with pytest.raises(SystemExit, match="instruct.json: .*too"):  # all too long
        mod.main([str(init), str(tmp_path / "d"), "--max-length", "40"])
    with pytest.raises(SystemExit, match="was cut at --max-length"):  # kept, but cut inside the answer
        mod.main([str(init), str(tmp_path / "d"), "--max-length", str(starts[-1] + 1)])
