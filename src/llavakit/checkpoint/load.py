"""Reading a checkpoint directory: its config, streaming its tensors, and filling a meta-device module.

Typical use::

    path = resolve_model_path("llava-hf/llava-1.5-7b-hf")  # checkpoint.hub: a directory or a hub id
    with torch.device("meta"):
        model = LlavaModel(LlavaConfig.from_hf(read_config_dict(path)))
    tensors = rename_tensors(iter_checkpoint_tensors(path), detect_layout(checkpoint_keys(path)))
    load_into(model, tensors, dtype=torch.bfloat16, device="cuda")

Nothing here holds two copies of the weights: each tensor is read, cast to the target dtype / device and
assigned to its parameter before the next one is read.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .hub import lfs_pointer_error

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
BIN_SINGLE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"


class CheckpointMismatchError(ValueError):
    """A strict load found missing, unexpected or wrongly shaped tensors."""


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
    from safetensors import SafetensorError, safe_open

    files, _ = _locate(Path(path))
    if any(file.suffix != ".safetensors" for file in files):
        return None
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        try:
            with safe_open(file, framework="pt", device="cpu") as f:
                for name in f.keys():  # noqa: SIM118 - safe_open is not a Mapping
                    shapes[name] = tuple(f.get_slice(name).get_shape())
        except SafetensorError as e:
            raise lfs_pointer_error(file) or ValueError(
                f"{file} is not a readable safetensors file ({e}); it is corrupt or truncated, re-download it"
            ) from e
    return shapes


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


# -- filling a module ----------------------------------------------------------------------------------------


@dataclass
class LoadResult:
    """What :func:`load_into` did not match (all empty after a successful strict load)."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # "name: checkpoint (a, b) vs model (c, d)" (or dtypes)
    skipped_tied: list[str] = field(default_factory=list)  # e.g. lm_head.weight when embeddings are tied
    untied: list[str] = field(default_factory=list)  # tied in the model, stored with other values: given their own


def _with_held_aliases(
    tensors: Iterable[tuple[str, torch.Tensor]], aliases: dict[str, str], held: dict[str, torch.Tensor]
) -> Iterable[tuple[str, torch.Tensor]]:
    """The checkpoint's tensors, with those stored under a tied alias kept in ``held`` (compared after loading)
    and given to the shared parameter only when its first name is not in the checkpoint."""
    seen: set[str] = set()
    for name, tensor in tensors:
        if name in aliases:
            held[name] = tensor
            continue
        seen.add(name)
        yield name, tensor
    for alias, tensor in list(held.items()):
        if aliases[alias] not in seen:  # the checkpoint has only this name: it fills the shared tensor
            del held[alias]
            yield aliases[alias], tensor


def load_into(
    module: nn.Module,
    tensors: Iterable[tuple[str, torch.Tensor]],
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    strict: bool = True,
) -> LoadResult:
    """Assign checkpoint tensors to ``module`` (typically built under ``torch.device("meta")``), one by one.

    Each floating tensor is cast to ``dtype`` (when given; norms stored in float32 included, like HF's
    ``torch_dtype``) and moved to ``device`` (default: CPU) as it is read, then put in place of the module's
    parameter or buffer, so peak memory is the model plus one tensor. Integer tensors keep their dtype.

    Tied parameters (the same Parameter reachable under two names, e.g. ``lm_head.weight`` and
    ``model.language_model.embed_tokens.weight``) are filled once and re-tied; a checkpoint copy under the other
    name fills them when the first name is absent, is skipped when equal, and when it holds other values (a config
    that says tied over weights that are not) gets its own parameter and is listed in ``untied``, as transformers
    keeps both: the caller unties its config.

    With ``strict`` any missing, unexpected or wrongly shaped tensor raises one CheckpointMismatchError
    listing them and the likely cause; otherwise they are returned (unfilled tensors stay on meta).
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    slots: dict[str, tuple[nn.Module, str, bool]] = {}  # name -> (owner, attribute, is_parameter)
    primary: dict[int, str] = {}  # id(tensor) -> first name
    aliases: dict[str, str] = {}  # secondary name -> primary name
    for mod_name, mod in module.named_modules(remove_duplicate=False):
        prefix = f"{mod_name}." if mod_name else ""
        for attr, t in [*mod._parameters.items(), *mod._buffers.items()]:
            if t is None or (attr in mod._buffers and attr in mod._non_persistent_buffers_set):
                continue
            name = prefix + attr
            if id(t) in primary and primary[id(t)] != name:
                aliases[name] = primary[id(t)]
            else:
                primary.setdefault(id(t), name)
                slots[name] = (mod, attr, attr in mod._parameters)
    result = LoadResult()
    loaded: set[str] = set()
    held: dict[str, torch.Tensor] = {}  # alias name -> its checkpoint tensor, settled once every tensor is read
    for name, tensor in _with_held_aliases(tensors, aliases, held):
        if name not in slots:
            result.unexpected.append(name)
            continue
        owner, attr, is_param = slots[name]
        current = getattr(owner, attr)
        if tuple(tensor.shape) != tuple(current.shape):
            result.mismatched.append(f"{name}: checkpoint {tuple(tensor.shape)} vs model {tuple(current.shape)}")
            loaded.add(name)  # reported as mismatched, not again as missing
            continue
        if current.is_floating_point() and not tensor.is_floating_point():
            result.mismatched.append(f"{name}: checkpoint {tensor.dtype} vs model floating point")
            loaded.add(name)
            continue
        cast = dtype if (dtype is not None and tensor.is_floating_point()) else tensor.dtype
        value = tensor.to(device=device, dtype=cast)
        if is_param:
            grad = current.requires_grad and value.is_floating_point()
            owner._parameters[attr] = nn.Parameter(value, requires_grad=grad)
        else:
            owner._buffers[attr] = value
        loaded.add(name)
    for alias, name in aliases.items():  # re-tie: point every alias at the freshly loaded tensor
        owner, attr, is_param = slots[name]
        alias_owner, _, alias_attr = alias.rpartition(".")
        target = module.get_submodule(alias_owner) if alias_owner else module
        store = target._parameters if is_param else target._buffers
        shared = (owner._parameters if is_param else owner._buffers)[attr]
        store[alias_attr] = shared
        stored = held.pop(alias, None)
        if stored is None or name not in loaded:
            continue
        if tuple(stored.shape) != tuple(shared.shape):
            result.mismatched.append(f"{alias}: checkpoint {tuple(stored.shape)} vs model {tuple(shared.shape)}")
            continue
        if shared.is_floating_point() and not stored.is_floating_point():
            result.mismatched.append(f"{alias}: checkpoint {stored.dtype} vs model floating point")
            continue
        value = stored.to(device=shared.device, dtype=shared.dtype)
        if torch.equal(value, shared):
            result.skipped_tied.append(alias)
        else:  # tied in the model, different in the checkpoint: the stored weights win, untied
            store[alias_attr] = nn.Parameter(value, requires_grad=shared.requires_grad) if is_param else value
            result.untied.append(alias)
    result.missing = [n for n in slots if n not in loaded]  # still on their original (meta) device
    if strict and (result.missing or result.unexpected or result.mismatched):
        raise CheckpointMismatchError(_mismatch_message(result))
    return result


def _mismatch_message(r: LoadResult, show: int = 20) -> str:
    parts = ["checkpoint does not match the model:"]
    found = (("missing", r.missing), ("unexpected", r.unexpected), ("wrong shape or dtype", r.mismatched))
    for label, names in found:
        if names:
            more = f" ... (+{len(names) - show} more)" if len(names) > show else ""
            parts.append(f"  {len(names)} {label}: " + ", ".join(names[:show]) + more)
    parts.append("likely cause: " + _likely_cause(r))
    return "\n".join(parts)


def _likely_cause(r: LoadResult) -> str:
    unexpected = r.unexpected
    if any(k.startswith(("language_model.", "vision_tower.", "multi_modal_projector.")) for k in unexpected):
        return "the checkpoint is in the pre-4.52 HF layout; rename with keymaps.rename_tensors(..., 'hf_old')"
    if any(
        k.startswith(("model.layers.", "model.mm_projector", "model.vision_tower.vision_tower.")) for k in unexpected
    ):
        return "the checkpoint is in the original LLaVA layout; convert it first (`llava convert SRC DST`)"
    if r.mismatched and all(" vs model floating point" in m for m in r.mismatched):
        return "integer tensors where weights belong: a quantized or corrupted export; save the float weights"
    if r.mismatched:
        return "the config does not describe this checkpoint (model_type, vocab size or hidden sizes differ)"
    if r.missing and all(k.startswith("model.vision_tower.") for k in r.missing):
        return (
            "the vision tower weights are absent: original checkpoints often keep them in the separate "
            "model named by mm_vision_tower; pass that directory when converting"
        )
    if r.missing == ["lm_head.weight"] and not unexpected:
        return (
            "only the LM head is absent: the checkpoint ties it to the input embeddings (saved once, as "
            'model.language_model.embed_tokens.weight) but config.json does not; set "tie_word_embeddings": true '
            "in config.json"
        )
    if r.missing and not unexpected:
        return "a truncated download or a missing shard (or a config with more layers than the checkpoint)"
    if unexpected and not r.missing:
        return "the config describes a smaller model than the checkpoint (layers / model_type / tied embeddings)"
    return "wrong model_type or key layout for this checkpoint"
