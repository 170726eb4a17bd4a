"""Bad input to the `llava` commands: one line naming the problem and the fix, exit code 2, nothing lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from llavakit.cli import main
from llavakit.tiny import write_tiny_checkpoint
from one_error import one_error

SRC = str(Path(__file__).resolve().parents[2] / "src")
NOT_UTF8 = b"a\xff\xfeb".decode("utf-8", "surrogateescape")  # what Python makes of Latin-1 bytes in argv / stdin


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("imgs")
    for i, size in enumerate([(60, 40), (33, 150)]):
        Image.new("RGB", size, (90 * i, 100, 200)).save(d / f"img{i}.png")
    return d


def test_generate_and_caption_refuse_a_prompt_that_is_not_utf8(model, images, tmp_path, capsys):
    img = str(images / "img0.png")
    assert main(["generate", "--model", model, "--image", img, "--prompt", NOT_UTF8, "--max-new-tokens", "2"]) == 2
    one_error(capsys, "--prompt is not valid UTF-8 text", "character 2")
    out = tmp_path / "caps.jsonl"
    assert main(["caption", "--model", model, str(images), "--out", str(out), "--prompt", NOT_UTF8]) == 2
    one_error(capsys, "--prompt is not valid UTF-8 text")
    assert not out.exists()


def _chat(model: str, stdin: bytes, *args: str, encoding: str = "utf-8") -> subprocess.CompletedProcess:
    """``llava chat`` in a subprocess (its stdin decoded as a terminal in ``encoding`` would be)."""
    env = {
        **os.environ,
        "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "PYTHONIOENCODING": encoding,
    }
    cmd = [sys.executable, "-m", "llavakit.cli", "chat", "--model", model, "--max-new-tokens", "2", *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, env=env, timeout=120)


@pytest.mark.parametrize("encoding", ["utf-8:strict", "utf-8:surrogateescape"])
def test_chat_refuses_a_line_that_is_not_utf8_and_goes_on(model, encoding):
    """Latin-1 bytes in a chat line: a strict stdin ended the whole chat with a codec error (before the good lines
    read with it were answered), a lenient one with a traceback; now the line alone is refused."""
    r = _chat(model, b"hello\n" + NOT_UTF8.encode("utf-8", "surrogateescape") + b"\nagain\n/exit\n", encoding=encoding)
    out, err = r.stdout.decode(), r.stderr.decode()
    assert r.returncode == 0 and "Traceback" not in err, err
    assert "error: your message is not valid UTF-8 text" in out
    assert out.count(">>> ") == 4 and out.count("error") == 1, out  # hello, the refused line, again, /exit


def test_caption_leaves_a_file_that_is_not_its_own_untouched(model, images, tmp_path, capsys):
    """--out naming some other file (notes, an image): refused as it is, its last line not cut as a torn record."""
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"my notes\nthe last line, without its newline")
    png = tmp_path / "photo.png"
    Image.new("RGB", (8, 8)).save(png)
    for f, said in ((notes, "is not a caption record"), (png, "is a PNG image, not a caption JSONL file")):
        before = f.read_bytes()
        assert main(["caption", "--model", model, str(images), "--out", str(f), "--max-new-tokens", "2"]) == 2
        one_error(capsys, said)
        assert f.read_bytes() == before


def test_caption_refuses_an_out_that_is_not_a_regular_file():
    """/dev/full read back on resume never ends (all memory, then a MemoryError traceback); a FIFO or /dev/stdout
    blocks. Checked on ``check_output_file`` itself: without the check, the whole command would eat the memory."""
    from llavakit.caption import check_output_file

    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    with pytest.raises(ValueError, match="it is not a regular file"):
        check_output_file("/dev/full")


def test_caption_writes_file_names_that_are_not_utf8_and_resumes(model, images, tmp_path, capsys):
    """A Latin-1 file name stopped the run with "surrogates not allowed" (the chunk's captions lost, and every
    rerun stopped there); its record names it \\u-escaped and resume knows it."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    name = b"caf\xe9.png".decode("utf-8", "surrogateescape")
    for n in ("a.png", name):
        Image.open(images / "img0.png").save(folder / n)
    out = tmp_path / "caps.jsonl"
    cap = ["caption", "--model", model, str(folder), "--out", str(out), "--max-new-tokens", "2"]
    assert main(cap) == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["captioned"] == 2
    recs = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert sorted(Path(r["image"]).name for r in recs) == sorted(["a.png", name])
    assert main(cap) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["skipped"] == 2


@pytest.mark.parametrize(
    "args,message",
    [
        (["caption", "--model", "{model}", "", "--out", "{tmp}/c.jsonl"], "the images argument is empty"),
        (["caption", "--model", "{model}", "{images}", "--out", ""], "--out is empty"),
        (["generate", "--model", "{model}", "--image", "", "--prompt", "hi"], "--image is empty"),
        (["generate", "--model", "{model}", "--video", "", "--prompt", "hi"], "--video is empty"),
        (["data", "synth", "--out", "", "--n", "1"], "--out is empty"),
        (["data", "check", ""], "DATA is empty"),
        (["data", "check", "{tmp}/d.json", "--image-folder", ""], "--image-folder is empty"),
        (["convert", "{model}", ""], "DST is empty"),
        (["convert", "", "{tmp}/out"], "SRC is empty"),
        (["merge-lora", "--base", "{model}", "--adapter", "{tmp}", "--out", ""], "--out is empty"),
    ],
)
def test_an_empty_path_is_not_the_working_directory(model, images, tmp_path, monkeypatch, capsys, args, message):
    """An unset variable ($OUT) reads or writes the working directory: caption captioned every image under it,
    data synth / convert / merge-lora wrote into it."""
    (tmp_path / "d.json").write_text('[{"id": "1", "image": "img0.png", "conversations": []}]')
    work = tmp_path / "cwd"
    work.mkdir()
    Image.open(images / "img0.png").save(work / "img0.png")
    monkeypatch.chdir(work)
    filled = [a.format(model=model, images=images, tmp=tmp_path) for a in args]
    assert main(filled) == 2
    one_error(capsys, message)
    assert sorted(p.name for p in work.iterdir()) == ["img0.png"]


def test_convert_refuses_a_dst_that_is_a_file_or_holds_files(model, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["convert", model, str(afile)]) == 2
    one_error(capsys, f"cannot write the converted checkpoint to {afile}: it is a file")  # was "[Errno 17] ..."
    assert main(["convert", model, str(afile / "sub")]) == 2
    err = one_error(capsys, f"cannot write the converted checkpoint to {afile / 'sub'}", "pass a writable directory")
    assert "Errno" not in err
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text("{}")  # someone else's checkpoint: not overwritten
    assert main(["convert", model, str(other)]) == 2
    one_error(capsys, "the directory is not empty")
    assert [p.name for p in other.iterdir()] == ["config.json"] and (other / "config.json").read_text() == "{}"
    (tmp_path / "empty").mkdir()
    assert main(["convert", model, str(tmp_path / "empty")]) == 0


def test_demo_names_a_bad_training_json(tmp_path, capsys):
    model = write_tiny_checkpoint(tmp_path / "tiny")
    for text, words in [
        ("[1]", ["AttributeError"]),  # was a traceback
        ("{bad", ["JSONDecodeError"]),  # was the bare JSON error, no file named
        ('{"scene_long_side": [5, 10]}', ["got 5, 10"]),  # the fix is the file, not --sides
    ]:
        (model / "training.json").write_text(text)
        assert main(["demo", "--model", str(model)]) == 2
        err = one_error(capsys, f"{model / 'training.json'}: cannot read scene_long_side", *words)
        assert "--sides" not in err


def test_data_check_refuses_an_empty_file_and_an_unknown_template(tmp_path, capsys):
    empty = tmp_path / "empty.json"
    empty.write_bytes(b"")
    assert main(["data", "check", str(empty)]) == 2  # was "all 0 records OK", exit 0
    one_error(capsys, "is empty (0 bytes)")
    data = tmp_path / "d.jsonl"
    data.write_text(
        '{"id": "1", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}\n'
    )
    assert main(["data", "check", str(data), "--template", "vicuna_v2"]) == 2  # was ignored without a processor
    one_error(capsys, "unknown conversation template 'vicuna_v2'", "vicuna_v1")
    assert main(["data", "check", str(data), "--template", "vicuna_v1"]) == 0


def test_chat_refuses_a_bad_start_image_and_a_video_the_model_cannot_take(model, images, tmp_path, capsys):
    """Given at the start, they failed every message (each time saying they "stay attached") until /reset."""
    bad = tmp_path / "trunc.png"
    bad.write_bytes((images / "img0.png").read_bytes()[:40])
    assert main(["chat", "--model", model, "--image", str(bad)]) == 2
    one_error(capsys, f"image {bad}: cannot decode image")
    assert main(["chat", "--model", model, "--video", str(images)]) == 2
    one_error(capsys, "llava_onevision models only, this is llava_next")


def test_chat_video_command_refused_for_a_model_without_videos(model, images):
    """/video on a llava_next model was "attached", then failed every message, each time "staying attached"."""
    r = _chat(model, f"/video {images}\nhi\n/exit\n".encode())
    out = r.stdout.decode()
    assert r.returncode == 0 and "error: videos are supported by llava_onevision models only" in out
    assert "video attached" not in out and "stays attached" not in out and out.count("error") == 1, out


def test_merge_lora_refuses_an_out_that_holds_files(model, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "model.safetensors").write_bytes(b"mine")
    assert main(["merge-lora", "--base", model, "--adapter", str(tmp_path), "--out", str(other)]) == 2
    one_error(capsys, "the directory is not empty")
    assert (other / "model.safetensors").read_bytes() == b"mine"


def test_merge_lora_says_what_is_wrong_with_its_input_not_with_its_output(model, tmp_path, capsys):
    """An adapter directory without adapter_config.json is the input's problem: said as raised (it was "cannot write
    the merged checkpoint to OUT: ... no adapter_config.json ...; pass a writable directory with --out")."""
    out = tmp_path / "merged"
    assert main(["merge-lora", "--base", model, "--adapter", str(tmp_path), "--out", str(out)]) == 2
    err = one_error(capsys, "adapter_config.json")
    assert "cannot write" not in err and "writable" not in err and not out.exists(), err
    missing = tmp_path / "nosuch"  # said to have "no adapter_config.json" before: it does not exist at all
    assert main(["merge-lora", "--base", model, "--adapter", str(missing), "--out", str(out)]) == 2
    one_error(capsys, f"adapter directory {missing} does not exist; pass the adapter a LoRA run wrote")


FAKE_PIPE = """
import sys
import llavakit.commands
from llavakit.cli import main


class FakePipe:  # its answer holds characters a Latin-1 terminal cannot show
    def stream(self, messages, **sampling):
        yield from ["café", " ✓", " 猫", " \ufffd"]

    def reset(self):
        pass


llavakit.commands.open_pipeline = lambda *a, **k: FakePipe()
sys.exit(main(sys.argv[1:]))
"""


def test_an_answer_the_terminal_cannot_encode_is_printed_not_an_error(images):
    """On a stdout that is not UTF-8 (a Latin-1 terminal, PYTHONIOENCODING=latin-1, a Windows console) the first
    character it lacks (a CJK word, a check mark, the U+FFFD of an invalid byte) ended `llava generate` mid-answer as
    "error: 'latin-1' codec can't encode character" (exit 2), and failed every `llava chat` turn that held one (the
    answer dropped from the conversation); now such characters are shown as '?'."""
    env = {
        **os.environ,
        "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "PYTHONIOENCODING": "latin-1",
    }
    img = str(images / "img0.png")
    for args, stdin in ((["generate", "--image", img, "--prompt", "hi"], b""), (["chat"], b"hi\nagain\n/exit\n")):
        r = subprocess.run(
            [sys.executable, "-c", FAKE_PIPE, *args], input=stdin, capture_output=True, env=env, timeout=60
        )
        out, err = r.stdout.decode("latin-1"), r.stderr.decode("latin-1")
        assert r.returncode == 0 and not err, err
        assert out.count("café ? ? ?\n") == (2 if args == ["chat"] else 1) and "error" not in out, out


def test_generate_refuses_an_image_that_cannot_be_decoded_before_the_model_loads(images, tmp_path, monkeypatch, capsys):
    """A truncated or non-image --image file was found out only once the model had loaded (minutes for a 7B model),
    as chat's --image files already were not."""
    import llavakit.commands

    def no_load(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the model was loaded before the images were checked")

    monkeypatch.setattr(llavakit.commands, "open_pipeline", no_load)
    bad = tmp_path / "trunc.png"
    bad.write_bytes((images / "img0.png").read_bytes()[:40])
    assert main(["generate", "--image", str(images / "img1.png"), "--image", str(bad), "--prompt", "hi"]) == 2
    one_error(capsys, f"image {bad}: cannot decode image")


def test_generate_into_a_pipe_closed_early_stops_quietly(images):
    """`llava generate ... | head -c 20`: the reader leaving printed "llava generate: error: [Errno 32] Broken pipe"
    (exit 2) as if the input were bad; now it stops quietly with 141, as a shell tool killed by SIGPIPE does."""
    script = FAKE_PIPE.replace("yield from [", 'yield from ["word "] * 200_000 + [')
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-c", script, "generate", "--image", str(images / "img0.png"), "--prompt", "hi"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert p.stdout.read(20) == b"word " * 4
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 141 and not err, err


def test_building_the_parser_imports_no_torch():
    """`llava --help` (and every start) built the parser by importing torch (~1 s) through `serve`'s MAX_FRAMES
    (video_load -> image) and `llavakit.train`'s eager __init__; both imports are now deferred."""
    code = "import sys\nfrom llavakit.cli import _parser\n_parser()\nprint('torch' in sys.modules)\n"
    env = {**os.environ, "PYTHONPATH": SRC}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert (r.returncode, r.stdout, r.stderr) == (0, "False\n", "")


def test_ctrl_c_while_the_parser_is_built_is_one_line_and_130():
    """A Ctrl-C while the parser is built (the subcommands' modules are imported) printed a traceback. The interrupt
    is raised here exactly there: when `serve`'s command module starts to be imported."""
    code = (
        "import builtins, os, signal\n"
        # as at a terminal: a job a non-interactive shell starts in the background (`make test &`) inherits SIGINT
        # ignored, and Python then keeps it ignored, so the interrupt below would never arrive
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "real = builtins.__import__\n"
        "def hook(name, *a, **k):\n"
        "    if name.endswith('serve.command') or name == 'command':\n"
        "        builtins.__import__ = real\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = hook\n"
        "from llavakit.cli import main\n"
        "raise SystemExit(main(['generate', '--help']))\n"
    )
    env = {**os.environ, "PYTHONPATH": SRC}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert (r.returncode, r.stderr, r.stdout) == (130, "interrupted\n", "")


@pytest.mark.parametrize(
    "argv, wanted",
    [
        (["eval", "score", "synth", "--data", "{data}", "--predictions", "{png}"], "not a text file (JSON, JSONL"),
        (["data", "check", "{png}"], "not a JSON / JSON lines data file"),
        (["caption", "{png}", "--out", "{png2}", "--model", "{model}"], "not a caption JSONL file (--out"),
    ],
)
def test_an_image_given_for_a_text_file_is_named_as_an_image(model, tmp_path, capsys, argv, wanted):
    """A PNG where a JSON / JSONL file belongs was "not UTF-8 text ...; re-save the file as UTF-8" (or, for caption's
    --out, "is not a caption record"): advice that sends the user the wrong way."""
    from llavakit.data.synth import write_dataset
    from llavakit.filekinds import binary_kind

    png, png2 = tmp_path / "a.png", tmp_path / "b.png"
    Image.new("RGB", (8, 8)).save(png)
    Image.new("RGB", (8, 8)).save(png2)
    data = tmp_path / "eval"
    write_dataset(data, 1, seed=1_000_000, kind="eval", min_side=112, max_side=160)
    fill = {"{png}": str(png), "{png2}": str(png2), "{data}": str(data), "{model}": model}
    assert main([fill.get(a, a) for a in argv]) == 2
    said = png2 if "caption" in argv else png
    one_error(capsys, f"{said} is a PNG image, {wanted}", "give the path of that file instead")
    assert binary_kind(b'{"image": "a.png"}') is None and binary_kind(b"\xff\xd8\xff\xe0") == "a JPEG image"
