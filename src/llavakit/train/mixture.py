"""Mixtures of training datasets: a recipe's ``data:`` section (one dataset, a weighted ``datasets`` list or a
LLaVA-NeXT mixture YAML) -> ``SupervisedDataset`` parts, each taken its weight's share of every epoch."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from ..processing.processor import LlavaProcessor
from .data import SupervisedDataset
from .records import check_data_file


class MixedDataset(torch.utils.data.Dataset):
    """Several datasets, each taken ``weight`` times per epoch: 1.0 = every record once, 0.5 = a fixed random
    half, 2.5 = every record twice plus a fixed random half. The choice of the fraction depends only on ``seed``.

    A ``strategy`` (LLaVA-NeXT's ``sampling_strategy``) replaces the weight of its dataset: "all", "first:K",
    "end:K", "random:K", with K a count or a percentage ("first:10%").
    """

    def __init__(
        self,
        parts: list[SupervisedDataset],
        weights: list[float],
        seed: int = 0,
        strategies: list[str | None] | None = None,
    ) -> None:
        if len(parts) != len(weights):
            raise ValueError(f"{len(parts)} datasets but {len(weights)} weights")
        self.parts = parts
        self.index: list[tuple[int, int]] = []
        rng = random.Random(seed)
        for d, (part, w, how) in enumerate(zip(parts, weights, strategies or [None] * len(parts))):
            self.index += [(d, j) for j in select(len(part), w, how, rng, f"dataset {d}")]
        self.lengths = [parts[d].lengths[j] for d, j in self.index]
        self.modalities = [parts[d].modalities[j] for d, j in self.index]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        d, j = self.index[i]
        return self.parts[d][j]

    @property
    def skipped(self) -> Counter:
        return sum((p.skipped for p in self.parts), Counter())

    @property
    def pad_id(self) -> int:
        return self.parts[0].pad_id

    @property
    def processor(self) -> LlavaProcessor:
        return self.parts[0].processor


def select(n: int, weight: float, strategy: str | None, rng: random.Random, name: str) -> list[int]:
    """Record indices a mixture takes from a dataset of ``n`` records (see MixedDataset).

    >>> select(10, 1.0, "first:30%", random.Random(0), "d")
    [0, 1, 2]
    >>> select(4, 2.0, None, random.Random(0), "d")
    [0, 1, 2, 3, 0, 1, 2, 3]
    """
    if strategy == "all":
        return list(range(n))
    if strategy is None:
        if weight < 0:
            raise ValueError(f"{name}: weight must be >= 0, got {weight}")
        whole, frac = int(weight), weight - int(weight)
        return list(range(n)) * whole + sorted(rng.sample(range(n), round(frac * n)))
    how, _, amount = str(strategy).partition(":")
    try:
        k = round(float(amount[:-1]) / 100 * n) if amount.endswith("%") else int(amount)
    except ValueError:
        k = -1
    if how not in ("first", "end", "random") or k < 0:
        raise ValueError(f"{name}: sampling_strategy {strategy!r}; use all, first:K, end:K or random:K (K or K%)")
    k = min(k, n)
    if how == "first":
        return list(range(k))
    if how == "end":
        return list(range(n - k, n))
    return sorted(rng.sample(range(n), k))


def read_mixture(path: str | Path) -> list[dict[str, Any]]:
    """The ``datasets`` list of a mixture YAML: ours ({path, image_folder, weight}) or LLaVA-NeXT's
    ({json_path, sampling_strategy})."""
    try:
        import yaml
    except ImportError as e:
        raise ImportError("reading a mixture YAML needs pyyaml: pip install 'llavakit[train]'") from e
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mixture file not found: {path}")
    from .recipe_yaml import parse_yaml

    try:
        data, twice = parse_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:  # not a ValueError: the CLI would print a traceback
        raise ValueError(f"mixture file {path} is not valid YAML: {e}") from None
    if twice:  # YAML keeps the last silently: a second `datasets:` list would drop the first
        raise ValueError(f"{path}: {twice[0]} is given twice (lines {twice[1]} and {twice[2]}); keep one of them")
    entries = data.get("datasets") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: a mixture YAML needs a non-empty 'datasets' list")
    out = []
    for k, e in enumerate(entries):
        if not isinstance(e, dict):
            raise ValueError(f"{path}: datasets[{k}] must be a mapping")
        e = dict(e)
        if "json_path" in e:
            e["path"] = e.pop("json_path")
        out.append(e)
    return out


ENTRY_KEYS = {"path", "image_folder", "weight", "template", "on_error", "num_frames", "sampling_strategy"}


def check_entry(entry: Any, k: int, single: bool = False) -> None:
    """Refuse a ``datasets`` entry training cannot read: no path, unknown keys (a typo such as ``image_foler``
    would silently fall back to the default folder), a negative weight or a malformed sampling_strategy."""
    if not isinstance(entry, dict) or "path" not in entry:
        raise ValueError(f"data.datasets[{k}] needs a 'path' (or LLaVA-NeXT's 'json_path')")
    unknown = set(entry) - ENTRY_KEYS
    if unknown and not single:
        raise ValueError(f"data.datasets[{k}]: unknown keys {sorted(unknown)}; known: {sorted(ENTRY_KEYS)}")
    name = "data" if single else f"data.datasets[{k}]"
    for key in ("path", "image_folder"):
        value = entry.get(key)
        if not isinstance(value, (str, Path)) and not (key == "image_folder" and value is None):
            raise ValueError(f"{name}.{key} must be a file path (a string), got {value!r}")
    try:
        weight = float(entry.get("weight", 1.0))
    except (TypeError, ValueError):
        raise ValueError(f"{name}: weight must be a number, got {entry.get('weight')!r}") from None
    select(0, weight, entry.get("sampling_strategy"), random.Random(), name)


def data_entries(spec: dict[str, Any]) -> tuple[list[Any], bool]:
    """The datasets of a ``data:`` section (its ``datasets`` list, a mixture YAML's entries, or the section itself)
    and whether it is one dataset; a section that names both or neither is one clear error."""
    entries = spec.get("datasets")
    if entries and spec.get("path"):
        raise ValueError("data: give either path (one dataset) or datasets (a mixture), not both")
    if not entries and str(spec.get("path", "")).endswith((".yaml", ".yml")):
        entries = read_mixture(spec["path"])
    if not entries:
        if "path" not in spec:
            raise ValueError("the data section needs 'path' (and 'image_folder') or a 'datasets' list")
        return [spec], True
    if not isinstance(entries, list):
        raise ValueError("data.datasets must be a non-empty list of {path, image_folder, weight}")
    return entries, False


def check_data_files(spec: dict[str, Any]) -> None:
    """Refuse a ``data:`` section whose data files are not there, before the model loads (a typo in ``data.path``
    was found only after minutes of loading weights). A mixture YAML is read for its entries. The image folder is
    left to ``build_dataset``: a missing one is an error only when a record's image is missing (text-only records
    and absolute image paths need none)."""
    entries, single = data_entries(spec)
    from_file = not single and not spec.get("datasets")
    for k, e in enumerate(entries):
        if not isinstance(e, dict) or not isinstance(e.get("path"), (str, Path)):
            continue  # build_dataset says what is wrong with it
        key = "data.path" if single else f"{spec['path']}: datasets[{k}]" if from_file else f"data.datasets[{k}].path"
        check_data_file(e["path"], key)


def build_dataset(
    spec: dict[str, Any], processor: LlavaProcessor, template: str | None, max_length: int, foreground: bool = False
) -> SupervisedDataset | MixedDataset:
    """One dataset or a weighted mixture from a recipe's ``data:`` section.

    ``{path, image_folder}`` or ``{datasets: [{path, image_folder, weight, template, sampling_strategy}, ...]}``;
    a ``path`` ending in .yaml / .yml is a mixture file holding such a ``datasets`` list (LLaVA-NeXT's
    ``json_path`` / ``sampling_strategy`` entries work too; the top-level ``image_folder`` is their default).
    Optional top-level ``on_error`` ("raise" | "skip"), ``num_frames`` and ``seed`` (fractional weights, random
    sampling). Relative paths are taken as given (relative to the working directory). ``foreground``: items
    carry per-token foreground flags (see SupervisedDataset).
    """
    if not isinstance(spec, dict):
        raise ValueError(f"the data section must be a mapping, got {type(spec).__name__}")
    on_error = spec.get("on_error", "raise")
    frames = int(spec.get("num_frames", 32))
    entries, single = data_entries(spec)
    parts, weights, strategies = [], [], []
    for k, e in enumerate(entries):
        check_entry(e, k, single)
        parts.append(
            SupervisedDataset(
                e["path"],
                e.get("image_folder", spec.get("image_folder")),
                processor,
                e.get("template", template),
                max_length,
                on_error=e.get("on_error", on_error),
                num_frames=int(e.get("num_frames", frames)),
                foreground=foreground,
            )
        )
        weights.append(float(e.get("weight", 1.0)))
        strategies.append(e.get("sampling_strategy"))
    if single:
        return parts[0]
    return MixedDataset(parts, weights, seed=int(spec.get("seed", 0)), strategies=strategies)
