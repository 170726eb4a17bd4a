"""Where a run writes: ``train.output_dir`` refused, before the model and data load, when training there would
overwrite weights (``model.init`` itself, a finished model) or cannot write at all (a file, a path inside one, a
directory that cannot be created)."""

from __future__ import annotations

import contextlib
import os
import random
import stat
import time
from pathlib import Path

from .checkpointing import checkpoint_dirs

TRIES = 20  # looks at the directories an output_dir needs, while other processes' checks remove theirs
_JITTER = random.Random()  # its own generator: the global one, which seeds training, is left alone
FINISHED_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json", "adapter")  # a model's files


def _kind(path: Path) -> str:
    """What is at ``path``, from one ``stat`` (two calls, exists() then is_dir(), can straddle another process's
    rmdir and see a directory as a file): "dir", "missing" (nothing, or a path inside a file) or "other"."""
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return "missing"
    return "dir" if stat.S_ISDIR(st.st_mode) else "other"


def _make_missing(out: Path, fix: str) -> list[Path] | None:
    """Make the directories ``out`` needs, top down; return them (None: a parent vanished while they were made,
    removed by another process's check: look again). One that another process's check made meanwhile counts as
    made: the directory can be created, which is all the check asks."""
    missing, parent = [], out
    while (kind := _kind(parent)) != "dir":
        if kind == "other":
            raise ValueError(f"train.output_dir {out} {_in_file(out, parent)}; {fix}")
        missing.append(parent)
        parent = parent.parent
    made: list[Path] = []
    for d in reversed(missing):  # top down
        try:
            os.mkdir(d)
        except FileExistsError:  # another process's, or a file put there since
            if _kind(d) == "other":
                _remove(made)
                raise ValueError(f"train.output_dir {out} {_in_file(out, d)}; {fix}") from None
        except FileNotFoundError:  # its parent, another process's, removed since
            _remove(made)
            return None
        except OSError:  # no room, no permission, a read-only file system: what was made goes again
            _remove(made)
            raise
        made.append(d)  # made here, or by another process that may be done with it: removed again either way
    return made


def _in_file(out: Path, file: Path) -> str:
    return "is a file, not a directory" if file == out else f"lies inside {file}, which is a file"


def _remove(made: list[Path]) -> None:
    for d in reversed(made):  # deepest first
        with contextlib.suppress(OSError):  # another process may have made something inside it meanwhile
            d.rmdir()


def check_can_create(out: Path) -> None:
    """Refuse, before the model and data load, a ``train.output_dir`` that is a file, lies inside a file, or cannot
    be created (no permission, a read-only or virtual file system): the directories it needs are made and removed
    again (the run makes them for good when it starts writing). Under torchrun every process checks at once: each
    looks with one ``stat`` per path, takes a directory another process made as made, and looks again (a few tries,
    at random short intervals) when a parent vanishes under it. Then an empty directory on the way to ``out`` may
    stay behind (removed by none of them while another's was inside it); the run makes ``out`` there anyway.

    Worked example, two ranks, ``out`` = runs/new/run, runs/ present: rank A makes runs/new and runs/new/run; rank B's
    mkdir of runs/new meets EEXIST (A's: fine), then A removes both and B's mkdir of runs/new/run meets ENOENT, so B
    looks again, makes both and removes them."""
    fix = "choose a directory you can write, e.g. train.output_dir=runs/my-run"
    try:
        for attempt in range(TRIES):
            made = _make_missing(out, fix)
            if made is not None:
                _remove(made)
                return
            time.sleep(_JITTER.uniform(0, 0.002) * (attempt + 1))  # out of step with the others' checks
        raise ValueError(
            f"train.output_dir {out} cannot be created: its parent directories were removed while it was made, "
            f"{TRIES} times (another program removing them?); run again, or make it first (mkdir -p {out})"
        )
    except OSError as e:  # e.g. a parent this user may not read (stat raises), or one it may not write
        raise ValueError(f"train.output_dir {out} cannot be created ({e.strerror or e}); {fix}") from None


def check_output_dir(out_dir: str | Path, init: str | None, resume: bool) -> None:
    """Refuse an output directory whose contents training would overwrite: ``model.init`` itself, a directory
    inside it, or one whose ``checkpoints/`` or ``adapter/`` (where a run writes besides its top level) holds it:
    the final model, or its checkpoints, would land among the weights the run starts from. Unless resuming, also
    a directory already holding a finished model (``config.json``, ``model.safetensors``: a run with
    ``save_every: 0`` leaves no ``checkpoints/``, only that). A parent of ``model.init`` is fine otherwise
    (``output_dir=runs`` with ``model.init=runs/stage1`` writes beside it)."""
    out = Path(out_dir).resolve()
    check_can_create(out)
    if init and not init.startswith("tiny:") and Path(init).exists():
        src = Path(init).resolve()
        written = [out / "checkpoints", out / "adapter"]
        if out == src or out.is_relative_to(src) or any(src.is_relative_to(w) for w in written):
            how = "is" if out == src else "is inside" if out.is_relative_to(src) else "writes into"
            raise ValueError(
                f"train.output_dir {out} {how} model.init {src}: training would write over the weights it starts "
                "from; choose a fresh train.output_dir (e.g. a sibling directory)"
            )
    held = [name for name in FINISHED_FILES if (out / name).exists()]
    if held and not resume and not checkpoint_dirs(out):  # with checkpoints: the loop's refusal names --resume
        raise FileExistsError(
            f"train.output_dir {out} already holds a trained model ({', '.join(held)}); training would overwrite "
            "it. Choose a fresh train.output_dir, or delete that directory first"
        )
