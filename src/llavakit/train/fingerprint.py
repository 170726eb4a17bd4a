"""A cheap fingerprint of a run's training data, kept in its checkpoints so that a resume notices edited data.

The recipe check (``check_same_recipe``) sees only the data's paths; a file edited or replaced between two calls
would go on training in another sample order (and on other samples) while the run claimed one data set. Recorded:

    files    per data file of the recipe (``data.path``, a mixture YAML and the files it lists, ``data.datasets``):
             its size and a hash of its first and last MiB, so a multi-GB JSON costs two 1 MiB reads
    samples  the dataset's sample count (the shuffled order depends on it)
    order    a hash of the per-sample lengths and modalities the length-grouped order is built from

Not seen: an edit inside a file over 2 MiB that keeps its size and every sample's word count, and the images.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

EDGE = 1 << 20  # bytes hashed at each end of a file


def data_files(data: Any) -> list[str]:
    """The data files a recipe's ``data`` section names, as written (a mixture YAML, then the files it lists)."""
    paths = [str(e["path"]) for e in data.datasets or [] if isinstance(e, dict) and "path" in e]
    if data.path:
        paths.append(str(data.path))
        if str(data.path).endswith((".yaml", ".yml")) and Path(data.path).is_file():
            from .mixture import read_mixture

            paths += [str(e["path"]) for e in read_mixture(data.path) if "path" in e]
    return paths


def same_file(was: Any, now: Any, was_cwd: str | None = None) -> bool:
    """True when the path ``was`` (relative to ``was_cwd``, the working directory it was given in, when known) and
    the path ``now`` name one existing file or directory: ``my data/x.jsonl`` and its absolute path, say. Anything
    else (a missing file, a hub id, ``tiny:llava``, a non-string) is not the same unless equal as written."""
    if was == now:
        return True
    if not (isinstance(was, str) and isinstance(now, str) and was and now):
        return False
    try:
        return os.path.samefile(Path(was_cwd or "", was), now)
    except (OSError, ValueError):
        return False


# recipe keys naming a file or directory: the same one given as another path (relative / absolute, through a
# symlink) is the same recipe; so are such keys of ``data.datasets`` entries
PATH_KEYS = frozenset(
    {"model.init", "model.decoder", "model.vision_tower", "data.path", "data.image_folder", "distill.teacher"}
)
ENTRY_PATH_KEYS = frozenset({"path", "json_path", "image_folder"})


def same_setting(key: str, was: Any, now: Any, was_cwd: str | None = None) -> bool:
    """True when recipe key ``key`` (flattened: ``data.path``) has the same value ``was`` then and ``now``; for
    path keys, when both name the same file (``same_file``)."""
    if key in PATH_KEYS:
        return same_file(was, now, was_cwd)
    if key == "data.datasets" and isinstance(was, list) and isinstance(now, list) and len(was) == len(now):
        return all(
            isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys()
            and all(a[k] == b[k] or (k in ENTRY_PATH_KEYS and same_file(a[k], b[k], was_cwd)) for k in a)
            for a, b in zip(was, now)
        )  # fmt: skip
    return was == now


def file_fingerprint(path: str | Path) -> dict[str, Any]:
    """``{"size": bytes, "ends": hash of the first and last MiB}``; ``{"size": None}`` for a missing file."""
    p = Path(path)
    if not p.is_file():
        return {"size": None}
    size = p.stat().st_size
    h = hashlib.blake2b(digest_size=16)
    with open(p, "rb") as f:
        h.update(f.read(EDGE))
        if size > EDGE:
            f.seek(max(EDGE, size - EDGE))
            h.update(f.read(EDGE))
    return {"size": size, "ends": h.hexdigest()}


def data_fingerprint(data: Any, dataset: Any) -> dict[str, Any]:
    """The fingerprint of the recipe's ``data`` section and the dataset built from it (see the module doc)."""
    order = hashlib.blake2b(digest_size=16)
    for name in ("lengths", "modalities"):
        order.update(",".join(map(str, getattr(dataset, name, None) or [])).encode() + b";")
    return {
        "files": {p: file_fingerprint(p) for p in data_files(data)},
        "samples": len(dataset),
        "order": order.hexdigest(),
    }


def data_change(saved: dict[str, Any], now: dict[str, Any], was_cwd: str | None = None) -> str | None:
    """What differs between two fingerprints, in words (the first difference), or None. A file is matched by its
    path as written, else by any path naming the same file (``same_file``, ``was_cwd`` the saved run's directory)."""
    files = now.get("files", {})
    for was_path, was in saved.get("files", {}).items():
        same = (p for p in files if same_file(was_path, p, was_cwd))
        path = was_path if was_path in files else next(same, was_path)
        is_ = files.get(path, {"size": None})
        if is_ == was:
            continue
        if is_["size"] is None:
            return f"{path} is missing"
        if was["size"] is None:
            return f"{path} exists now (it was missing)"
        if is_["size"] != was["size"]:
            return f"{path} is {is_['size']} bytes, was {was['size']}"
        return f"{path} has other contents (the same size)"
    if saved.get("samples") != now.get("samples"):
        return f"the dataset has {now.get('samples')} samples, had {saved.get('samples')}"
    if saved.get("order") != now.get("order"):
        return "the samples' lengths or modalities differ (the data files or their records changed)"
    return None


def check_same_data(
    saved: dict[str, Any] | None, now: dict[str, Any], checkpoint: Path, was_cwd: str | None = None
) -> None:
    """Refuse to resume from ``checkpoint`` when the data changed since it was written (its ``data`` fingerprint;
    a checkpoint written before fingerprints were kept has none and is not checked). ``was_cwd``: the directory
    the run that wrote it ran in (its relative paths' base)."""
    what = data_change(saved, now, was_cwd) if saved else None
    if what:
        raise ValueError(
            f"train.resume: the training data changed since {checkpoint} was written: {what}; restore the data, or "
            "start a new train.output_dir from that checkpoint's weights (model.init), or set "
            "train.allow_data_change=true to resume on the new data (in another sample order)"
        )
