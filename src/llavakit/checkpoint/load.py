"""Reading a checkpoint directory: its config and its tensors, streamed (``fill.load_into`` puts them in a module).

Typical use::

    path = resolve_model_path("llava-hf/llava-1.5-7b-hf")  # checkpoint.hub: a directory or a hub id
    with torch.device("meta"):
        model = LlavaModel(LlavaConfig.from_hf(read_config_dict(path)))
    tensors = rename_tensors(iter_checkpoint_tensors(path), detect_layout(checkpoint_keys(path)))
    load_into(model, tensors, dtype=torch.bfloat16, device="cuda")  # checkpoint.fill

Tensors are yielded one at a time, so a caller that places each before taking the next holds no second copy.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import torch

from .hub import lfs_pointer_error

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
BIN_SINGLE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"


# -- finding the files ---------------------------------------------------------------------------------------


def read_config_dict(path: str | Path) -> dict:
    """The parsed ``config.json`` of a checkpoint directory."""
    file = Path(path) / "config.json"
    if file.is_dir():
        raise IsADirectoryError(
            f"{file} is a directory where the checkpoint's config file belongs: replace it with the config.json "
            "file itself (an unpacked archive or a copy that went wrong; re-download the checkpoint's config.json)"
        )
    if not file.is_file():
        hint = ""
        if (Path(path) / "adapter_config.json").is_file():  # a LoRA adapter (a LoRA run's checkpoint, OUT/adapter)
            hint = (
                "; this directory holds a LoRA adapter: merge it into its base model first "
                "(llava merge-lora --base BASE --adapter DIR --out MERGED) and load MERGED"
            )
        raise FileNotFoundError(f"{file} not found: a checkpoint directory must contain config.json{hint}")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{file} is not valid JSON ({e}); re-download or fix the file") from e
    except UnicodeDecodeError as e:  # e.g. saved as UTF-16 by an editor
        raise ValueError(f"{file} is not UTF-8 text ({e}); re-download or fix the file (save it as UTF-8)") from e
    if not isinstance(data, dict):
        raise ValueError(f"{file} must hold a JSON object, got {type(data).__name__}")
    return data


# -- reading tensors -----------------------------------------------------------------------------------------


def checkpoint_files(path: str | Path) -> list[Path]:
    """The weight files of a checkpoint directory, in load order, after checking any index covers them.

    Preference: safetensors (single file, else index + shards), then ``pytorch_model.bin`` (single file,
    else index + shards).
    """
    return _locate(Path(path))[0]


def _locate(root: Path) -> tuple[list[Path], dict[str, str] | None]:
    """(weight files, the index's weight_map or None for a single file)."""
    for single, index in ((SAFE_SINGLE, SAFE_INDEX), (BIN_SINGLE, BIN_INDEX)):
        if (root / single).is_file():
            return [root / single], None
        if (root / index).is_file():
            weight_map = _read_index(root / index)
            return [root / name for name in sorted(set(weight_map.values()))], weight_map
    stray = sorted(p.name for p in root.glob("*") if p.suffix in (".safetensors", ".bin"))
    adapter = [n for n in stray if n.startswith("adapter_model.") or n == "non_lora_trainables.bin"]
    if adapter or (root / "adapter_config.json").is_file():  # a PEFT / original LLaVA LoRA run's output
        raise FileNotFoundError(
            f"{root} holds a LoRA adapter ({', '.join(adapter or ['adapter_config.json'])}), not a full model: merge "
            "it into its base model first and load the merged directory (a PEFT adapter of an HF checkpoint: "
            f"llava merge-lora --base BASE --adapter {root} --out MERGED; an original LLaVA LoRA, with "
            "non_lora_trainables.bin: the LLaVA repository's scripts/merge_lora_weights.py, then llava convert)"
        )
    if stray == ["mm_projector.bin"]:
        raise FileNotFoundError(
            f"{root} holds only the projector of a stage-1 (pretraining) run (mm_projector.bin), not a full model: "
            "load the model finetuned from it (stage 2)"
        )
    if stray:
        raise FileNotFoundError(
            f"{root} has weight files ({', '.join(stray[:4])}) but neither {SAFE_SINGLE} nor {SAFE_INDEX} / "
            f"{BIN_INDEX}: the download is incomplete or the save was interrupted; re-download the checkpoint"
        )
    raise FileNotFoundError(f"{root} holds no weights ({SAFE_SINGLE}, {SAFE_INDEX}, {BIN_SINGLE} or {BIN_INDEX})")


def _read_index(index: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{index} is not a valid index file (needs a 'weight_map'); re-download it") from e
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) and v for v in weight_map.values()):
        raise ValueError(
            f"{index} is not a valid index file (its 'weight_map' must map each tensor name to a shard file name); "
            "re-download it"
        )
    shards = sorted(set(weight_map.values()))
    home = index.parent.resolve()
    outside = [s for s in shards if not (home / s).resolve().is_relative_to(home)]
    if outside:  # "../other/model.safetensors" or an absolute path: weights from elsewhere, never the checkpoint's
        raise ValueError(
            f"{index} is not a valid index file: shard {outside[0]!r} lies outside {index.parent}; shard names are "
            "file names in the checkpoint directory (re-download it)"
        )
    missing = [s for s in shards if not (index.parent / s).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{index.name} lists {len(shards)} shard(s) but {len(missing)} are missing from {index.parent}: "
            f"{', '.join(missing[:5])}; the download is incomplete, re-download the checkpoint"
        )
    return weight_map


def checkpoint_keys(path: str | Path) -> list[str]:
    """All tensor names of a checkpoint, from the index or the file headers (no tensor data is read)."""
    files, weight_map = _locate(Path(path))
    if weight_map is not None:
        return list(weight_map)
    return [name for file in files for name, _ in iter_file_tensors(file, keys_only=True)]


def checkpoint_shapes(path: str | Path) -> dict[str, tuple[int, ...]] | None:
    """Every tensor's shape from the safetensors headers (no tensor data is read); None when the checkpoint is
    stored as ``.bin`` files, whose shapes cannot be read without unpickling them."""
    files, _ = _locate(Path(path))
    if any(file.suffix != ".safetensors" for file in files):
        return None
    return {name: shape for file in files for name, _, shape in _header_entries(file)}


def _header_entries(file: Path) -> Iterator[tuple[str, str, tuple[int, ...]]]:
    """``(name, dtype as safetensors writes it, e.g. "BF16", shape)`` of every tensor of a safetensors file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(file, framework="pt", device="cpu") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a Mapping
                sl = f.get_slice(name)
                yield name, sl.get_dtype(), tuple(sl.get_shape())
    except SafetensorError as e:
        raise lfs_pointer_error(file) or ValueError(
            f"{file} is not a readable safetensors file ({e}); it is corrupt or truncated, re-download it"
        ) from e


_SAFETENSORS_FLOATS = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def float_elements_by_dtype(path: str | Path) -> dict[torch.dtype, int]:
    """How many floating-point elements a checkpoint stores in each dtype, from the safetensors headers (no tensor
    data is read; ``.bin`` files are memory-mapped, so only their pickles are read).

    Example: a bfloat16 checkpoint whose norms are stored in float32 -> ``{bfloat16: 6_738_415_616, float32:
    266_240}``.
    """
    counts: dict[torch.dtype, int] = {}
    for file in _locate(Path(path))[0]:
        if file.suffix == ".safetensors":
            entries = ((_SAFETENSORS_FLOATS.get(kind), math.prod(shape)) for _, kind, shape in _header_entries(file))
        else:
            entries = ((t.dtype if t.is_floating_point() else None, t.numel()) for _, t in _iter_bin(file, False))
        for dtype, n in entries:
            if dtype is not None:
                counts[dtype] = counts.get(dtype, 0) + n
    return counts


def iter_checkpoint_tensors(path: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Every ``(name, tensor)`` of a checkpoint directory, one at a time, on the CPU, in stored dtypes.

    For sharded checkpoints every name the index assigns to a shard must be in that shard (a truncated or
    mismatched shard raises instead of silently loading fewer weights).
    """
    files, weight_map = _locate(Path(path))
    expected: dict[str, set[str]] = {}
    for name, shard in (weight_map or {}).items():
        expected.setdefault(shard, set()).add(name)
    for file in files:
        want = expected.get(file.name, set())
        for name, tensor in iter_file_tensors(file):
            want.discard(name)
            yield name, tensor  # type: ignore[misc]
        if want:
            raise ValueError(
                f"{file.name} lacks {len(want)} tensor(s) its index assigns to it "
                f"(e.g. {sorted(want)[0]!r}); the shard is truncated or from another checkpoint: re-download"
            )


def iter_file_tensors(file: str | Path, *, keys_only: bool = False) -> Iterator[tuple[str, torch.Tensor | None]]:
    """``(name, tensor)`` pairs of one ``.safetensors`` or ``.bin`` file (e.g. ``mm_projector.bin``)."""
    file = Path(file)
    if not file.is_file():
        raise FileNotFoundError(f"weight file {file} does not exist")
    if file.suffix == ".safetensors":
        yield from _iter_safetensors(file, keys_only)
    else:
        yield from _iter_bin(file, keys_only)


def _iter_safetensors(file: Path, keys_only: bool) -> Iterator[tuple[str, torch.Tensor | None]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(file, framework="pt", device="cpu") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a Mapping
                yield name, None if keys_only else f.get_tensor(name)
    except SafetensorError as e:
        raise lfs_pointer_error(file) or ValueError(
            f"{file} is not a readable safetensors file ({e}); it is corrupt or truncated, re-download it"
        ) from e


def _iter_bin(file: Path, keys_only: bool) -> Iterator[tuple[str, torch.Tensor | None]]:
    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # pickle / zip / unsupported-legacy-format errors all mean "cannot use this file"
        raise lfs_pointer_error(file) or ValueError(
            f"cannot read {file} with torch.load(weights_only=True, mmap=True): {e}. The file is corrupt, "
            "truncated, in the legacy (pre-1.6) torch format, or holds more than tensors; re-save it as "
            "safetensors"
        ) from e
    if not isinstance(state, dict):
        raise ValueError(f"{file} holds a {type(state).__name__}, expected a dict of tensors")
    for name in list(state):
        value = state.pop(name)
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{file}: entry {name!r} is a {type(value).__name__}, not a tensor")
        yield name, None if keys_only else value
