"""The body of ``llava caption``: batch inference over many images into a resumable JSONL file."""

from __future__ import annotations

import glob
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from .commands import check_given, check_sampling, check_utf8, user_message
from .filekinds import refuse_binary
from .pipeline import Pipeline

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


def find_images(pattern: str) -> list[Path]:
    check_given(pattern, "the images argument", "a directory or a glob of images")
    p = Path(pattern)
    if p.is_dir():
        files = sorted(p.rglob("*"))
    elif p.is_file():  # an existing file is itself, even named like a glob ("photo [1].png")
        files = [p]
    else:
        files = sorted(Path(f) for f in glob.glob(pattern, recursive=True))
    images = [f for f in files if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise FileNotFoundError(f"no images found at {pattern} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return images


def _out_error(out: Path, e: OSError, doing: str = "write") -> OSError:
    reason = (e.strerror or str(e)).lower()
    return OSError(f"cannot {doing} the output file {out}: {reason}; pass a writable file path with --out")


def check_output_file(out_path: str) -> Path:
    """The ``--out`` of ``caption`` must be a file we can append to; say what is wrong before any work starts."""
    check_given(out_path, "--out", "the results file, e.g. captions.jsonl")
    out = Path(out_path)
    if out.is_dir():
        raise ValueError(
            f"cannot write the output file {out}: it is a directory; pass a file path like {out / 'captions.jsonl'}"
        )
    if out.exists() and not out.is_file():  # /dev/stdout, a FIFO: neither re-read on resume nor appended to safely
        raise ValueError(
            f"cannot write the output file {out}: it is not a regular file (a device or a pipe); pass a file path "
            "like captions.jsonl (it is read back to resume)"
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
    check_utf8(prompt, "--prompt")
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


RECORD_START = b'{"image": '  # how every record this module writes begins (json.dumps, "image" first)


def _record(line: bytes) -> dict[str, Any] | None:
    """One JSONL caption record (with its "image" path), or None when the line is not one."""
    try:
        rec = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    image = rec.get("image") if isinstance(rec, dict) else None
    return rec if isinstance(image, str) and image else None


def _json_line(rec: dict[str, Any]) -> str:
    """One JSONL record; a file name that is not UTF-8 (its bytes kept as lone surrogates by Python) is written
    \\u-escaped, as JSON cannot hold raw bytes: read back, it names the same file (the resume key)."""
    line = json.dumps(rec, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        line = json.dumps(rec)
    return line + "\n"


def made_by(model: str | None, sampling: dict[str, Any], precision: dict[str, Any] | None = None) -> dict[str, Any]:
    """What each caption record says of how it was made: the model (its resolved path, or the hub id), its weight
    files' fingerprint as ``llava eval`` records it (a checkpoint retrained in place is another model), how its
    weights were loaded (``precision``: {"dtype": "float32", "quantize": None}, as ``llava caption``'s flags say;
    None: not known, not recorded) and the sampling settings. ``model`` None (a pipeline made elsewhere): the
    sampling settings and the precision only."""
    from .eval.command import weights_fingerprint

    made: dict[str, Any] = {"sampling": json.loads(json.dumps(sampling))}  # as read back (a tuple of stops: a list)
    if precision is not None:
        made["precision"] = dict(precision)
    if model is None:
        return made
    path = Path(model)
    return {"model": str(path.resolve()) if path.exists() else model, "weights": weights_fingerprint(path)} | made


def _check_made_alike(where: str, rec: dict[str, Any], made: dict[str, Any]) -> None:
    """Refuse to resume into records of another model or other sampling: one file would mix two kinds of captions.
    What a record does not say (records written before these fields) is not compared."""
    fix = "or write to another --out"
    theirs = rec.get("model")
    known = "model" in made  # not for a pipeline made elsewhere: which model wrote the file cannot be compared
    if known and isinstance(theirs, str) and theirs != made["model"]:
        raise ValueError(
            f"{where} was captioned by model {theirs!r}, not {made['model']!r}; pass --model {theirs} to resume, {fix}"
        )
    if known and "weights" in rec and rec["weights"] != made["weights"]:
        raise ValueError(
            f"{where} was captioned by other weights of model {made['model']!r} (its files changed, or were copied, "
            f"since: {rec['weights']!r} there, {made['weights']!r} now); write to another --out, or delete the file "
            "to caption every image again"
        )
    if isinstance(theirs := rec.get("precision"), dict) and "precision" in made:
        if diff := _differing(theirs, made["precision"]):
            said = "; ".join(f"--{k} {a or 'none'} there, {b or 'none'} now" for k, (a, b) in diff.items())
            raise ValueError(
                f"{where} was captioned from weights loaded another way ({said}); pass the same flags to resume, {fix}"
            )
    if isinstance(sampling := rec.get("sampling"), dict):
        if diff := _differing(sampling, made["sampling"]):
            said = "; ".join(f"--{k.replace('_', '-')} {a!r} there, {b!r} now" for k, (a, b) in diff.items())
            raise ValueError(
                f"{where} was captioned with other sampling settings ({said}); pass the same flags to resume, {fix}"
            )


def _differing(theirs: dict[str, Any], ours: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The settings a record says (``theirs``) that differ from this run's: key -> (theirs, ours). What the record
    does not say is not compared."""
    return {k: (theirs[k], v) for k, v in ours.items() if k in theirs and theirs[k] != v}


def read_done(out: Path, prompt: str | None = None, made: dict[str, Any] | None = None) -> set[str]:
    """Resume keys of the images already captioned in ``out`` (read once). With ``prompt``, records made with
    another prompt are refused, and with ``made`` (:func:`made_by`) records of another model or other sampling
    settings: resuming would mix two kinds of captions in one file.

    A last line without its newline was being written when the run died: it is cut off (its image is captioned
    again) - unless it is a whole record, which only gets its newline back. Any other line that is not a
    caption record is an error: the file is not ours to rewrite. Every line is checked before the file is
    touched, and only a tail that starts like a record (``{"image": ``) is cut: another file given as ``--out``
    (notes, an image) is refused as it is."""
    try:
        data = out.read_bytes()
    except FileNotFoundError:
        return set()
    except OSError as e:
        raise _out_error(out, e, "read") from None
    refuse_binary(out, data[:16], "a caption JSONL file (--out: where the captions go)")
    keep = data.rfind(b"\n") + 1 if data and not data.endswith(b"\n") else len(data)
    lines = data[:keep].split(b"\n")[:-1]  # the whole lines (data[:keep] is empty or ends with its newline)
    tail = data[keep:]
    torn = bool(tail) and _record(tail) is None
    if torn and not (tail.startswith(RECORD_START) or RECORD_START.startswith(tail)):
        raise ValueError(f"{out}:{len(lines) + 1} is not a caption record; move the file away or fix it")
    done = set()
    for n, line in enumerate(lines + ([tail] if tail and not torn else []), 1):
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
        if made is not None:
            _check_made_alike(f"{out}:{n}", rec, made)
        done.add(_image_key(rec["image"]))
    if tail:
        try:
            with out.open("r+b") as f:
                if torn:
                    f.truncate(keep)
                else:
                    f.seek(0, os.SEEK_END)
                    f.write(b"\n")
        except OSError as e:
            raise _out_error(out, e) from None
        if torn:
            note = f"dropped an unfinished last record of {len(tail)} bytes (its image is captioned again)"
            print(f"{out}: {note}", file=sys.stderr)
    return done


def caption(
    pipe: Pipeline,
    pattern: str,
    out_path: str,
    *,
    prompt: str = "Describe the image briefly.",
    batch_size: int = 4,
    progress: bool = True,
    model: str | None = None,
    precision: dict[str, Any] | None = None,
    **sampling: Any,
) -> dict[str, int]:
    """One JSON line per image in ``out_path``; images already there are skipped (resumable). ``model``: the
    directory or hub id ``pipe`` was loaded from (None: not known, not recorded), recorded with ``precision`` (how
    its weights were loaded, see :func:`made_by`) and the sampling settings in every record; a file captioned by
    another model or with other settings is refused rather than resumed."""
    from tqdm import tqdm

    images, out = check_caption(pattern, out_path, prompt, batch_size, sampling)
    # what is wrong with the request itself (a reserved placeholder in the prompt, no room in the context for
    # --max-new-tokens) fails the run once, before any image, rather than skipping every image with it
    pipe.check_request([user_message(prompt, [])], sampling.get("max_new_tokens", 256))
    made = made_by(model, sampling, precision)
    done = read_done(out, prompt, made)
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
                answers = pipe.batch([[user_message(prompt, [str(p)])] for p in chunk], **sampling)
            except (ValueError, OSError) as e:  # one bad image must not stop the run: retry the chunk one by one
                answers = []
                for p in chunk:
                    try:
                        answers.extend(pipe.batch([[user_message(prompt, [str(p)])]], **sampling))
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
                    **made,
                }
                lines.append(_json_line(rec))
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
