"""Readers for the file formats benchmarks ship in: JSON, JSONL, TSV (base64 images), parquet (optional).

Every reader names the file and the line of a malformed record, e.g.
``ValueError("bad.jsonl:3: not valid JSON (Expecting value); fix or remove that line")``.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ...filekinds import refuse_binary


def read_text(path: Path) -> str:
    """The text of a UTF-8 file; any other encoding is refused, naming the file and where the first byte that is not
    UTF-8 sits, e.g. ``ValueError("a.jsonl:3: not UTF-8 text (byte 0xe9 at offset 41); re-save the file as UTF-8")``
    (a Latin-1 "é" in line 3)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        refuse_binary(path, data[:16], "a text file (JSON, JSONL, CSV or TSV)")
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); re-save the file as UTF-8"
        ) from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """One JSON object per non-empty line (lines end at \\n, \\r\\n or \\r, as Python's text files read them)."""
    records = []
    with io.StringIO(read_text(path), newline=None) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg}); fix or remove that line") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object, got {type(record).__name__}")
            record["__line__"] = n
            records.append(record)
    return records


def read_json(path: Path) -> Any:
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None


def read_tsv(path: Path) -> list[dict[str, str]]:
    """A tab-separated file with a header row (MMBench / VLMEvalKit layout); each row gets ``__line__``."""
    csv.field_size_limit(sys.maxsize)  # base64 images are long fields
    with io.StringIO(read_text(path), newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        try:
            header = next(reader)
        except StopIteration:
            raise ValueError(f"{path}: empty file (expected a header row)") from None
        rows = []
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise ValueError(
                    f"{path}:{reader.line_num}: {len(row)} fields but the header has {len(header)}; "
                    "the file is not a valid TSV"
                )
            record = dict(zip(header, row))
            record["__line__"] = str(reader.line_num)
            rows.append(record)
    return rows


def read_parquet(path: Path, split: str | None = None) -> list[dict[str, Any]]:
    """Rows of a parquet file or of every parquet file under a directory (the lmms-lab releases) as dicts; needs
    pyarrow (``pip install llavakit[eval]``). ``split``: the benchmark's evaluation split; when a directory holds
    files of that split (``validation-00000-of-00001.parquet``) only they are read, so a release's test split
    (answers withheld) or train split is not mixed in."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(
            f"{path}: reading parquet needs pyarrow; install it with `pip install 'llavakit[eval]'`"
        ) from None
    rows = []
    files = sorted(path.glob("**/*.parquet")) if path.is_dir() else [path]
    if split is not None and path.is_dir():
        files = [f for f in files if f.name.startswith(f"{split}-")] or files
    for file in files:
        try:
            table = pq.read_table(file)
        except Exception as e:  # pyarrow raises its own ArrowInvalid etc.
            raise ValueError(f"{file}: cannot read as parquet ({e})") from None
        for i, row in enumerate(table.to_pylist()):
            # fallback ids rest on this: the file's name only when there are several (one file keeps "row N")
            row["__line__"] = f"{file.name} row {i}" if len(files) > 1 else f"row {i}"
            rows.append(row)
    return rows


def config_folder(root: Path, names: Iterable[str]) -> Path:
    """The folder of one dataset config when ``root`` holds parquet files of several in their own folders.

    lmms-lab/DocVQA's repository holds ``DocVQA/`` and ``InfographicVQA/``: reading it whole would mix the two.
    The folder named one of ``names`` (any case) is picked; without one the choice is refused, naming the folders.
    A root whose parquet files sit in one folder (``data/``) or directly in it is returned as it is.
    """
    if not root.is_dir():
        return root
    folders = sorted({f.relative_to(root).parts[0] for f in root.glob("*/**/*.parquet")})
    if len(folders) <= 1 or any(root.glob("*.parquet")):
        return root
    wanted = {n.lower() for n in names}
    for folder in folders:
        if folder.lower() in wanted:
            return root / folder
    raise ValueError(
        f"{root} holds the parquet files of several datasets ({', '.join(folders)}); "
        "point --data at the folder of the one to evaluate"
    )


def parquet_image(value: Any, where: str) -> bytes:
    """The bytes of a parquet image cell (``{"bytes": ..., "path": ...}`` in the HF datasets layout)."""
    if isinstance(value, dict) and value.get("bytes"):
        return bytes(value["bytes"])
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    raise ValueError(f"{where}: the image cell holds no image bytes")


def base64_image(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{where}: the image field is not valid base64") from None


def tsv_image(row: dict[str, Any], by_index: dict[str, dict[str, Any]], path: Path) -> str:
    """The base64 image text of a TSV row. VLMEvalKit's files let a row share another's image: an image cell of at
    most 64 characters holding a number is the ``index`` of the row whose cell holds the image (one step, never a
    chain). A reference to a row the file lacks is refused, naming both indices, the file and the fix."""
    cell = str(row["image"])
    ref = cell.strip()
    if len(cell) > 64 or not ref.isdigit():
        return cell
    where = f"{path}:{row.get('__line__', '?')}"
    target = by_index.get(ref)
    if target is None:
        raise ValueError(
            f"{where}: row {row.get('index')}'s image cell refers to the image of row {ref}, but {path.name} has no "
            f"row with index {ref}; restore that row, or put the base64 image in this row's image cell"
        )
    image = str(target["image"])
    if len(image) <= 64:
        raise ValueError(
            f"{where}: row {row.get('index')}'s image cell refers to row {ref}, whose image cell is itself a "
            f"reference ({image.strip()!r}); point it at the row holding the base64 image"
        )
    return image


def require(record: dict[str, Any], keys: Iterable[str], path: Path) -> None:
    """Refuse a record lacking one of ``keys``, naming the file and line."""
    missing = [k for k in keys if k not in record]
    if missing:
        line = record.get("__line__", "?")
        raise ValueError(f"{path}:{line}: record lacks {', '.join(repr(k) for k in missing)}")


def find(root: Path, patterns: Iterable[str]) -> Path | None:
    """The first file under ``root`` matching one of the glob ``patterns`` (tried in order), or None."""
    if root.is_file():
        return root
    for pattern in patterns:
        hits = sorted(p for p in root.glob(pattern) if p.is_file())
        if hits:
            return hits[0]
    return None


QUESTION_KEYS = ("question_id", "image", "text")  # a record of LLaVA's eval question files (JSON lines)


def question_jsonl(base: Path, preferred: str) -> Path | None:
    """LLaVA's question file in the directory ``base``: the first matching ``preferred`` (its own name, e.g.
    "llava_vqav2*.jsonl"), else the first ``*.jsonl`` whose first record has ``QUESTION_KEYS``. Other JSON lines
    files are not taken for it: llavakit's own ``predictions.jsonl`` (when ``--out`` is the data folder, a resumed
    run read its answers as questions), an answer file kept beside the data."""
    if not base.is_dir():
        return None
    hits = sorted(p for p in base.glob(preferred) if p.is_file())
    if hits:
        return hits[0]
    return next((p for p in sorted(base.glob("*.jsonl")) if p.is_file() and _has_question_keys(p)), None)


def _has_question_keys(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8") as f:
            first = next((line for line in f if line.strip()), "")
        record = json.loads(first)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(record, dict) and all(k in record for k in QUESTION_KEYS)


def image_dir(root: Path, candidates: Iterable[str]) -> Path:
    """The first existing sub-directory of ``root`` among ``candidates`` (else ``root`` itself)."""
    base = root if root.is_dir() else root.parent
    for name in candidates:
        if (base / name).is_dir():
            return base / name
    return base


def answer_text(value: Any, where: str) -> str:
    """A reference answer that must be one string (or number): a list or mapping there is a malformed record."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"{where}: the reference answer must be a string, got {type(value).__name__} {value!r}")
    return str(value)


def answer_list(value: Any, where: str) -> list[str]:
    """Reference answers that must be a non-empty list of strings (a bare string would be split into letters)."""
    if not isinstance(value, (list, tuple)) or not value:
        hint = " (a test split? its answers are scored by the official server)" if value is None else ""
        raise ValueError(f"{where}: the reference answers must be a non-empty list of strings, got {value!r}{hint}")
    return [answer_text(v, where) for v in value]
