"""``LlavaModel.from_pretrained`` / ``save_pretrained``: directory or hub id in, current HF layout out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..config import FAMILIES, LlavaConfig

if TYPE_CHECKING:
    from ..model.llava import LlavaModel

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_config(path: Path, vision_tower: str | Path | None = None) -> tuple[LlavaConfig, str]:
    """The model config of a checkpoint directory and its format: "hf" or "original"."""
    from .load import read_config_dict
    from .original import config_from_original, is_original_config, read_vision_tower_config

    d = read_config_dict(path)
    # original configs first: released liuhaotian / lmms-lab configs also say model_type "llava"
    if is_original_config(d) and "text_config" not in d:
        vision = read_vision_tower_config(d, path, vision_tower)
        return config_from_original(d, vision).config, "original"
    if d.get("model_type") in FAMILIES:
        return LlavaConfig.from_hf(d), "hf"
    if is_original_config(d):
        vision = read_vision_tower_config(d, path, vision_tower)
        return config_from_original(d, vision).config, "original"
    raise ValueError(
        f"{path / 'config.json'} has model_type {d.get('model_type')!r}, which is not a LLaVA model; llavakit loads "
        f"HF checkpoints of type {', '.join(FAMILIES)} and original LLaVA checkpoints (configs with mm_vision_tower)"
    )


def load_model(
    path_or_id: str | Path,
    *,
    dtype: torch.dtype | str | None = torch.float32,
    device: torch.device | str = "cpu",
    vision_tower: str | Path | None = None,
    revision: str | None = None,
) -> LlavaModel:
    """Build the model on the meta device and fill it tensor by tensor (no second full copy in memory)."""
    from ..model.llava import LlavaModel
    from .hub import resolve_model_path
    from .load import load_into
    from .original import original_tensors

    path = resolve_model_path(path_or_id, revision=revision)
    config, fmt = load_config(path, vision_tower)
    with torch.device("meta"):
        model = LlavaModel(config)
    tensors = original_tensors(path, config, vision_tower) if fmt == "original" else hf_tensors(path)
    result = load_into(model, tensors, dtype=parse_dtype(dtype), device=torch.device(device), strict=True)
    if result.untied:  # the config says tied, the stored weights are not: keep both, as transformers does
        config.tie_word_embeddings = config.text.tie_word_embeddings = False
    model.tie_weights()
    model.generation_eos_ids = generation_eos_ids(path, config.text.eos_token_id)
    return model.eval()


def generation_eos_ids(path: Path, eos: int | list[int] | None) -> list[int]:
    """The config's end-of-sequence ids, then those ``generation_config.json`` adds (Llama-3's ``<|eot_id|>``):
    what transformers' ``generate`` stops on."""
    ids = [eos] if isinstance(eos, int) else list(eos or [])
    file = path / "generation_config.json"
    if file.is_file():
        try:
            gen = json.loads(file.read_text()).get("eos_token_id")
        except (OSError, ValueError, AttributeError):
            gen = None  # the tokenizer reads the same file and names a broken one
        if isinstance(gen, int):
            ids.append(gen)
        elif isinstance(gen, list):
            ids += [i for i in gen if isinstance(i, int)]
    return list(dict.fromkeys(ids))


def hf_tensors(path: Path):  # noqa: ANN201
    """(name, tensor) pairs of an HF checkpoint in the current layout, whatever layout it was saved in."""
    from .keymaps import detect_layout, to_hf_keys
    from .load import checkpoint_keys, iter_checkpoint_tensors

    layout = detect_layout(checkpoint_keys(path))
    return to_hf_keys(iter_checkpoint_tensors(path), layout)


def check_savable(model: LlavaModel, state: dict[str, torch.Tensor]) -> None:
    """Refuse to write a model whose weights are no longer the checkpoint layout: inference modules swapped in by
    ``llavakit.load`` (packed or quantized Linears) hold other tensors, and the file would not load anywhere."""
    from ..model.llava import LlavaModel

    with torch.device("meta"):
        expected = set(LlavaModel(model.config).state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        some = (missing or unexpected)[:3]
        raise ValueError(
            f"this model cannot be saved as a checkpoint: {len(missing)} weights missing and {len(unexpected)} "
            f"unexpected (e.g. {', '.join(some)}): it was optimized or quantized for inference "
            "(llavakit.load(optimize=True / quantize=...)); load it with LlavaModel.from_pretrained, or "
            "llavakit.load(path, optimize=False) without quantize, to save it"
        )


def save_model(model: LlavaModel, out_dir: str | Path, *, max_shard_bytes: int = 5 * 2**30) -> Path:
    """Write config.json + (sharded) safetensors in the current HF layout."""
    from .save import save_config, save_state_dict

    state = model.state_dict()
    check_savable(model, state)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_state_dict(state, out, max_shard_bytes=max_shard_bytes, tied=model.config.tie_word_embeddings)
    save_config(model.config, out, dtype=model.dtype)  # transformers 5 and vLLM read it as the weights' dtype
    return out
