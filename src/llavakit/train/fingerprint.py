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


def data_change(saved: dict[str, Any], now: dict[str, Any]) -> str | None:
    """What differs between two fingerprints, in words (the first difference), or None."""
    for path, was in saved.get("files", {}).items():
        is_ = now.get("files", {}).get(path, {"size": None})
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


def check_same_data(saved: dict[str, Any] | None, now: dict[str, Any], checkpoint: Path) -> None:
    """Refuse to resume from ``checkpoint`` when the data changed since it was written (its ``data`` fingerprint;
    a checkpoint written before fingerprints were kept has none and is not checked)."""
    what = data_change(saved, now) if saved else None
    if what:
        raise ValueError(
            f"train.resume: the training data changed since {checkpoint} was written: {what}; restore the data, or "
            "start a new train.output_dir from that checkpoint's weights (model.init), or set "
            "train.allow_data_change=true to resume on the new data (in another sample order)"
        )
