"""Writing checkpoints in the current HF layout, file for file the way transformers writes them.

- ``model.safetensors`` when everything fits in ``max_shard_bytes``, else ``model-00001-of-0000N.safetensors``
  shards plus ``model.safetensors.index.json`` (``{"metadata": {"total_parameters", "total_size"},
  "weight_map": {name: shard}}``, sorted, indent 2). Each file carries the metadata ``{"format": "pt"}``.
- Shards are filled greedily in key order: a tensor that would push the current shard over the limit starts a
  new one; a tensor larger than the limit gets a shard of its own (the same rule as huggingface_hub).
- Tied tensors are written once: ``lm_head.weight`` is left out when it is the embedding matrix.
- Every file is written under a temporary name and renamed into place; the index is written last, so an
  interrupted save leaves either the previous checkpoint or shards without an index (which loaders reject),
  never a checkpoint that looks complete but is not.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..config import LlavaConfig
from .keymaps import LM_HEAD, TEXT
from .load import SAFE_INDEX, SAFE_SINGLE

DEFAULT_MAX_SHARD_BYTES = 5 * 2**30
_TMP = ".tmp-llavakit"
_SHARD = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")


def save_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    out_dir: str | Path,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    *,
    tied: bool | None = None,
) -> list[Path]:
    """Write ``state_dict`` (current-layout names) as safetensors into ``out_dir``; returns the files written.

    ``tied=True`` leaves ``lm_head.weight`` out (the config ties it to the embeddings); ``None`` leaves it out
    only when it is the very same tensor as the embedding matrix; ``False`` always writes it.

    Worked example: tensors of 40, 40, 30 and 100 bytes with ``max_shard_bytes=64`` give shards
    [40], [40], [30], [100] (40+40 > 64 closes the first shard, 40+30 > 64 the second; 100 > 64 stands alone).
    """
    from safetensors.torch import save_file

    if max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    if tied:
        state_dict = {k: t for k, t in state_dict.items() if k != LM_HEAD + "weight"}
    tensors = _unique_tensors(state_dict, keep_head=tied is False)
    shards = _split(tensors, max_shard_bytes)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = len(shards)
    names = [SAFE_SINGLE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]

    for name, shard in zip(names, shards, strict=True):
        tmp = out / (name + _TMP)
        save_file({k: _storable(t) for k, t in shard.items()}, str(tmp), metadata={"format": "pt"})
        fsync_path(tmp)
    # The old checkpoint stops being loadable before the new one is complete: never a mix of the two.
    _remove_stale(out, keep=set(names))
    for name in names:
        os.replace(out / (name + _TMP), out / name)
    if n > 1:
        index = {
            "metadata": {
                "total_parameters": sum(t.numel() for t in tensors.values()),
                "total_size": sum(_nbytes(t) for t in tensors.values()),
            },
            "weight_map": {k: name for name, shard in zip(names, shards, strict=True) for k in shard},
        }
        write_text_atomic(out / SAFE_INDEX, json.dumps(index, indent=2, sort_keys=True) + "\n")
    return [out / name for name in names] + ([out / SAFE_INDEX] if n > 1 else [])


def _unique_tensors(state_dict: Mapping[str, torch.Tensor], keep_head: bool) -> dict[str, torch.Tensor]:
    """Drop ``lm_head.weight`` when it aliases the embeddings (or clone it when ``keep_head``)."""
    kept: dict[str, torch.Tensor] = {}
    by_id: dict[tuple[int, int, tuple[int, ...]], str] = {}  # (storage ptr, offset, shape) -> kept name
    head = LM_HEAD + "weight"
    for name in sorted(state_dict, key=lambda k: k == head):  # lm_head last so the embedding is kept
        t = state_dict[name]
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"state_dict[{name!r}] is a {type(t).__name__}, not a tensor")
        if t.device.type == "meta":
            raise ValueError(f"{name} is on the meta device (never loaded); cannot save it")
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)) if t.numel() else None
        if ident is not None and ident in by_id:
            if name != head:
                raise ValueError(
                    f"{name} and {by_id[ident]} are the same tensor; only lm_head may be tied (to "
                    f"{TEXT}embed_tokens.weight). Clone one of them before saving"
                )
            if not keep_head:
                continue
            t = t.clone()
        if ident is not None:
            by_id.setdefault(ident, name)
        kept[name] = t
    return {k: kept[k] for k in state_dict if k in kept}  # back to the caller's order


def _split(tensors: dict[str, torch.Tensor], limit: int) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = []
    current: dict[str, torch.Tensor] = {}
    size = 0
    for name, t in tensors.items():
        b = _nbytes(t)
        if b > limit:
            shards.append({name: t})
            continue
        if size + b > limit and current:
            shards.append(current)
            current, size = {}, 0
        current[name] = t
        size += b
    if current or not shards:
        shards.append(current)
    return shards


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _storable(t: torch.Tensor) -> torch.Tensor:
    """A tensor safetensors accepts: dense, on the CPU, owning its storage. Copies only when needed."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if not t.is_contiguous():
        t = t.contiguous()
    if t.untyped_storage().nbytes() != _nbytes(t):  # a view into a bigger buffer: safetensors would refuse
        t = t.clone()
    return t


def _remove_stale(out: Path, keep: set[str]) -> None:
    """Delete weight files of an earlier save (``model.safetensors``, ``model-0000i-of-0000n.safetensors``,
    the index) that the new one does not overwrite."""
    for p in out.iterdir():
        ours = p.name in (SAFE_SINGLE, SAFE_INDEX) or _SHARD.fullmatch(p.name)
        if ours and p.name not in keep and p.is_file():
            p.unlink()


def fsync_path(path: Path) -> None:
    """Flush a file, or a directory's entries, to disk (some file systems cannot sync a directory: skipped)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        if not path.is_dir():  # a file must be synced
            raise
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """``fsync_path`` every file and directory under ``path`` (deepest first), then ``path`` itself."""
    for p in sorted(path.rglob("*"), key=lambda q: -len(q.parts)):
        fsync_path(p)
    fsync_path(path)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (never half-written)."""
    path = Path(path)
    tmp = path.with_name(path.name + _TMP)
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


GENERATION_CONFIG = "generation_config.json"


def read_generation_config(source: str | Path | None) -> str | None:
    """The text of ``source``'s ``generation_config.json`` (extra end-of-sequence ids such as Llama-3's
    ``<|eot_id|>``, sampling defaults), None when ``source`` is None or has none. A model written from ``source``
    carries it (``write_generation_config``), or its tokenizer would stop on the config's end-of-sequence id only."""
    file = None if source is None else Path(source) / GENERATION_CONFIG
    return file.read_text(encoding="utf-8") if file is not None and file.is_file() else None


def write_generation_config(text: str | None, out_dir: str | Path) -> None:
    """Write ``text`` (from ``read_generation_config``) as ``out_dir/generation_config.json``; nothing for None."""
    if text is not None:
        write_text_atomic(Path(out_dir) / GENERATION_CONFIG, text)


def save_config(config: LlavaConfig, out_dir: str | Path, *, dtype: torch.dtype | None = None) -> Path:
    """Write ``config.json`` (``LlavaConfig.to_hf()``; loadable by transformers' AutoConfig).

    ``dtype`` records the weights' dtype as the ``"dtype"`` field transformers 5 reads (optional).
    """
    d: dict[str, Any] = config.to_hf()
    if dtype is not None:
        d["dtype"] = str(dtype).removeprefix("torch.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "config.json", json.dumps(d, indent=2, sort_keys=True) + "\n")
    return out / "config.json"
