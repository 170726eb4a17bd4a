"""LLaVA-format training records: read from JSON / JSONL, checked without decoding images, turned into messages.

A record (one line of a .jsonl file, or one element of the array of a .json file)::

    {"id": "000001", "image": "coco/000001.jpg",               # or a list of paths, or absent (text only)
     "video": "clips/dance",                                   # optional: a folder of frames (OneVision)
     "conversations": [{"from": "human", "value": "<image>\\nWhat is it?"},
                       {"from": "gpt", "value": "A cat."}, ...]}

Paths are relative to the ``image_folder``. One ``<image>`` placeholder per image (a single image's placeholder
is moved to the front of its turn followed by "\\n", as the original LLaVA code does; with several images, so is
the placeholder of a turn holding only one, as LLaVA-NeXT does); a video takes one
``<video>`` placeholder (or one ``<image>`` when the record has no images, as LLaVA-NeXT's video data writes it).
``train.data`` builds a dataset on top of these, ``train.mixture`` a weighted mixture of datasets.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..filekinds import refuse_binary
from ..processing.templates import IMAGE, VIDEO
from .labels import SampleError

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


@dataclass
class Record:
    data: dict[str, Any]
    where: str  # "file.jsonl:12" or "records[3]": how errors name it

    @property
    def id(self) -> str:
        return str(self.data.get("id", self.where)) if isinstance(self.data, dict) else self.where


# -- reading ---------------------------------------------------------------------------------------------------


def read_records(path: str | Path, on_error: str = "raise", skipped: Counter | None = None) -> list[Record]:
    """Records of a .json (array) or .jsonl (one object per line) file; broken lines name file and line."""
    out = []
    for rec in iter_records(path):
        if isinstance(rec, SampleError):
            _fail(rec, on_error, skipped)
        else:
            out.append(rec)
    return out


def check_data_file(path: str | Path, key: str | None = None) -> Path:
    """``path`` as a Path if it is a file; a directory or a missing file is one clear error naming it (and the
    recipe ``key`` that gave it, if any)."""
    path = Path(path)
    if path.is_dir():
        where = f"{key} {path}" if key else str(path)
        raise ValueError(f"{where} is a directory; pass the data file (.json array or .jsonl) inside it")
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}" + (f" ({key})" if key else ""))
    return path


def iter_records(path: str | Path) -> Iterator[Record | SampleError]:
    """Each record of the file, or a ``bad_json`` SampleError naming the file and line where one is broken.

    A file holding one array is parsed whole (a break in it ends a .json file; a .jsonl file is then read line
    by line, as is any file that does not start with "["). A UTF-8 byte order mark (Windows editors write one) is
    ignored. A file that is one JSON object other than a record (``{"data": [...]}``) is refused with a
    ValueError: read as lines it would be one record without a conversation.
    """
    path = check_data_file(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: drops a leading byte order mark, if any
    except UnicodeDecodeError as e:
        with path.open("rb") as f:  # the first bytes only: the file may be gigabytes
            head = f.read(16)
        refuse_binary(path, head, "a JSON / JSON lines data file")
        raise ValueError(
            f"{path} is not UTF-8 text (byte {e.start}); training data is JSON / JSON lines in UTF-8: re-save it so"
        ) from None
    one = _single_object(path, text) if text.lstrip().startswith("{") else None
    if one is not None:  # a file of one record, pretty-printed or not
        yield Record(one, f"{path}:1")
        return
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            items = None
            if path.suffix != ".jsonl":  # a .jsonl file is read line by line below: its broken lines are named
                yield SampleError("bad_json", f"{path}:{e.lineno}: broken JSON ({e.msg}, column {e.colno})")
                return
        if isinstance(items, list):  # also a .jsonl file holding one JSON array (a common mix-up)
            yield from (Record(r, f"{path}[{i}]") for i, r in enumerate(items))
            return
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield Record(json.loads(line), f"{path}:{n}")
        except json.JSONDecodeError as e:
            yield SampleError("bad_json", f"{path}:{n}: broken JSON line ({e.msg}, column {e.colno})")


def _single_object(path: Path, text: str) -> dict[str, Any] | None:
    """The record of a file that is one JSON object with ``conversations``; None for JSON lines (or broken JSON,
    reported line by line). A file that is one other object (``{"data": [...]}``) is refused: ValueError."""
    try:
        top = json.loads(text)
    except json.JSONDecodeError:
        return None
    if "conversations" in top:
        return top
    lists = [f"{k!r} ({len(v)} items)" for k, v in top.items() if isinstance(v, list)]
    held = f"; its key {lists[0]} may be the records: save that list alone as the file" if lists else ""
    raise ValueError(
        f"{path}: expected a JSON array of records (the LLaVA format) or JSON lines (one record per line), got one "
        f"JSON object with keys {', '.join(map(repr, list(top)[:5]))}{held}"
    )


def _fail(err: SampleError, on_error: str, skipped: Counter | None) -> None:
    if on_error == "raise" or skipped is None:
        raise err
    skipped[err.reason] += 1


def as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


def image_paths(record: dict[str, Any], image_folder: str | Path | None) -> list[Path]:
    root = Path(image_folder) if image_folder else Path(".")
    return [root / p for p in as_list(record.get("image"))]


def video_path(record: dict[str, Any], image_folder: str | Path | None) -> Path | None:
    v = record.get("video")
    return None if not v else (Path(image_folder) if image_folder else Path(".")) / str(v)


def frame_order(path: Path) -> list[tuple[int, int, str]]:
    """Sort key of frame files in natural name order: digit runs compare as numbers, so frame_2.png comes before
    frame_10.png (zero-padded names such as ffmpeg's 00002.png sort the same either way)."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", path.name.lower()) if t]


def frame_files(folder: Path) -> list[Path]:
    """The frames of a video folder (images with a `FRAME_SUFFIXES` suffix) in natural name order (`frame_order`)."""
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES), key=frame_order)


def to_messages(record: dict[str, Any], rid: str | None = None) -> list[dict[str, Any]]:
    """LLaVA ``conversations`` -> messages with placeholder strings (``human`` -> user, ``gpt`` -> assistant).

    Checks: a non-empty conversation with a user turn and a non-empty assistant answer; one ``<image>`` per
    image and one ``<video>`` per video. A single image's (or video's) placeholder moves to the turn's front
    (a turn of the placeholder alone stays just that); with several images, that of a turn holding only one.
    """
    rid = rid if rid is not None else str(record.get("id"))
    for key in ("image", "video"):
        v = record.get(key)
        paths = v if isinstance(v, list) and key == "image" else [v]
        if v is not None and not all(isinstance(x, str) for x in paths):  # str(5) would look for a file "5"
            what = "a path (a string) or a list of paths" if key == "image" else "a folder path (a string)"
            raise SampleError("bad_record", f"'{key}' must be {what}, got {v!r:.60}", rid)
    conv = record.get("conversations")
    if not isinstance(conv, list) or not conv:
        raise SampleError("empty_conversation", "no conversations", rid)
    messages = []
    for i, turn in enumerate(conv):
        if not isinstance(turn, dict) or "from" not in turn:
            raise SampleError("bad_record", f"turn {i} must be an object with 'from' and 'value'", rid)
        role = ROLES.get(str(turn["from"]).lower())
        if role is None:
            raise SampleError("bad_record", f"turn {i}: unknown speaker {turn['from']!r} (use human / gpt)", rid)
        value = turn.get("value")
        if value is None:  # "" for a missing text would train an empty turn as if that were meant
            raise SampleError("bad_record", f"turn {i}: 'value' is missing or null; give the turn's text", rid)
        if not isinstance(value, str):  # str() would train a list's repr ("['A cat.']"); a 0 must not become ""
            shown = json.dumps(value, default=repr)  # (Python records may hold numpy numbers, bytes, ...)
            raise SampleError(
                "bad_record",
                f"turn {i}: 'value' must be the turn's text as a JSON string, got {type(value).__name__} "
                f'({shown[:40]}{"..." if len(shown) > 40 else ""}); write it as text, e.g. a number as "2"',
                rid,
            )
        messages.append({"role": role, "content": value})
    if any(m["role"] == "system" for m in messages[1:]):
        raise SampleError("bad_record", "a system turn may only come first", rid)
    body = [m for m in messages if m["role"] != "system"]
    if not any(m["role"] == "assistant" and m["content"].strip() for m in body) or not any(
        m["role"] == "user" for m in body
    ):
        raise SampleError("empty_conversation", "the conversation needs a human turn and a non-empty gpt answer", rid)
    n_img, has_video = len(as_list(record.get("image"))), bool(record.get("video"))
    text = "".join(m["content"] for m in messages)
    if has_video and VIDEO not in text and n_img == 0 and text.count(IMAGE) == 1:  # LLaVA-NeXT video records
        for m in messages:
            m["content"] = m["content"].replace(IMAGE, VIDEO)
        text = text.replace(IMAGE, VIDEO)
    if text.count(IMAGE) != n_img or text.count(VIDEO) != int(has_video):
        raise SampleError(
            "placeholder_mismatch",
            f"{text.count(IMAGE)} {IMAGE} placeholder(s) for {n_img} image(s), {text.count(VIDEO)} {VIDEO} for "
            f"{int(has_video)} video(s)"
            + (
                "; the record has 'images', and the LLaVA format's key is 'image' (a path or a list of paths)"
                if "images" in record and "image" not in record
                else ""
            ),
            rid,
        )
    for mark, n in ((IMAGE, n_img), (VIDEO, int(has_video))):
        for m in messages:
            c = m["content"]
            # several images: LLaVA-NeXT moves a placeholder only in a turn holding just one, not already in front
            if n == 1 and mark in c or n > 1 and c.count(mark) == 1 and not c.startswith(mark):
                # strip() last, as LLaVA does: a turn holding only the placeholder gets no "\n" after it
                m["content"] = (mark + "\n" + c.replace(mark, "").strip()).strip()
    return messages


def check_record(record: Record, image_folder: str | Path | None) -> None:
    """The cheap checks (no image decoding): conversation, placeholders, files exist. Raises SampleError."""
    if not isinstance(record.data, dict):
        raise SampleError("bad_record", "a record must be a JSON object")
    to_messages(record.data, record.id)
    for p in image_paths(record.data, image_folder):
        if not p.is_file():
            if image_folder is not None and not Path(image_folder).is_dir():  # every image would be missing
                raise ValueError(
                    f"image folder not found: {image_folder} (data.image_folder, or --image-folder: the folder the "
                    "records' image paths are relative to)"
                )
            raise SampleError("missing_image", f"image file not found: {p}", record.id)
    v = video_path(record.data, image_folder)
    if v is not None and (not v.is_dir() or not frame_files(v)):
        raise SampleError("missing_image", f"video folder not found or without frames: {v}", record.id)
