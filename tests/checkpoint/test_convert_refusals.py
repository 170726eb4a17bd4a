"""`llava convert` refuses before writing anything when it cannot write the processor, and never leaves a
half-written DST: the same command can simply be run again once the cause is fixed."""

from __future__ import annotations

import json
import sys

import pytest
from test_model_io import _tiny_original


def _convert(src, dst, tower) -> int:  # noqa: ANN001
    from llavakit.cli import main

    return main(["convert", str(src), str(dst), "--vision-tower", str(tower)])


def test_no_tokenizer_is_refused_before_writing(tmp_path, capsys):
    """It wrote the weights, printed a note, said `wrote DST` and exited 0; the output had no processor and a
    second run was refused because DST was not empty."""
    src, _ = _tiny_original(tmp_path)
    (src / "tokenizer.json").unlink()
    assert _convert(src, tmp_path / "out", tmp_path / "clip") == 2
    err = capsys.readouterr().err
    assert "has no tokenizer.json or tokenizer.model" in err and "copy the tokenizer files" in err
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip", "llava-v1.5-tiny"]  # no hidden leftovers


def test_sentencepiece_tokenizer_that_cannot_be_converted_is_refused(tmp_path, capsys, monkeypatch):
    """Only a tokenizer.model and no way to turn it into tokenizer.json (sentencepiece missing)."""
    src, _ = _tiny_original(tmp_path)
    (src / "tokenizer.json").rename(src / "tokenizer.model")
    out = tmp_path / "empty"
    out.mkdir()  # an empty DST is accepted, and stays empty when refused
    monkeypatch.setitem(sys.modules, "transformers", None)  # `from transformers import ...` fails
    assert _convert(src, out, tmp_path / "clip") == 2
    err = capsys.readouterr().err
    assert "cannot turn" in err and "pip install transformers sentencepiece" in err and "nothing was written" in err
    assert out.is_dir() and not any(out.iterdir())


def test_image_token_at_the_wrong_id_is_refused_and_a_rerun_works(tmp_path, capsys):
    """A tokenizer with one token more than the model: <image> would land at 129, the model's image id is 128."""
    from llavakit.processing.processor import LlavaProcessor

    src, _ = _tiny_original(tmp_path)
    good = (src / "tokenizer.json").read_text()
    tj = json.loads(good)
    tj["added_tokens"].append(
        {"id": 128, "content": "<extra>", "single_word": False, "lstrip": False, "rstrip": False}
        | {"normalized": False, "special": True}
    )
    (src / "tokenizer.json").write_text(json.dumps(tj))
    assert _convert(src, tmp_path / "out", tmp_path / "clip") == 2
    err = capsys.readouterr().err
    assert "<image> gets id 129" in err and "uses id 128" in err and "image_token_index" in err
    assert not (tmp_path / "out").exists()
    (src / "tokenizer.json").write_text(good)  # the fix, then the same command
    assert _convert(src, tmp_path / "out", tmp_path / "clip") == 0
    assert LlavaProcessor.from_pretrained(tmp_path / "out").image_token_id == 128


def test_a_failure_while_writing_leaves_no_output(tmp_path, monkeypatch):
    """An error found only while writing (here: the processor's save fails) removes what was written."""
    from llavakit.processing.processor import LlavaProcessor

    src, _ = _tiny_original(tmp_path)

    def broken(self, out):  # noqa: ANN001, ANN202
        raise OSError(28, "No space left on device", str(out) + "/tokenizer.json")

    monkeypatch.setattr(LlavaProcessor, "save_pretrained", broken)
    with pytest.raises(OSError, match="No space left") as e:
        from llavakit.checkpoint.convert import convert

        convert(src, tmp_path / "new" / "out", vision_tower=tmp_path / "clip")
    assert e.value.filename == str(tmp_path / "new" / "out" / "tokenizer.json")  # named as the user knows it
    assert not (tmp_path / "new").exists()  # nor the parent it created


@pytest.mark.parametrize("how", ["working directory", "symlink"])
def test_an_empty_existing_dst_that_cannot_be_renamed_over_is_written(tmp_path, monkeypatch, capsys, how):
    """An empty DST is accepted, but one that cannot be replaced by a rename (`.`, a symlink to an empty directory,
    a mount point) was refused after the whole conversion ('device or resource busy', 'not a directory')."""
    from llavakit import LlavaModel
    from llavakit.cli import main
    from llavakit.tiny import write_tiny_checkpoint

    src = write_tiny_checkpoint(tmp_path / "src", "llava")
    (tmp_path / "empty").mkdir()
    if how == "symlink":
        (tmp_path / "link").symlink_to(tmp_path / "empty")
        dst = str(tmp_path / "link")
    else:
        monkeypatch.chdir(tmp_path / "empty")
        dst = "."
    from llavakit.processing.processor import LlavaProcessor

    def broken(self, out):  # noqa: ANN001, ANN202
        raise OSError(28, "No space left on device", str(out) + "/tokenizer.json")

    with monkeypatch.context() as m:  # a failure while writing leaves the directory empty
        m.setattr(LlavaProcessor, "save_pretrained", broken)
        assert main(["convert", str(src), dst]) == 2
    assert "no space left" in capsys.readouterr().err and not any((tmp_path / "empty").iterdir())
    assert main(["convert", str(src), dst]) == 0, capsys.readouterr().err
    assert (tmp_path / "link").is_symlink() if how == "symlink" else True  # the link kept, its target filled
    assert [p.name for p in (tmp_path / "empty").iterdir() if p.name.startswith(".")] == []  # no leftovers
    assert LlavaModel.from_pretrained(tmp_path / "empty").config.model_type == "llava"
