"""What a file that should be text is instead, from its first bytes: a PNG passed where a JSON data file was meant
was refused as "not UTF-8 text ...; re-save the file as UTF-8", which sends the user the wrong way."""

from __future__ import annotations

MAGIC = {
    b"\x89PNG\r\n\x1a\n": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF87a": "a GIF image",
    b"GIF89a": "a GIF image",
    b"PK\x03\x04": "a zip archive",
    b"PAR1": "a Parquet file",
    b"\x1f\x8b": "a gzip file",
    b"%PDF": "a PDF document",
}


def binary_kind(head: bytes) -> str | None:
    """``"a PNG image"`` for bytes that start like one (also JPEG, GIF, zip, Parquet, gzip, PDF); None otherwise.
    Worked example: ``binary_kind(b"\\x89PNG\\r\\n\\x1a\\n...")`` -> ``"a PNG image"``; ``binary_kind(b'{"id"')`` ->
    None."""
    return next((kind for magic, kind in MAGIC.items() if head.startswith(magic)), None)


def refuse_binary(path: object, head: bytes, wanted: str) -> None:
    """Raise the error for a file of ``head`` bytes given where ``wanted`` (e.g. "a JSON / JSONL data file") was
    meant, when it starts like a known binary kind; return otherwise."""
    if kind := binary_kind(head):
        raise ValueError(f"{path} is {kind}, not {wanted}; give the path of that file instead") from None
