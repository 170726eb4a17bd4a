"""`llava caption` on image paths that read as globs (a file named with [ ] * ? is that file, not a pattern), and
its resume refusing a file captioned by another model or with other sampling settings."""

from __future__ import annotations

import json
import os
from pathlib import Path

from PIL import Image

from llavakit.cli import main
from llavakit.tiny import write_tiny_checkpoint
from one_error import one_error


def test_caption_takes_an_existing_file_with_glob_characters_as_itself(model, tmp_path, capsys):
    """``photo [1].png`` was read as a glob (a character class matching ``photo 1.png``): "no images found"."""
    d = tmp_path / "my photos"
    d.mkdir()
    for name in ("photo [1].png", "star*.png", "what?.png"):
        Image.new("RGB", (40, 30), (10, 200, 90)).save(d / name)
    out = tmp_path / "caps.jsonl"
    for name in ("photo [1].png", "star*.png", "what?.png"):
        assert main(["caption", "--model", model, str(d / name), "--out", str(out), "--max-new-tokens", "2"]) == 0
        counts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert counts == {"images": 1, "skipped": 0, "captioned": 1, "failed": 0}
    recs = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert [Path(r["image"]).name for r in recs] == ["photo [1].png", "star*.png", "what?.png"]


def _images(d: Path) -> Path:
    d.mkdir()
    for i in range(3):
        Image.new("RGB", (40, 30), (80 * i, 100, 200)).save(d / f"img{i}.png")
    return d


def _caption(capsys, model: str, images: Path, out: Path, *flags: str) -> int:  # noqa: ANN001
    code = main(["caption", "--model", model, str(images), "--out", str(out), *flags])
    if code == 0:
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["failed"] == 0
    return code


def test_caption_resume_refuses_another_model(model, tmp_path, capsys):
    """A resume with another --model was taken: two models' captions in one file, no record saying whose."""
    images, out = _images(tmp_path / "imgs"), tmp_path / "caps.jsonl"
    assert _caption(capsys, model, images / "img0.png", out, "--max-new-tokens", "3") == 0
    before = out.read_bytes()
    other = str(write_tiny_checkpoint(tmp_path / "other", seed=1))
    assert _caption(capsys, other, images, out, "--max-new-tokens", "3") == 2
    theirs = Path(model).resolve()
    one_error(capsys, f"{out}:1 was captioned by model {str(theirs)!r}", f"pass --model {theirs} to resume")
    assert out.read_bytes() == before


def test_caption_resume_refuses_retrained_weights(model, tmp_path, capsys):
    """The same --model directory with its weights rewritten since is another model (as ``llava eval`` holds)."""
    images, out = _images(tmp_path / "imgs"), tmp_path / "caps.jsonl"
    ckpt = write_tiny_checkpoint(tmp_path / "ckpt")
    assert _caption(capsys, str(ckpt), images / "img0.png", out, "--max-new-tokens", "3") == 0
    weights = ckpt / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert _caption(capsys, str(ckpt), images, out, "--max-new-tokens", "3") == 2
    one_error(capsys, "was captioned by other weights of model", "write to another --out")


def test_caption_resume_refuses_other_sampling(model, tmp_path, capsys):
    images, out = _images(tmp_path / "imgs"), tmp_path / "caps.jsonl"
    assert _caption(capsys, model, images / "img0.png", out, "--max-new-tokens", "5") == 0
    before = out.read_bytes()
    assert _caption(capsys, model, images, out, "--max-new-tokens", "40", "--temperature", "1.5") == 2
    one_error(
        capsys,
        f"{out}:1 was captioned with other sampling settings",
        "--max-new-tokens 5 there, 40 now; --temperature 0.0 there, 1.5 now",
        "pass the same flags to resume, or write to another --out",
    )
    assert out.read_bytes() == before


def test_caption_resume_refuses_another_dtype_or_quantization_before_the_model_loads(
    model, tmp_path, capsys, monkeypatch
):
    """Float and int8 captions of one model shared a file: ``--dtype`` / ``--quantize`` were not recorded. The
    refusal comes before the model loads (a 7B model takes minutes), as the other resume refusals do."""
    import llavakit.commands

    images, out = _images(tmp_path / "imgs"), tmp_path / "caps.jsonl"
    assert _caption(capsys, model, images / "img0.png", out, "--max-new-tokens", "3") == 0
    (rec,) = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert rec["precision"] == {"dtype": "float32", "quantize": None}
    before = out.read_bytes()

    def no_loading(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the model was loaded before the file was checked")

    monkeypatch.setattr(llavakit.commands, "open_pipeline", no_loading)
    for flags, said in (
        (("--quantize", "int8"), "--quantize none there, int8 now"),
        (("--dtype", "bfloat16"), "--dtype float32 there, bfloat16 now"),
    ):
        assert _caption(capsys, model, images, out, "--max-new-tokens", "3", *flags) == 2
        one_error(
            capsys, f"{out}:1 was captioned from weights loaded another way ({said})", "pass the same flags to resume"
        )
    assert _caption(capsys, model, images, out, "--max-new-tokens", "3", "--temperature", "1.5") == 2
    one_error(capsys, "other sampling settings")
    assert out.read_bytes() == before


def test_caption_resume_with_the_same_settings_skips_and_records_them(model, tmp_path, capsys):
    images, out = _images(tmp_path / "imgs"), tmp_path / "caps.jsonl"
    flags = ("--max-new-tokens", "3", "--temperature", "0.7", "--seed", "1", "--stop", "x")
    assert _caption(capsys, model, images / "img0.png", out, *flags) == 0
    assert main(["caption", "--model", model, str(images), "--out", str(out), *flags]) == 0
    counts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert counts == {"images": 3, "skipped": 1, "captioned": 2, "failed": 0}
    recs = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert len(recs) == 3 and all(r["model"] == str(Path(model).resolve()) and r["weights"] for r in recs)
    assert all(r["sampling"]["max_new_tokens"] == 3 and r["sampling"]["stop"] == ["x"] for r in recs)


def test_caption_resumes_records_written_before_they_named_the_model(model, tmp_path, capsys):
    """Records without "model" / "weights" / "sampling" (older files) are resumed, not refused; new ones say them."""
    images, out = _images(tmp_path / "imgs"), tmp_path / "caps.jsonl"
    old = {"image": str(images / "img0.png"), "prompt": "Describe the image briefly.", "caption": "a", "seconds": 1}
    out.write_text(json.dumps(old) + "\n", encoding="utf-8")
    assert main(["caption", "--model", model, str(images), "--out", str(out), "--max-new-tokens", "9"]) == 0
    counts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert counts == {"images": 3, "skipped": 1, "captioned": 2, "failed": 0}
    recs = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert recs[0] == old and [r["sampling"]["max_new_tokens"] for r in recs[1:]] == [9, 9]


def test_caption_from_python_without_a_model_name_records_the_sampling_only(model, tmp_path):
    """``caption(pipe, ...)`` from the Python API, the pipeline made elsewhere: no model to name or compare (a
    required keyword before, a TypeError for every caller); other sampling is still refused on resume."""
    import pytest

    import llavakit
    from llavakit.caption import caption

    images, out = _images(tmp_path / "imgs"), tmp_path / "caps.jsonl"
    pipe = llavakit.load(model)
    assert caption(pipe, str(images / "img0.png"), str(out), progress=False, max_new_tokens=3)["captioned"] == 1
    (rec,) = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert "model" not in rec and "weights" not in rec and rec["sampling"]["max_new_tokens"] == 3
    assert caption(pipe, str(images), str(out), progress=False, max_new_tokens=3)["skipped"] == 1
    with pytest.raises(ValueError, match="other sampling settings"):
        caption(pipe, str(images), str(out), progress=False, max_new_tokens=4)
