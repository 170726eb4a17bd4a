"""Where a run writes: ``train.output_dir`` refused, before the model and data load, when training there would
overwrite weights (``model.init`` itself, a finished model) or cannot write at all (a file, a path inside one, a
directory that cannot be created)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from .checkpointing import checkpoint_dirs

FINISHED_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json", "adapter")  # a model's files


def check_can_create(out: Path) -> None:
    """Refuse, before the model and data load, a ``train.output_dir`` that is a file, lies inside a file, or cannot
    be created (no permission, a read-only or virtual file system): the directories it needs are made and the new
    ones removed again (the run makes them for good when it starts writing). Under torchrun every process checks at
    once: a directory another process made and removes again in between is made again (a few tries)."""
    fix = "choose a directory you can write, e.g. train.output_dir=runs/my-run"
    try:
        if out.exists() and not out.is_dir():
            raise ValueError(f"train.output_dir {out} is a file, not a directory; {fix}")
        missing, parent = [], out
        while not parent.exists():
            missing.append(parent)
            parent = parent.parent
        if not parent.is_dir():
            raise ValueError(f"train.output_dir {out} lies inside {parent}, which is a file; {fix}")
        for attempt in range(5):
            try:
                out.mkdir(parents=True, exist_ok=True)
                break
            except FileNotFoundError:  # a parent removed by another process's check between two mkdirs
                if attempt == 4:
                    raise
            except FileExistsError:  # made by another process's check, then removed by it before ours saw it:
                if attempt == 4 or out.is_file():  # pathlib's exist_ok re-checks is_dir() after EEXIST
                    raise
    except OSError as e:  # e.g. a parent this user may not read (exists() raises), or one it may not write
        raise ValueError(f"train.output_dir {out} cannot be created ({e.strerror or e}); {fix}") from None
    for d in missing:  # deepest first
        with contextlib.suppress(OSError):  # another process of the run may have made it its own already
            d.rmdir()


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
