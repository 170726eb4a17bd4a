"""Resume refuses training data that changed since the checkpoint was written (its fingerprint in trainer_state),
with one line naming the file and the fixes; old checkpoints without a fingerprint still resume."""

import json
import re

import pytest
import yaml
from loop_helpers import tiny_recipe
from train_helpers import conv, write_image, write_jsonl

from llavakit.train.build import build_model
from llavakit.train.fingerprint import EDGE, data_change, data_files, file_fingerprint
from llavakit.train.loop import train
from llavakit.train.recipe import DataSpec

RUN = ("train.max_steps=3", "train.save_every=1")


def _records(n: int = 8, answer: str = "Answer") -> list[dict]:
    return [
        {"id": str(i), "image": f"{i}.png", "conversations": conv("<image>\nColor?", f"{answer} {i}.")}
        for i in range(n)
    ]


@pytest.fixture
def data(tmp_path):
    for i in range(9):
        write_image(tmp_path / "imgs" / f"{i}.png", 20 + 3 * i, 30, seed=i)
    return write_jsonl(tmp_path / "data.jsonl", _records())


def _run(tmp_path, data, *more):
    recipe = tiny_recipe(
        tmp_path, "llava", f"data.path={data}", f"data.image_folder={data.parent / 'imgs'}", *RUN, *more
    )
    model, processor = build_model(recipe.model)
    return train(recipe, model=model, processor=processor)


def test_resume_refuses_edited_data_naming_the_file_and_the_fixes(tmp_path, data):
    _run(tmp_path, data, "train.stop_after=1")
    original = data.read_text()
    write_jsonl(data, _records(9))  # a record added: another sample count, another order
    size = len(data.read_bytes())
    said = f"training data changed since .*step-00000001 was written: {re.escape(str(data))} is {size} bytes, was "
    with pytest.raises(ValueError, match=said + r"\d+; restore the data, or start a new train.output_dir") as e:
        _run(tmp_path, data, "train.resume=true")
    assert "\n" not in str(e.value) and "train.allow_data_change=true" in str(e.value)
    data.write_text(original.replace("Answer 3.", "Answer 7."))  # an edit that keeps the size
    with pytest.raises(ValueError, match=re.escape(f"{data} has other contents (the same size)")):
        _run(tmp_path, data, "train.resume=true")
    data.write_text(original)  # restored: resumes
    assert _run(tmp_path, data, "train.resume=true", "train.stop_after=1").steps == [2]
    write_jsonl(data, _records(9))  # the explicit override resumes on the new data
    assert _run(tmp_path, data, "train.resume=true", "train.allow_data_change=true").steps == [3]


def test_a_checkpoint_without_a_data_fingerprint_still_resumes(tmp_path, data):
    _run(tmp_path, data, "train.stop_after=1")
    path = tmp_path / "run" / "checkpoints" / "step-00000001" / "trainer_state.json"
    state = json.loads(path.read_text())
    assert state["data"]["samples"] == 8 and str(data) in state["data"]["files"]
    del state["data"]  # as written before fingerprints were kept
    path.write_text(json.dumps(state))
    write_jsonl(data, _records(8, "Reply"))
    assert _run(tmp_path, data, "train.resume=true").steps == [2, 3]


def test_the_fingerprint_reads_a_big_files_ends_and_a_mixtures_files(tmp_path):
    big = tmp_path / "big.json"
    big.write_bytes(b"a" * (3 * EDGE))
    was = file_fingerprint(big)
    big.write_bytes(b"a" * (3 * EDGE - 1) + b"b")  # the last byte
    assert file_fingerprint(big) != was and file_fingerprint(big)["size"] == was["size"]
    big.write_bytes(b"a" * EDGE + b"b" + b"a" * (2 * EDGE - 1))  # the middle: not seen (documented)
    assert file_fingerprint(big) == was
    assert file_fingerprint(tmp_path / "gone.json") == {"size": None}
    mix = tmp_path / "mix.yaml"
    mix.write_text(yaml.safe_dump({"datasets": [{"json_path": "a.json"}, {"path": "b.jsonl", "weight": 0.5}]}))
    assert data_files(DataSpec(path=str(mix))) == [str(mix), "a.json", "b.jsonl"]
    saved = {"files": {"a.json": {"size": 3, "ends": "x"}}, "samples": 4, "order": "o"}
    assert data_change(saved, saved) is None
    assert data_change(saved, {**saved, "files": {}}) == "a.json is missing"
    assert data_change(saved, {**saved, "samples": 5}) == "the dataset has 5 samples, had 4"
