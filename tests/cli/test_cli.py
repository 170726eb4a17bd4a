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


def llava(
    *args: str, stdin: str | None = None, timeout: int = 120, cwd: str | Path | None = None
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "llavakit.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
    )


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
    assert r.stdout.rstrip("\n") == load(model).chat(msgs, max_new_tokens=8).lstrip()  # shown without " " first


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
    assert r.stdout.rstrip("\n") == pipe.chat(msgs, max_new_tokens=6).lstrip()


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
        # a URL was "image file not found: https://..." as if a local file had gone missing
        (["--image", "https://x.org/a.png", "--prompt", "hi"], "is a URL; --image takes a local file: download it"),
        (["--prompt", "hi", "--max-new-tokens", "0"], "max_new_tokens must be >= 1"),
        (["--prompt", "hi", "--stop", "END", "--stop", ""], '--stop "" is empty'),
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


def _counts(r: subprocess.CompletedProcess) -> dict:
    return json.loads(r.stdout.splitlines()[-1])


def _records(path: Path) -> list[dict]:
    text = path.read_text()
    assert text.endswith("\n")
    return [json.loads(x) for x in text.splitlines()]


def test_caption_resume_cuts_a_torn_last_record(model, images, tmp_path):
    out = tmp_path / "caps.jsonl"
    cap = ("caption", "--model", model, str(images), "--out", str(out), "--max-new-tokens", "5")
    assert llava(*cap).returncode == 0
    full = out.read_bytes()
    last = full.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    torn = full[: len(full) - len(last) - 1 + 20]  # killed 20 bytes into the last record
    out.write_bytes(torn)
    r = llava(*cap)
    assert r.returncode == 0, r.stderr
    assert "dropped an unfinished last record of 20 bytes" in r.stderr
    assert _counts(r)["skipped"] == 2 and _counts(r)["captioned"] == 1
    again = _records(out)  # the torn bytes are gone, the image captioned again (greedy: same caption)
    assert [{**x, "seconds": 0} for x in again] == [{**json.loads(x), "seconds": 0} for x in full.splitlines()]
    r = llava(*cap)  # and the file stays usable
    assert r.returncode == 0, r.stderr
    assert _counts(r)["skipped"] == 3 and _counts(r)["captioned"] == 0 and "dropped" not in r.stderr
    full = out.read_bytes()
    out.write_bytes(full[:-1])  # a whole record that only lacks its newline is kept, not redone
    r = llava(*cap)
    assert r.returncode == 0 and _counts(r)["skipped"] == 3 and "dropped" not in r.stderr
    assert out.read_bytes() == full


def test_caption_resume_refuses_a_bad_line_before_the_last(model, images, tmp_path):
    out = tmp_path / "caps.jsonl"
    out.write_text('{"image": "a.png", "caption": "x"}\nnot json\n{"image": "b.png", "caption": "y"}\n')
    before = out.read_bytes()
    r = llava("caption", "--model", model, str(images), "--out", str(out), "--max-new-tokens", "5")
    assert r.returncode == 2 and f"{out}:2 is not a caption record" in r.stderr and "Traceback" not in r.stderr
    assert out.read_bytes() == before


def test_caption_resume_keys_on_the_resolved_path(model, images, tmp_path):
    out = tmp_path / "caps.jsonl"
    rel = ("caption", "--model", model, images.name, "--out", str(out), "--max-new-tokens", "5")
    r = llava(*rel, cwd=images.parent)
    assert r.returncode == 0, r.stderr
    recs = _records(out)
    assert all(Path(x["image"]).is_absolute() and not x["caption"].startswith(" ") for x in recs)
    for spelling in (str(images), f"{images}/../{images.name}/*.png"):
        r = llava("caption", "--model", model, spelling, "--out", str(out), "--max-new-tokens", "5", cwd=images.parent)
        assert r.returncode == 0, r.stderr
        assert _counts(r)["skipped"] == 3 and _counts(r)["captioned"] == 0
    r = llava("caption", "--model", model, str(images), "--out", str(out), "--max-new-tokens", "5", cwd=tmp_path)
    assert r.returncode == 0 and _counts(r)["skipped"] == 3  # from another working directory too
    # a file of an earlier version, with relative paths, resumes from the directory it was written in
    out.write_text("".join(json.dumps({**x, "image": f"{images.name}/{Path(x['image']).name}"}) + "\n" for x in recs))
    r = llava(*rel, cwd=images.parent)
    assert r.returncode == 0 and _counts(r)["skipped"] == 3
    assert len(_records(out)) == 3


def test_caption_resume_refuses_another_prompt(model, images, tmp_path):
    out = tmp_path / "caps.jsonl"
    cap = ("caption", "--model", model, str(images), "--out", str(out), "--max-new-tokens", "3")
    assert llava(*cap, "--prompt", "Describe it.").returncode == 0
    before = out.read_bytes()
    r = llava(*cap, "--prompt", "Name the colour.")
    assert r.returncode == 2 and "was captioned with another prompt ('Describe it.')" in r.stderr
    assert "Traceback" not in r.stderr and out.read_bytes() == before


@pytest.mark.parametrize(
    "args,message",
    [
        (["--max-new-tokens", "5000"], "exceeds the model's context of 4096 tokens"),
        (["--prompt", "what is <image>?"], "reserves as the placeholder"),
    ],
)
def test_caption_request_errors_fail_once_before_any_image(model, images, tmp_path, args, message):
    out = tmp_path / "caps.jsonl"
    r = llava("caption", "--model", model, str(images), "--out", str(out), *args)
    assert r.returncode == 2 and message in r.stderr and "skipped" not in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not out.exists()


def test_generate_names_a_directory_given_as_image(model, tmp_path):
    r = llava("generate", "--model", model, "--image", str(tmp_path), "--prompt", "hi")
    assert r.returncode == 2 and f"{tmp_path} is a directory, not an image file" in r.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (["--max-new-tokens", "0"], "max_new_tokens must be >= 1, got 0"),
        (["--temperature", "-1"], "temperature must be >= 0"),
        (["--top-p", "0"], "top_p must be in (0, 1]"),
        (["--prompt", ""], "--prompt is empty"),
        (["--prompt", "   "], "--prompt is empty"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--model", ""], "--model is empty"),
        (["--stop", ""], '--stop "" is empty'),  # was one "skipped" line per image
    ],
)
def test_caption_bad_flags_fail_before_any_work(model, images, tmp_path, args, message):
    out = tmp_path / "caps.jsonl"
    r = llava("caption", "--model", model, str(images), "--out", str(out), *args)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr and "skipped" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--temperature", "-1"], "temperature must be >= 0"),
        (["--max-new-tokens", "0"], "max_new_tokens must be >= 1"),
        (["--repetition-penalty", "0"], "repetition_penalty must be > 0"),
        (["--stop", ""], '--stop "" is empty'),
        (["--image", "/nonexistent/x.png"], "image file not found: /nonexistent/x.png"),
        (["--model", ""], "--model is empty"),
    ],
)
def test_chat_bad_flags_fail_at_start(model, args, message):
    argv = ["chat", *args] if args[0] == "--model" else ["chat", "--model", model, *args]
    r = llava(*argv, stdin="hello\nagain\n/exit\n")
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert r.stdout == ""  # refused before the chat started


@pytest.mark.parametrize(
    "args,message",
    [
        (["--prompt", ""], "--prompt is empty and no --image is given"),
        (["--prompt", " \n "], "--prompt is empty and no --image is given"),
        (["--prompt", "hi", "--temperature", "-1"], "temperature must be >= 0"),
        (["--prompt", "hi", "--model", ""], "--model is empty"),
    ],
)
def test_generate_refuses_empty_prompt_and_model(model, args, message):
    r = llava("generate", "--model", model, *args)
    assert r.returncode == 2 and r.stdout == ""
    assert message in r.stderr and "Traceback" not in r.stderr


def test_demo_refuses_an_empty_model():
    r = llava("demo", "--model", "")
    assert r.returncode == 2 and "--model is empty" in r.stderr and "leave --model out" in r.stderr


def test_caption_unusable_out_says_what_to_do(model, images, tmp_path):
    r = llava("caption", "--model", model, str(images), "--out", str(tmp_path))
    assert r.returncode == 2 and "Errno" not in r.stderr
    assert f"{tmp_path}: it is a directory; pass a file path like {tmp_path / 'captions.jsonl'}" in r.stderr
    r = llava("caption", "--model", model, str(images), "--out", str(tmp_path / "nope" / "c.jsonl"))
    assert r.returncode == 2 and "Errno" not in r.stderr
    assert f"the folder {tmp_path / 'nope'} does not exist" in r.stderr
    assert not (tmp_path / "nope").exists()


def test_chat_bare_image_command_and_context_overflow_hint(model, images):
    long = "x" * 2500  # two of these outgrow the tiny model's context of 4096 tokens, one fits
    script = f"/image\n{long}\n{long}\n/reset\n{long}\n/exit\n"
    r = llava("chat", "--model", model, "--max-new-tokens", "2", stdin=script)
    assert r.returncode == 0, r.stderr
    assert "usage: /image PATH" in r.stdout and "image file not found" not in r.stdout
    errors = [x for x in r.stdout.splitlines() if x.startswith("error:")]
    assert len(errors) == 1  # only the turn on top of an earlier one overflows; after /reset it fits again
    assert "exceeds the model's context" in errors[0] and "/reset" in errors[0]


def test_data_synth_refuses_n_below_one(tmp_path):
    r = llava("data", "synth", "--out", str(tmp_path / "d"), "--n", "0")
    assert r.returncode == 2 and "--n must be >= 1, got 0" in r.stderr
    assert not (tmp_path / "d").exists()


def test_data_synth_unwritable_out_says_what_to_do(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    r = llava("data", "synth", "--out", str(afile), "--n", "1")
    assert r.returncode == 2 and f"cannot write the dataset to {afile}: it is a file" in r.stderr
    r = llava("data", "synth", "--out", str(afile / "sub"), "--n", "1")
    assert r.returncode == 2 and "Errno" not in r.stderr and "Traceback" not in r.stderr
    assert f"cannot write the dataset to {afile / 'sub'}" in r.stderr and "pass a writable directory" in r.stderr
    if Path("/sys/kernel").is_dir():  # a Linux pseudo file system nobody can write to, not even root
        r = llava("data", "synth", "--out", "/sys/llavatest", "--n", "1")
        assert r.returncode == 2 and "Errno" not in r.stderr
        assert "cannot write the dataset to /sys/llavatest: operation not permitted" in r.stderr


def test_caption_captions_an_image_reached_twice_once(model, images, tmp_path):
    """A symlink beside its target (or a glob matching a file twice) is one image: one record."""
    import shutil

    d = tmp_path / "imgs"
    shutil.copytree(images, d)
    (d / "link.png").symlink_to(d / "img0.png")
    out = tmp_path / "caps.jsonl"
    r = llava("caption", "--model", model, str(d), "--out", str(out), "--max-new-tokens", "3")
    assert r.returncode == 0, r.stderr
    assert len(_records(out)) == 3 and _counts(r)["captioned"] == 3


@pytest.fixture(scope="module")
def ov_model(tmp_path_factory) -> str:
    return str(write_tiny_checkpoint(tmp_path_factory.mktemp("ov") / "tiny", family="llava_onevision", seed=1))


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("frames")
    for i in range(11):  # frame_10 sorts after frame_9 by number, before frame_2 by text
        Image.new("RGB", (48, 36), (20 * i, 100, 200 - 15 * i)).save(d / f"frame_{i}.png")
    (d / "notes.txt").write_text("not a frame")
    return d


def test_find_frames_natural_order_and_even_sampling(frames_dir):
    from llavakit.commands import find_frames

    assert [f.name for f in find_frames(str(frames_dir), 4)] == [f"frame_{i}.png" for i in (0, 3, 6, 10)]
    assert [f.name for f in find_frames(str(frames_dir / "frame_1*.png"))] == ["frame_1.png", "frame_10.png"]
    assert len(find_frames(str(frames_dir))) == 11


def test_generate_video_answers_as_the_pipeline(ov_model, frames_dir):
    from llavakit.pipeline import load

    r = llava(
        "generate", "--model", ov_model, "--video", str(frames_dir), "--frames", "4",
        "--prompt", "What happens?", "--max-new-tokens", "6",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    picked = [str(frames_dir / f"frame_{i}.png") for i in (0, 3, 6, 10)]
    content = [{"type": "video", "video": picked}, {"type": "text", "text": "What happens?"}]
    msgs = [{"role": "user", "content": content}]
    assert r.stdout.rstrip("\n") == load(ov_model).chat(msgs, max_new_tokens=6).lstrip()


def test_generate_video_bad_input_is_one_clear_line(ov_model, model, frames_dir, tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    (tmp_path / "empty").mkdir()
    cases = [
        (["--model", ov_model, "--video", str(tmp_path / "clip.mp4")], "cannot be read as a video"),
        (["--model", ov_model, "--video", str(tmp_path / "empty")], "no video file or frame images found"),
        (["--model", ov_model, "--video", str(frames_dir / "notes.txt")], "neither a video file nor a folder"),
        (["--model", ov_model, "--video", str(frames_dir), "--frames", "0"], "--frames must be >= 1"),
        (["--model", model, "--video", str(frames_dir)], "llava_onevision models only"),
        (["--model", ov_model, "--frames", "4"], "--frames picks frames of a --video"),
    ]
    for args, message in cases:
        r = llava("generate", *args, "--prompt", "What?", "--max-new-tokens", "2")
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert message in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_chat_video_first_message_answers_as_the_pipeline(ov_model, frames_dir):
    from llavakit.pipeline import load

    r = llava("chat", "--model", ov_model, "--video", str(frames_dir), "--frames", "3", "--max-new-tokens", "5",
              stdin="What happens?\n/exit\n")  # fmt: skip
    assert r.returncode == 0, r.stderr
    picked = [str(frames_dir / f"frame_{i}.png") for i in (0, 5, 10)]
    content = [{"type": "video", "video": picked}, {"type": "text", "text": "What happens?"}]
    answer = load(ov_model).chat([{"role": "user", "content": content}], max_new_tokens=5).lstrip()
    assert f">>> {answer}\n" in r.stdout, r.stdout


def test_generate_video_file_answers_as_the_pipeline(ov_model, tmp_path):
    """A video file is decoded (PyAV) into the frames the pipeline's video part reads from the same file."""
    pytest.importorskip("av")
    from llavakit.pipeline import load
    from video_files import write_video

    clip = str(write_video(tmp_path / "clip.mp4", n=9))
    r = llava("generate", "--model", ov_model, "--video", clip, "--frames", "3", "--prompt", "What?",
              "--max-new-tokens", "6")  # fmt: skip
    assert r.returncode == 0, r.stderr
    content = [{"type": "video", "video": clip, "max_frames": 3}, {"type": "text", "text": "What?"}]
    answer = load(ov_model).chat([{"role": "user", "content": content}], max_new_tokens=6)
    assert r.stdout.rstrip("\n") == answer.lstrip()


@pytest.mark.parametrize(
    "argv, unknown",
    [
        (["eval", "pope", "--data", "X", "--n", "3"], "--n 3"),  # was read as --no-progress, then "3" refused
        (["generate", "--prompt", "hi", "--max-new", "4"], "--max-new 4"),  # was --max-new-tokens
        (["data", "synth", "--out", "d", "--n", "1", "--se", "2"], "--se 2"),  # was --seed
    ],
)
def test_flags_are_spelled_whole(argv: list[str], unknown: str, capsys: pytest.CaptureFixture) -> None:
    """argparse's prefix matching is off in every subcommand: a shortened flag is unknown, not another flag."""
    from llavakit.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert f"unrecognized arguments: {unknown}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, unknown",
    [
        (["train", "R.yaml", "train.max_steps=3", "--bogus"], "--bogus"),  # named the override too
        (["train", "R.yaml", "--resume", "train.max_steps=3", "--bogus"], "--bogus"),
        (["train", "R.yaml", "--bogus", "stage.lr=1e-4", "plain"], "--bogus plain"),
    ],
)
def test_train_names_only_what_is_not_an_override(argv: list[str], unknown: str, capsys: pytest.CaptureFixture) -> None:
    from llavakit.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(f"unrecognized arguments: {unknown}")


def test_a_flag_equal_to_an_override_given_before_is_still_named(capsys: pytest.CaptureFixture) -> None:
    """``llava train R.yaml foo --resume foo``: the second ``foo`` is no override (no ``=``) and was dropped unnamed
    because a positional of that spelling came first."""
    from llavakit.cli import main

    with pytest.raises(SystemExit):
        main(["train", "R.yaml", "foo", "--resume", "foo"])
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("unrecognized arguments: foo")
