"""The bodies of ``llava generate | chat | caption``: plain functions over a Pipeline, no argparse here."""

from __future__ import annotations

import glob
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

from PIL import Image

from .pipeline import Pipeline, load
from .processing.image_load import load_image
from .processing.video_load import MAX_FRAMES, is_video_file, read_video

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


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


def check_sampling(max_new_tokens: int = 256, stop: list[str] | str | None = None, **params: Any) -> None:
    """Refuse bad sampling settings before any work starts (the same checks generation makes)."""
    from .engine.sampling import SamplingParams

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}; pass --max-new-tokens 1 or more")
    SamplingParams(**params)


def check_images(images: list[str]) -> None:
    for p in images:
        if Path(p).is_dir():
            raise ValueError(f"{p} is a directory, not an image file; pass the path of an image file")
        if not Path(p).is_file():
            raise FileNotFoundError(f"image file not found: {p}")


def check_prompt(prompt: str, images: list[str]) -> None:
    """A prompt of nothing (or only spaces) about no image asks nothing."""
    if not prompt.strip() and not images:
        raise ValueError('--prompt is empty and no --image is given; pass a question with --prompt "..."')


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


def _user_message(text: str, images: list[str], frames: list[Path] | list[Image.Image] | None = None) -> dict[str, Any]:
    check_images(images)
    video = [{"type": "video", "video": [str(f) if isinstance(f, Path) else f for f in frames]}] if frames else []
    return {
        "role": "user",
        "content": [{"type": "image", "image": p} for p in images] + video + [{"type": "text", "text": text}],
    }


def _answer_text(deltas: Iterable[str]) -> Iterator[str]:
    """The deltas of an answer without its leading whitespace: a byte-level tokenizer's first token is often
    " red" after "ASSISTANT:"; as original LLaVA strips its outputs, the answer shown, stored and sent back in the
    next turn is "red" (sent back with the space, the next prompt read "ASSISTANT:  red", a layout never trained)."""
    started = False
    for d in deltas:
        if not started:
            d = d.lstrip()
            started = bool(d)
        if d:
            yield d


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
    message = _user_message(prompt, images, frames)
    for delta in _answer_text(pipe.stream([message], **sampling)):  # checks the images
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
    **sampling: Any,
) -> int:
    """Interactive multi-turn chat over ``lines`` (stdin); earlier turns stay in the KV cache. ``frames``: a video
    (its frames) for the first message, as ``/video`` attaches one to the next."""
    check_sampling(**sampling)
    check_images(images)
    messages: list[dict[str, Any]] = []
    pending = list(images)
    video = list(frames or [])
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
                pending.append(got[0])
                out.write(f"(image attached: {got[0]})\n")
        elif command == "/video":  # frames that cannot be found or read likewise
            got = _attach(arg, "/video VIDEO (a video file, folder or glob of frames; goes with your next message)",
                          _read_frames, out)  # fmt: skip
            if got is not None:
                video = got[1]
                out.write(f"(video attached: {len(video)} frames from {got[0]})\n")
        elif line.startswith("/"):
            out.write(f"unknown command {line.split()[0]}; {CHAT_HELP}\n")
        elif line:
            stream = None
            try:
                messages.append(_user_message(line, pending, video))
                stream = pipe.stream(messages, **sampling)
                answer = "".join(_echo(_answer_text(stream), out))
            except (ValueError, OSError, KeyboardInterrupt) as e:  # keep the chat alive; Ctrl-C stops this answer
                if messages and messages[-1]["role"] == "user":
                    messages.pop()
                if isinstance(e, KeyboardInterrupt):
                    note = "\n(answer interrupted; ask again, or /exit to leave)"
                else:  # e.g. the conversation outgrew the context
                    note = f"\nerror: {e}"
                    if "context" in str(e) and messages:  # earlier turns fill the context: a new conversation helps
                        note += "; or type /reset to start a new conversation (earlier turns count toward the context)"
                pending = [p for p in pending if Path(p).is_file()]  # a vanished file is dropped, the rest kept
                if pending:
                    note += f"; {len(pending)} image(s) stay attached to your next message (/reset drops them)"
                if video and not all(f.is_file() for f in video if isinstance(f, Path)):
                    video = []
                    note += "; the video's frames are gone, it is dropped (/video attaches it again)"
                elif video:
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


def _read_frames(spec: str) -> list[Path] | list[Image.Image]:
    """``find_frames(spec)`` with every frame file opened once (a video file is decoded by it)."""
    frames = find_frames(spec)
    for f in frames:
        if isinstance(f, Path):
            load_image(f)
    return frames


def _typed_path(arg: str) -> str:
    """A path as typed or dropped into a terminal: 'my photo.png', "my photo.png" and my\\ photo.png are one path;
    other text is taken as it is (a Windows path keeps its backslashes)."""
    arg = arg.strip()
    quoted = arg[:1] in ("'", '"')
    if not quoted and "\\ " not in arg:
        return arg
    try:
        parts = shlex.split(arg)
    except ValueError:  # an unbalanced quote: take the text as it is
        parts = []
    return parts[0] if len(parts) == 1 else arg


def _echo(deltas: Iterable[str], out: TextIO) -> Iterable[str]:
    for d in deltas:
        out.write(d)
        out.flush()
        yield d
    out.write("\n")


def find_images(pattern: str) -> list[Path]:
    p = Path(pattern)
    files = sorted(p.rglob("*")) if p.is_dir() else sorted(Path(f) for f in glob.glob(pattern, recursive=True))
    images = [f for f in files if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise FileNotFoundError(f"no images found at {pattern} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return images


def _out_error(out: Path, e: OSError, doing: str = "write") -> OSError:
    reason = (e.strerror or str(e)).lower()
    return OSError(f"cannot {doing} the output file {out}: {reason}; pass a writable file path with --out")


def check_output_file(out_path: str) -> Path:
    """The ``--out`` of ``caption`` must be a file we can append to; say what is wrong before any work starts."""
    out = Path(out_path)
    if out.is_dir():
        raise ValueError(
            f"cannot write the output file {out}: it is a directory; pass a file path like {out / 'captions.jsonl'}"
        )
    if not out.parent.is_dir():
        raise ValueError(
            f"cannot write the output file {out}: the folder {out.parent} does not exist; create it or pass "
            "another --out"
        )
    existed = out.exists()
    try:  # the one sure test, also as root and on read-only file systems; appending nothing changes nothing
        with out.open("ab"):
            pass
    except OSError as e:
        raise _out_error(out, e) from None
    if not existed:
        out.unlink()  # a check that fails later must leave no empty output file behind
    return out


def check_caption(
    pattern: str, out_path: str, prompt: str, batch_size: int, sampling: dict[str, Any]
) -> tuple[list[Path], Path]:
    """Every check of ``caption``'s arguments, cheap and before the model is needed: (images, output file)."""
    if not prompt.strip():
        raise ValueError('--prompt is empty; pass the instruction for every image, e.g. --prompt "Describe it."')
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    check_sampling(**sampling)
    out = check_output_file(out_path)
    return find_images(pattern), out


def _image_key(path: str | Path) -> str:
    """Resume key: the same image spelled relative, absolute or through ``..`` is one image (records store absolute
    paths; a relative one, as versions before wrote, is read from the working directory)."""
    return os.path.realpath(path)


def _record(line: bytes) -> dict[str, Any] | None:
    """One JSONL caption record (with its "image" path), or None when the line is not one."""
    try:
        rec = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    image = rec.get("image") if isinstance(rec, dict) else None
    return rec if isinstance(image, str) and image else None


def read_done(out: Path, prompt: str | None = None) -> set[str]:
    """Resume keys of the images already captioned in ``out`` (read once). With ``prompt``, records made with
    another prompt are refused: resuming would mix two kinds of captions in one file.

    A last line without its newline was being written when the run died: it is cut off (its image is captioned
    again) - unless it is a whole record, which only gets its newline back. Any other line that is not a
    caption record is an error: the file is not ours to rewrite."""
    try:
        data = out.read_bytes()
    except FileNotFoundError:
        return set()
    except OSError as e:
        raise _out_error(out, e, "read") from None
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        tail = data[keep:]
        try:
            with out.open("r+b") as f:
                if _record(tail) is not None:
                    f.seek(0, os.SEEK_END)
                    f.write(b"\n")
                    data += b"\n"
                else:
                    f.truncate(keep)
                    data = data[:keep]
                    print(
                        f"{out}: dropped an unfinished last record of {len(tail)} bytes (its image is captioned again)",
                        file=sys.stderr,
                    )
        except OSError as e:
            raise _out_error(out, e) from None
    done = set()
    for n, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        rec = _record(line)
        if rec is None:
            raise ValueError(f"{out}:{n} is not a caption record; move the file away or fix it")
        if prompt is not None and isinstance(rec.get("prompt"), str) and rec["prompt"] != prompt:
            raise ValueError(
                f"{out}:{n} was captioned with another prompt ({rec['prompt']!r}); pass that --prompt to resume, "
                "or write to another --out"
            )
        done.add(_image_key(rec["image"]))
    return done


def caption(
    pipe: Pipeline,
    pattern: str,
    out_path: str,
    *,
    prompt: str = "Describe the image briefly.",
    batch_size: int = 4,
    progress: bool = True,
    **sampling: Any,
) -> dict[str, int]:
    """One JSON line per image in ``out_path``; images already there are skipped (resumable)."""
    from tqdm import tqdm

    images, out = check_caption(pattern, out_path, prompt, batch_size, sampling)
    # what is wrong with the request itself (a reserved placeholder in the prompt, no room in the context for
    # --max-new-tokens) fails the run once, before any image, rather than skipping every image with it
    pipe.check_request([_user_message(prompt, [])], sampling.get("max_new_tokens", 256))
    done = read_done(out, prompt)
    todo, seen = [], set(done)
    for p in images:  # once per image: already captioned, or met before under another name (a symlink)
        if (key := _image_key(p)) not in seen:
            seen.add(key)
            todo.append(p)
    counts = {"images": len(images), "skipped": len(images) - len(todo), "captioned": 0, "failed": 0}
    try:
        f = out.open("a", encoding="utf-8")
    except OSError as e:
        raise _out_error(out, e) from None
    bar = tqdm(total=len(todo), disable=not progress, unit="img", file=sys.stderr)
    finished = False
    try:
        for i in range(0, len(todo), batch_size):
            chunk = todo[i : i + batch_size]
            t0 = time.perf_counter()
            try:
                answers = pipe.batch([[_user_message(prompt, [str(p)])] for p in chunk], **sampling)
            except (ValueError, OSError) as e:  # one bad image must not stop the run: retry the chunk one by one
                answers = []
                for p in chunk:
                    try:
                        answers.extend(pipe.batch([[_user_message(prompt, [str(p)])]], **sampling))
                    except (ValueError, OSError) as e1:
                        answers.append(None)
                        print(f"skipped {p}: {e1 if len(chunk) > 1 else e}", file=sys.stderr)
            dt = (time.perf_counter() - t0) / len(chunk)
            lines = []
            for p, a in zip(chunk, answers):
                if a is None:
                    counts["failed"] += 1
                    continue
                rec = {
                    "image": os.path.abspath(p),  # resumable from any working directory
                    "prompt": prompt,
                    "caption": a.text.strip(),
                    "finish_reason": a.finish_reason,
                    "seconds": round(dt, 3),
                }
                lines.append(json.dumps(rec, ensure_ascii=False) + "\n")
            try:
                f.write("".join(lines))
                f.flush()
            except OSError as e:
                reason = (e.strerror or str(e)).lower()
                raise OSError(
                    f"cannot write the output file {out}: {reason}; the records written before are kept, "
                    "fix that and run the same command again to resume"
                ) from None
            counts["captioned"] += len(lines)
            bar.update(len(chunk))
        finished = True
    finally:
        try:
            f.close()
        except OSError as e:  # after an error, that one is the news (a torn last record is cut on resume)
            if finished:
                raise _out_error(out, e) from None
    bar.close()
    return counts
