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
