"""``llava convert SRC DST``: any checkpoint llavakit reads -> the current HF layout (weights, config, processor)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from .api import load_config, load_model, parse_dtype
from .load import resolve_model_path

# processor-side files of an HF checkpoint, copied as they are when no processor can be built
PROCESSOR_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "added_tokens.json",
    "preprocessor_config.json",
    "processor_config.json",
    "chat_template.json",
    "chat_template.jinja",
    "generation_config.json",
)


def convert(
    src: str | Path,
    dst: str | Path,
    *,
    vision_tower: str | Path | None = None,
    dtype: torch.dtype | str | None = None,
    max_shard_bytes: int = 5 * 2**30,
) -> Path:
    """Read ``src`` (HF current/old layout or original LLaVA format) and write ``dst`` in the current HF layout.

    Weights keep their stored dtype unless ``dtype`` is given. Returns ``dst``.
    """
    path = resolve_model_path(src)
    out = Path(dst)
    if out.resolve() == path.resolve():
        raise ValueError(f"convert writes a new directory; {dst} is the source itself")
    _, fmt = load_config(path, vision_tower)
    model = load_model(path, dtype=parse_dtype(dtype) if dtype else _stored_dtype(path), vision_tower=vision_tower)
    model.save_pretrained(out, max_shard_bytes=max_shard_bytes)
    write_processor(path, out, model, fmt)
    return out


def _stored_dtype(path: Path) -> torch.dtype:
    """The dtype most of a checkpoint's floating tensors are stored in (float32 when unknown)."""
    from .load import iter_checkpoint_tensors

    for _, t in iter_checkpoint_tensors(path):
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def write_processor(src: Path, out: Path, model, fmt: str) -> None:  # noqa: ANN001
    """Processor files for the converted checkpoint: rebuilt by LlavaProcessor where possible."""
    from ..processing.processor import LlavaProcessor

    if fmt == "hf":
        try:
            LlavaProcessor.from_pretrained(src).save_pretrained(out)
            return
        except (FileNotFoundError, ValueError, OSError):
            for name in PROCESSOR_FILES:  # a weights-only conversion: keep whatever processor files exist
                if (src / name).exists():
                    shutil.copy2(src / name, out / name)
            return
    LlavaProcessor.from_original(src, model.config).save_pretrained(out)
