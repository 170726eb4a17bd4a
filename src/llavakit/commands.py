"""The bodies of ``llava generate | chat | caption``: plain functions over a Pipeline, no argparse here."""

from __future__ import annotations

import glob
import json
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from .pipeline import Pipeline, load

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


def open_pipeline(
    model: str | None, dtype: str = "float32", quantize: str | None = None, compile: bool = False
) -> Pipeline:
    return load(model or default_model(), dtype=dtype, quantize=quantize, compile=compile)


def _user_message(text: str, images: list[str]) -> dict[str, Any]:
    for p in images:
        if not Path(p).is_file():
            raise FileNotFoundError(f"image file not found: {p}")
    return {
        "role": "user",
        "content": [{"type": "image", "image": p} for p in images] + [{"type": "text", "text": text}],
    }


def generate(pipe: Pipeline, prompt: str, images: list[str], out: TextIO = sys.stdout, **sampling: Any) -> str:
    """Stream the answer to ``out``; return it."""
    parts = []
    for delta in pipe.stream([_user_message(prompt, images)], **sampling):
        out.write(delta)
        out.flush()
        parts.append(delta)
    out.write("\n")
    return "".join(parts)


CHAT_HELP = "commands: /image PATH (attach to your next message), /reset (new conversation), /exit"


def chat(pipe: Pipeline, images: list[str], lines: Iterable[str], out: TextIO = sys.stdout, **sampling: Any) -> int:
    """Interactive multi-turn chat over ``lines`` (stdin); earlier turns stay in the KV cache."""
    messages: list[dict[str, Any]] = []
    pending = list(images)
    out.write(f"llava chat - {CHAT_HELP}\n>>> ")
    out.flush()
    for raw in lines:
        line = raw.strip()
        if line in ("/exit", "/quit"):
            break
        if line == "/reset":
            messages, pending = [], []
            pipe.reset()
            out.write("(new conversation)\n")
        elif line.startswith("/image"):
            path = line[len("/image") :].strip()
            if not Path(path).is_file():
                out.write(f"error: image file not found: {path}\n")
            else:
                pending.append(path)
                out.write(f"(image attached: {path})\n")
        elif line.startswith("/"):
            out.write(f"unknown command {line.split()[0]}; {CHAT_HELP}\n")
        elif line:
            messages.append(_user_message(line, pending))
            pending = []
            try:
                answer = "".join(_echo(pipe.stream(messages, **sampling), out))
            except ValueError as e:  # e.g. the conversation outgrew the context: keep the chat alive
                messages.pop()
                out.write(f"\nerror: {e}\n")
            else:
                messages.append({"role": "assistant", "content": answer})
        out.write(">>> ")
        out.flush()
    out.write("\n")
    return 0


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

    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    images = find_images(pattern)
    out = Path(out_path)
    done = set()
    if out.exists():
        for n, line in enumerate(out.read_text().splitlines(), 1):
            try:
                done.add(json.loads(line)["image"])
            except (json.JSONDecodeError, KeyError, TypeError):
                if n < len(out.read_text().splitlines()):  # a torn last line from a crash is simply redone
                    raise ValueError(f"{out}:{n} is not a caption record; move the file away or fix it") from None
    todo = [p for p in images if str(p) not in done]
    counts = {"images": len(images), "skipped": len(images) - len(todo), "captioned": 0, "failed": 0}
    bar = tqdm(total=len(todo), disable=not progress, unit="img", file=sys.stderr)
    with out.open("a") as f:
        for i in range(0, len(todo), batch_size):
            chunk = todo[i : i + batch_size]
            t0 = time.perf_counter()
            try:
                answers = pipe.batch([[_user_message(prompt, [str(p)])] for p in chunk], **sampling)
            except ValueError as e:  # one bad image must not stop the run: retry the chunk one by one
                answers = []
                for p in chunk:
                    try:
                        answers.extend(pipe.batch([[_user_message(prompt, [str(p)])]], **sampling))
                    except ValueError as e1:
                        answers.append(None)
                        print(f"skipped {p}: {e1 if len(chunk) > 1 else e}", file=sys.stderr)
            dt = (time.perf_counter() - t0) / len(chunk)
            for p, a in zip(chunk, answers):
                if a is None:
                    counts["failed"] += 1
                    continue
                rec = {
                    "image": str(p),
                    "prompt": prompt,
                    "caption": a.text,
                    "finish_reason": a.finish_reason,
                    "seconds": round(dt, 3),
                }
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                counts["captioned"] += 1
            f.flush()
            bar.update(len(chunk))
    bar.close()
    return counts
