"""An output directory filled all at once: written into a hidden sibling, renamed into place when complete.

A command that fails halfway (disk full, an interrupted run, an error found only while writing) leaves no
half-written ``out`` behind, so the same command can simply be run again.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """Yield a new empty directory beside ``out``; on success it becomes ``out`` (which must be absent or empty),
    on any error it is removed, with the parent directories this created, and ``out`` is left as it was."""
    out = Path(out)
    if out.is_dir():  # an existing empty directory: `.`, a symlink, a mount point cannot be renamed over
        with _staged_inside(out) as tmp:
            yield tmp
        return
    created = [p for p in (out.parent, *out.parent.parents) if not p.exists()]
    tmp = out.parent / f".{out.name}.partial-{secrets.token_hex(4)}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(tmp)  # the umask's permissions, as out would get (tempfile's are owner-only)
    except OSError as e:
        _remove(created)
        raise OSError(e.errno, e.strerror, str(out)) from None
    try:
        yield tmp
        os.replace(tmp, out)  # replaces an empty directory; refuses one that holds files
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove(created)
        if isinstance(e, OSError) and isinstance(e.filename, str) and Path(e.filename).is_relative_to(tmp):
            where = out / Path(e.filename).relative_to(tmp)  # name the file as the user knows it
            raise OSError(e.errno, e.strerror, str(where)) from None
        raise


@contextlib.contextmanager
def _staged_inside(out: Path) -> Iterator[Path]:
    """``staged_dir`` for an existing (empty) ``out``: a hidden directory inside it, whose files are moved up
    into ``out`` when complete (renames within one file system); on any error it is removed, ``out`` left empty."""
    tmp = out / f".partial-{secrets.token_hex(4)}"
    try:
        os.mkdir(tmp)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(out)) from None
    try:
        yield tmp
        for p in sorted(tmp.iterdir()):
            os.replace(p, out / p.name)
        tmp.rmdir()
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and isinstance(e.filename, str) and Path(e.filename).is_relative_to(tmp):
            raise OSError(e.errno, e.strerror, str(out / Path(e.filename).relative_to(tmp))) from None
        raise


def _remove(created: list[Path]) -> None:
    """Remove the directories in ``created`` (innermost first) that are still empty."""
    for p in created:
        with contextlib.suppress(OSError):
            p.rmdir()
