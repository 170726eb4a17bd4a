"""Resume accepts the same data file (image folder, init checkpoint) given as another path: a run started with
``data.path=my data/edit.jsonl`` resumed with its absolute path was refused as another recipe ("data.path 'my
data/edit.jsonl' there, '/abs/...' now") and as changed data ("... is missing"), though the file was the same."""

import shutil

import pytest
from loop_helpers import tiny_recipe
from train_helpers import conv, write_image, write_jsonl

from llavakit.tiny import write_tiny_checkpoint
from llavakit.train.build import build_model
from llavakit.train.loop import train

RUN = ("train.max_steps=3", "train.save_every=1")


def _run(tmp_path, data, images, init, *more):
    recipe = tiny_recipe(
        tmp_path, "llava", f"model.init={init}", f"data.path={data}", f"data.image_folder={images}", *RUN, *more
    )
    model, processor = build_model(recipe.model)
    return train(recipe, model=model, processor=processor)


@pytest.fixture
def files(tmp_path, monkeypatch):
    """Relative paths (from ``tmp_path``) of a data file and an image folder under a directory with a space."""
    monkeypatch.chdir(tmp_path)
    for i in range(8):
        write_image(tmp_path / "my data" / "imgs" / f"{i}.png", 20 + 3 * i, 30, seed=i)
    records = [
        {"id": str(i), "image": f"{i}.png", "conversations": conv("<image>\nColor?", f"A {i}.")} for i in range(8)
    ]
    write_jsonl(tmp_path / "my data" / "edit.jsonl", records)
    write_tiny_checkpoint(tmp_path / "base", "llava")
    return "my data/edit.jsonl", "my data/imgs", "base"


def test_resume_with_the_same_files_as_absolute_paths_from_another_directory(tmp_path, files, monkeypatch):
    _run(tmp_path, *files, "train.stop_after=1")
    absolute = [str((tmp_path / f).resolve()) for f in files]
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # the saved relative paths are read from where that run ran
    assert _run(tmp_path, *absolute, "train.stop_after=1", "train.resume=true").steps == [2]
    monkeypatch.chdir(tmp_path)
    assert _run(tmp_path, *files, "train.resume=true").steps == [3]  # and back to the relative paths


def test_other_files_are_still_refused(tmp_path, files):
    data, images, init = files
    _run(tmp_path, *files, "train.stop_after=1")
    (tmp_path / "copy.jsonl").write_bytes((tmp_path / data).read_bytes())  # the same contents, another file
    with pytest.raises(ValueError, match="data.path 'my data/edit.jsonl' there, 'copy.jsonl' now"):
        _run(tmp_path, "copy.jsonl", images, init, "train.resume=true")
    shutil.copytree(tmp_path / images, tmp_path / "imgs2")  # the same images, another folder
    with pytest.raises(ValueError, match="data.image_folder 'my data/imgs' there, 'imgs2' now"):
        _run(tmp_path, data, "imgs2", init, "train.resume=true")


def test_datasets_entries_and_non_paths(tmp_path, files):
    from llavakit.train.fingerprint import same_setting

    data, images, _ = files
    was = [{"path": data, "image_folder": images, "weight": 1.0}]
    now = [{"path": str(tmp_path / data), "image_folder": str(tmp_path / images), "weight": 1.0}]
    assert same_setting("data.datasets", was, now)
    assert not same_setting("data.datasets", was, [{**now[0], "weight": 0.5}])
    assert not same_setting("data.datasets", was, [{**now[0], "image_folder": str(tmp_path)}])
    assert same_setting("model.init", "tiny:llava", "tiny:llava") and not same_setting("model.init", "a/b", "a/c")
    assert not same_setting("stage.lr", "my data", str(tmp_path / "my data"))  # not a path key
