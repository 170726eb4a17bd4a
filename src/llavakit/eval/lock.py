"""One ``llava eval`` at a time per output directory: an exclusive lock on ``--out`` for the run's duration.

Two runs appending to one ``predictions.jsonl`` (the same command launched twice, or a resume while the first still
runs) answer the same questions twice and may interleave their lines. The lock is ``flock`` on a hidden file inside
the directory: the kernel releases it when the process ends, however it ends (a crash or a kill leaves no stale
lock behind). Where ``fcntl`` is missing (Windows) runs are not locked.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no lock, as before
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".llava-eval.lock"  # inside the output directory; stays there (deleting a lock file races its takers)

_HELD: set[Path] = set()  # directories this process holds: eval_task takes the lock, then run() takes it again


class OutDirBusyError(OSError):
    """Another process holds the output directory's lock."""


def _holder(lock: Path) -> str:
    """`` (pid N)`` as the holder wrote it into the lock file, or nothing when it cannot be read."""
    try:
        pid = lock.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


def _take(fd: int, lock: Path, out_dir: Path) -> None:
    if fcntl is None:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise OutDirBusyError(
            f"{out_dir} is being written by another llava eval{_holder(lock)}; wait for it to finish "
            "(then run the command again to resume) or pass another --out directory"
        ) from None
    except OSError as e:  # a file system without flock (some network mounts): run unlocked, but say so
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
        print(f"warning: cannot lock {out_dir} ({e.strerror}); run one llava eval at a time there", file=sys.stderr)
        return
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode("ascii"))


def _remove_if_unused(out_dir: Path, lock: Path) -> None:
    """A directory this run created and left holding only the lock file (it stopped before writing anything) is
    removed, as a refused run left no directory behind before the lock."""
    try:
        if [p.name for p in out_dir.iterdir()] == [LOCK_NAME]:
            lock.unlink()
            out_dir.rmdir()
    except OSError:
        pass


@contextmanager
def out_dir_lock(out_dir: Path) -> Iterator[None]:
    """Hold ``out_dir`` (created if missing) for the block: another process entering it for the same directory is
    refused at once with :class:`OutDirBusyError`; the same process entering it again (nested) passes."""
    key = out_dir.resolve()
    if key in _HELD:
        yield
        return
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = out_dir / LOCK_NAME
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _take(fd, lock, out_dir)
        _HELD.add(key)
        try:
            yield
        finally:
            _HELD.discard(key)
    finally:
        os.close(fd)  # releases the lock
        if created:
            _remove_if_unused(out_dir, lock)
