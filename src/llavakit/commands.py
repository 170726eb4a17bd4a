"""The bodies of ``llava generate | chat`` and the checks every command shares: plain functions over a Pipeline, no
argparse here (``llava caption``: ``llavakit.caption``)."""

from __future__ import annotations

import errno
import glob
import os
import re
import shlex
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TextIO

from PIL import Image

from .pipeline import Pipeline, load
from .processing.image_load import load_image
from .processing.video_load import MAX_FRAMES, is_video_file, read_video


def default_model() -> str:
    """The bundled default model's directory (trained by our own recipe), or a clear error while it is missing."""
    path = Path(__file__).parent / "assets" / "default-model"
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            "no --model given and the bundled default model is not installed; pass --model DIR_OR_HUB_ID "
            "(a llava-hf/* directory, or an original checkpoint converted with `llava convert`)"
        )
    return str(path)


def check_model(model: str | None) -> None:
    """``--model ""`` (e.g. an unset ``$MODEL``) is a mistake, not a request for the bundled model."""
    if model is not None and not model.strip():
        raise ValueError(
            "--model is empty (an unset variable?); pass a model directory or hub id, "
            "or leave --model out to use the bundled model"
        )


def check_given(value: str, flag: str, what: str) -> None:
    """An empty path (an unset variable) is no path: ``Path("")`` is the working directory, so it would silently
    read or write the wrong files."""
    if not value.strip():
        raise ValueError(f"{flag} is empty (an unset variable?); pass {what}")


def check_sampling(max_new_tokens: int = 256, stop: list[str] | str | None = None, **params: Any) -> None:
    """Refuse bad sampling settings before any work starts (the same checks generation makes)."""
    from .engine.sampling import SamplingParams

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}; pass --max-new-tokens 1 or more")
    if stop == "" or (isinstance(stop, (list, tuple)) and "" in stop):
        raise ValueError('--stop "" is empty: it would end every answer at once; leave it out or give a string')
    SamplingParams(**params)


def check_images(images: list[str]) -> None:
    for p in images:
        check_given(p, "--image", "the path of an image file")
        if Path(p).is_dir():
            raise ValueError(f"{p} is a directory, not an image file; pass the path of an image file")
        if not Path(p).exists():
            if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", p) or p[:5].lower() == "data:":
                raise ValueError(f"--image {p[:80]} is a URL; --image takes a local file: download it, pass its path")
            raise FileNotFoundError(f"image file not found: {p}")
        if not Path(p).is_file():  # a device, a FIFO, a socket
            raise ValueError(f"{p} is not a regular file; pass the path of an image file")


def check_prompt(prompt: str, images: list[str]) -> None:
    """A prompt of nothing (or only spaces) about no image asks nothing."""
    check_utf8(prompt, "--prompt")
    if not prompt.strip() and not images:
        raise ValueError('--prompt is empty and no --image is given; pass a question with --prompt "..."')


def check_utf8(text: str, what: str) -> None:
    """Text typed in a terminal that is not set to UTF-8 (a Latin-1 "é" is the byte 0xe9) reaches Python with each
    bad byte as a lone surrogate (``surrogateescape``), which no tokenizer takes: refuse it, saying where."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"{what} is not valid UTF-8 text (a byte that is not UTF-8 at character {e.start + 1}); type it in a "
            "UTF-8 terminal (e.g. LANG=C.UTF-8) or convert it to UTF-8 (iconv)"
        ) from None


def open_pipeline(
    model: str | None, dtype: str = "float32", quantize: str | None = None, compile: bool = False
) -> Pipeline:
    check_model(model)
    return load(default_model() if model is None else model, dtype=dtype, quantize=quantize, compile=compile)


def find_frames(spec: str, max_frames: int = MAX_FRAMES) -> list[Path] | list[Image.Image]:
    """The frames of a video, at most ``max_frames`` of them spread evenly over the whole
    (``processing.image.sample_frames``): a video file is decoded (``processing.video_load.read_video``, PyAV);
    a directory of frame images or a glob is read in natural name order (frame_2 before frame_10, as training
    reads a record's frame folder: ``train.records.frame_files``)."""
    from .processing.image import sample_frames
    from .train.records import FRAME_SUFFIXES, frame_files, frame_order

    if max_frames < 1:
        raise ValueError(f"--frames must be >= 1, got {max_frames}")
    check_given(spec, "--video", "a video file, a directory of frame images or a glob")
    p = Path(spec)
    if p.is_file() and is_video_file(p):
        return read_video(p, max_frames)
    if p.is_file():
        raise ValueError(
            f"--video {spec} is neither a video file nor a folder; pass a video file, a directory of frame images or "
            "a glob like 'frames/*.png'"
        )
    if p.is_dir():
        frames = frame_files(p)
    else:
        files = (Path(f) for f in glob.glob(spec))
        frames = sorted((f for f in files if f.is_file() and f.suffix.lower() in FRAME_SUFFIXES), key=frame_order)
    if not frames:
        raise FileNotFoundError(
            f"no video file or frame images found at {spec} (frames: {', '.join(FRAME_SUFFIXES)}); pass a video file, "
            "a directory of frame images or a glob"
        )
    return [frames[i] for i in sample_frames(len(frames), max_frames)]


def check_video_support(pipe: Pipeline) -> None:
    """Videos are OneVision's: refuse one for another model when it is given, not with every message after."""
    family = getattr(getattr(pipe, "processor", None), "family", None)
    if family is not None and family != "llava_onevision":
        raise ValueError(
            f"videos are supported by llava_onevision models only, this is {family}; use a llava_onevision --model"
        )


def user_message(text: str, images: list[str], frames: list[Path] | list[Image.Image] | None = None) -> dict[str, Any]:
    check_images(images)
    video = [{"type": "video", "video": [str(f) if isinstance(f, Path) else f for f in frames]}] if frames else []
    return {
        "role": "user",
        "content": [{"type": "image", "image": p} for p in images] + video + [{"type": "text", "text": text}],
    }


def stdout_gone() -> int:
    """stdout's reader left (``llava generate ... | head -c 100``, ``llava eval compare A B | head -1``): stop
    quietly, as a shell tool killed by SIGPIPE does (exit 141), with stdout sent to /dev/null so that Python's last
    flush of it raises nothing. Call it where a command catches ``BrokenPipeError``; return its exit code."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # a stdout without a file descriptor
        pass
    return 141


def _chat_turn(text: str, images: list[Image.Image], frames: list[Image.Image]) -> dict[str, Any]:
    """A chat turn with its images and video frames as decoded when attached: the conversation keeps the pixels it
    was answered about (re-read from their files on every turn, a moved file broke every later turn, and an
    overwritten one changed the earlier turns under their answers)."""
    video = [{"type": "video", "video": list(frames)}] if frames else []
    parts = [{"type": "image", "image": im} for im in images] + video + [{"type": "text", "text": text}]
    return {"role": "user", "content": parts}


def generate(
    pipe: Pipeline,
    prompt: str,
    images: list[str],
    out: TextIO = sys.stdout,
    frames: list[Path] | list[Image.Image] | None = None,
    **sampling: Any,
) -> str:
    """Stream the answer to ``out``; return it. ``frames``: a video's frames (OneVision models), after the images."""
    check_prompt(prompt, images + ["video"] * bool(frames))
    check_sampling(**sampling)
    parts = []
    message = user_message(prompt, images, frames)
    for delta in pipe.stream([message], **sampling):  # checks the images; no leading whitespace (AnswerText)
        out.write(delta)
        out.flush()
        parts.append(delta)
    out.write("\n")
    return "".join(parts)


CHAT_HELP = (
    "commands: /image PATH (attach to your next message), /video VIDEO (a video file, or a folder or glob of frames), "
    "/reset (new conversation), /exit"
)


def chat(
    pipe: Pipeline,
    images: list[str],
    lines: Iterable[str],
    out: TextIO = sys.stdout,
    frames: list[Path] | list[Image.Image] | None = None,
    max_frames: int = MAX_FRAMES,
    **sampling: Any,
) -> int:
    """Interactive multi-turn chat over ``lines`` (stdin); earlier turns stay in the KV cache. ``frames``: a video
    (its frames) for the first message, as ``/video`` attaches one to the next, taking at most ``max_frames``
    frames (``--frames``), and as many as the conversation's first video has (its videos share one frame count)."""
    check_sampling(**sampling)
    check_images(images)
    messages: list[dict[str, Any]] = []
    pending = [load_image(p) for p in images]  # decoded once, when attached (see _chat_turn)
    video = _decoded(frames or [])

    def read_video(spec: str) -> list[Image.Image]:
        check_video_support(pipe)
        had = next((len(p["video"]) for m in messages for p in _parts(m) if p.get("type") == "video"), None)
        got = _decoded(find_frames(spec, had or max_frames))  # a frame that cannot be read is refused now
        if had is not None and len(got) != had:
            raise ValueError(
                f"{spec} gives {len(got)} frames, and this conversation's video has {had}: a conversation's videos "
                "must have as many frames (/reset starts a new conversation)"
            )
        return got

    out.write(f"llava chat - {CHAT_HELP}\n>>> ")
    out.flush()
    for raw in lines:
        line = raw.strip()
        command, arg = (line.split(maxsplit=1) + ["", ""])[:2]
        if line in ("/exit", "/quit"):
            break
        if line == "/reset":
            messages, pending, video = [], [], []
            pipe.reset()
            out.write("(new conversation)\n")
        elif command == "/image":  # a file that is not an image is refused now, not with the next message
            got = _attach(arg, "/image PATH (attaches the image to your next message)", load_image, out)
            if got is not None:
                pending.append(got[1])
                out.write(f"(image attached: {got[0]})\n")
        elif command == "/video":  # frames that cannot be found or read likewise
            got = _attach(arg, "/video VIDEO (a video file, folder or glob of frames; goes with your next message)",
                          read_video, out)  # fmt: skip
            if got is not None:
                video = got[1]
                out.write(f"(video attached: {len(video)} frames from {got[0]})\n")
        elif line.startswith("/"):
            out.write(f"unknown command {line.split()[0]}; {CHAT_HELP}\n")
        elif line:
            stream = None
            try:
                check_utf8(line, "your message")
                messages.append(_chat_turn(line, pending, video))
                stream = pipe.stream(messages, **sampling)
                answer = "".join(_echo(stream, out))
            except (ValueError, OSError, KeyboardInterrupt) as e:  # keep the chat alive; Ctrl-C stops this answer
                if messages and messages[-1]["role"] == "user":
                    messages.pop()
                if isinstance(e, KeyboardInterrupt):
                    note = "\n(answer interrupted; ask again, or /exit to leave)"
                else:  # e.g. the conversation outgrew the context
                    note = f"\nerror: {e}"
                    if "context" in str(e) and messages:  # earlier turns fill the context: a new conversation helps
                        note += "; or type /reset to start a new conversation (earlier turns count toward the context)"
                if pending:
                    note += f"; {len(pending)} image(s) stay attached to your next message (/reset drops them)"
                if video:
                    note += "; the video stays attached to your next message (/reset drops it)"
                out.write(note + "\n")
            else:
                messages.append({"role": "assistant", "content": answer})
                pending, video = [], []
            finally:
                if stream is not None:
                    stream.close()  # an interrupted answer frees the conversation's cache now
        out.write(">>> ")
        out.flush()
    out.write("\n")
    return 0


def _attach(arg: str, usage: str, read: Callable[[str], Any], out: TextIO) -> tuple[str, Any] | None:
    """A chat command's typed path and what ``read`` makes of it; None once the usage or the error is shown."""
    path = _typed_path(arg)
    if not path:
        out.write(f"usage: {usage}\n")
        return None
    try:
        return path, read(path)
    except (ValueError, OSError) as e:
        out.write(f"error: {e}\n")
        return None


def _parts(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message.get("content")
    return content if isinstance(content, list) else []


def _decoded(frames: list[Path] | list[Image.Image]) -> list[Image.Image]:
    """Frames as images: frame files decoded (``find_frames`` gives a video file's frames decoded already)."""
    return [load_image(f) if isinstance(f, Path) else f for f in frames]


def _typed_path(arg: str) -> str:
    """A path as typed or dropped into a terminal: 'my photo.png', "my photo.png" and my\\ photo.png are one path;
    other text is taken as it is (a Windows path keeps its backslashes)."""
    arg = arg.strip()
    quoted = arg[:1] in ("'", '"')
    if not quoted and "\\ " not in arg:
        return os.path.expanduser(arg)  # ~/photo.png, as a shell would
    try:
        parts = shlex.split(arg)
    except ValueError:  # an unbalanced quote: take the text as it is
        parts = []
    if len(parts) != 1:
        return arg
    return parts[0] if quoted else os.path.expanduser(parts[0])  # ~/my\ photo.png: ~ unquoted, as a shell would


def _echo(deltas: Iterable[str], out: TextIO) -> Iterable[str]:
    for d in deltas:
        out.write(d)
        out.flush()
        yield d
    out.write("\n")


def new_output_dir(path: str, flag: str, what: str) -> Path:
    """An output directory a command fills: not empty text (which is the working directory), not a file, and
    not a directory with files in it (they would be overwritten, or mixed with the new ones)."""
    check_given(path, flag, f"the directory to write {what} to")
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise ValueError(f"cannot write {what} to {path}: it is a file; pass a new directory as {flag}")
    if target.is_dir() and any(target.iterdir()):
        raise ValueError(
            f"cannot write {what} to {path}: the directory is not empty and its files would be overwritten; pass a "
            f"new or empty directory as {flag} (or remove {path} first)"
        )
    return target


# errors of writing (permission, no space, read-only file system, quota) that come without a file name
WRITE_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EFBIG}


def output_error(e: OSError, target: Path, what: str, flag: str) -> OSError:
    """``e`` itself when it is not about ``target`` (its message names its own file), else one line saying which
    output could not be written and what to do."""
    where = Path(e.filename) if isinstance(e.filename, str) else None
    if where is not None and where != target and target not in where.parents and where not in target.parents:
        return e
    if where is None and e.errno not in WRITE_ERRNOS:  # no file named: about the output only if a write failure
        return e  # e.g. "runs/lora has no adapter_config.json": an input's problem, said as it was raised
    detail = f" ({where})" if where is not None and where != target else ""
    reason = (e.strerror or str(e)).lower()
    return OSError(f"cannot write {what} to {target}: {reason}{detail}; pass a writable directory with {flag}")
