"""The `llava` commands end to end in subprocesses, on a tiny random checkpoint directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from llavakit.tiny import write_tiny_checkpoint

SRC = str(Path(__file__).resolve().parents[2] / "src")


def llava(*args: str, stdin: str | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "llavakit.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return str(write_tiny_checkpoint(tmp_path_factory.mktemp("m") / "tiny", family="llava_next"))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("imgs")
    for i, size in enumerate([(60, 40), (200, 90), (33, 150)]):
        Image.new("RGB", size, (40 * i, 100, 200)).save(d / f"img{i}.png")
    return d


def test_generate_prints_the_greedy_answer(model, images):
    from llavakit.pipeline import load

    r = llava(
        "generate", "--model", model, "--image", str(images / "img1.png"), "--prompt", "What?", "--max-new-tokens", "8"
    )
    assert r.returncode == 0, r.stderr
    msgs = [
        {
            "role": "user",
            "content": [{"type": "image", "image": str(images / "img1.png")}, {"type": "text", "text": "What?"}],
        }
    ]
    assert r.stdout.rstrip("\n") == load(model).chat(msgs, max_new_tokens=8)


@pytest.mark.parametrize("mode", ["int8", "int8+head"])
def test_generate_quantized_answers_as_the_quantized_pipeline(model, images, mode):
    """``--quantize`` gives what ``llavakit.load(quantize=...)`` gives; "+head" swaps the LM head too."""
    from llavakit.engine.quantize import Int8Linear
    from llavakit.pipeline import load

    img = str(images / "img0.png")
    r = llava(
        "generate", "--model", model, "--image", img, "--prompt", "Hi", "--max-new-tokens", "6", "--quantize", mode
    )
    assert r.returncode == 0, r.stderr
    pipe = load(model, quantize=mode)
    assert isinstance(pipe.model.lm_head, Int8Linear) == mode.endswith("+head")
    msgs = [{"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": "Hi"}]}]
    assert r.stdout.rstrip("\n") == pipe.chat(msgs, max_new_tokens=6)


def test_chat_multi_turn_with_commands(model, images):
    script = f"/image {images / 'img0.png'}\nhello\nand now?\n/reset\n/bogus\nagain\n/exit\n"
    r = llava("chat", "--model", model, "--max-new-tokens", "4", stdin=script)
    assert r.returncode == 0, r.stderr
    assert "(image attached:" in r.stdout and "(new conversation)" in r.stdout and "unknown command /bogus" in r.stdout
    assert r.stdout.count(">>> ") >= 6


def test_caption_writes_jsonl_and_resumes(model, images, tmp_path):
    out = tmp_path / "caps.jsonl"
    r = llava("caption", "--model", model, str(images), "--out", str(out), "--batch-size", "2", "--max-new-tokens", "5")
    assert r.returncode == 0, r.stderr
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(Path(x["image"]).name for x in recs) == ["img0.png", "img1.png", "img2.png"]
    assert json.loads(r.stdout.splitlines()[-1])["captioned"] == 3
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:1]) + "\n")  # as if the run had been killed after one image
    r = llava("caption", "--model", model, str(images), "--out", str(out), "--max-new-tokens", "5")
    counts = json.loads(r.stdout.splitlines()[-1])
    assert counts["skipped"] == 1 and counts["captioned"] == 2
    again = [json.loads(x) for x in out.read_text().splitlines()]
    assert {x["image"]: x["caption"] for x in again} == {x["image"]: x["caption"] for x in recs}  # batched == single


@pytest.mark.parametrize(
    "args,message",
    [
        (["--image", "/nonexistent/x.png", "--prompt", "hi"], "image file not found: /nonexistent/x.png"),
        (["--prompt", "hi", "--max-new-tokens", "0"], "max_new_tokens must be >= 1"),
        (["--prompt", "x" * 5000], "exceeds the model's context of 4096 tokens"),
    ],
)
def test_bad_input_is_one_clear_line_and_nonzero_exit(model, args, message):
    r = llava("generate", "--model", model, *args)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr


def test_unreadable_image_is_a_clear_error(model, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    r = llava("generate", "--model", model, "--image", str(bad), "--prompt", "hi")
    assert r.returncode == 2 and "cannot decode image" in r.stderr and "Traceback" not in r.stderr


def test_missing_model_directory(tmp_path):
    r = llava("generate", "--model", str(tmp_path / "nope"), "--prompt", "hi")
    assert r.returncode == 2 and "nope" in r.stderr and "Traceback" not in r.stderr


def test_demo_runs_and_prints_answers():
    r = llava("demo", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Q: " in r.stdout and "A: " in r.stdout and "truth: " in r.stdout  # (tests/recipe checks the rest)


def test_data_synth_writes_llava_format(tmp_path):
    r = llava("data", "synth", "--out", str(tmp_path / "d"), "--n", "4", "--seed", "1")
    assert r.returncode == 0, r.stderr
    recs = json.loads((tmp_path / "d" / "instruct.json").read_text())
    assert len(recs) == 4 and recs[0]["conversations"][0]["value"].startswith("<image>\n")
    assert all((tmp_path / "d" / rec["image"]).is_file() for rec in recs)
