"""``LlavaModel.from_pretrained`` / ``save_pretrained``: directory or hub id in, current HF layout out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..config import FAMILIES, TEXT_ARCHITECTURES, LlavaConfig
from .config_types import check_hf_config_types

if TYPE_CHECKING:
    from ..model.llava import LlavaModel
    from .fill import LoadResult

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():  # torch.int8 loaded, then failed in the first LayerNorm
            names = ", ".join(f"torch.{n}" for n in DTYPES)
            raise ValueError(f"dtype {dtype} is not a model dtype; use one of {names} (int8 weights: quantize='int8')")
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
        check_hf_config_types(d, path / "config.json")
        return LlavaConfig.from_hf(d), "hf"
    if is_original_config(d):
        vision = read_vision_tower_config(d, path, vision_tower)
        return config_from_original(d, vision).config, "original"
    raise ValueError(
        f"{path / 'config.json'} has model_type {d.get('model_type')!r}, which is not a LLaVA model; llavakit loads "
        f"HF checkpoints of type {', '.join(FAMILIES)} and original LLaVA checkpoints (configs with mm_vision_tower)"
    )


def check_device(device: torch.device | str) -> torch.device:
    """``device`` as a torch.device, or a ValueError naming what is wrong and what to pass instead of torch's
    errors (an AssertionError "Torch not compiled with CUDA enabled", or a list of every device type)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a device name; pass 'cpu', 'cuda', 'cuda:1', 'mps', ...") from None
    backend = getattr(torch, dev.type, None)  # torch.cuda, torch.mps, torch.xpu: each says if it is usable here
    if dev.type != "cpu" and not (hasattr(backend, "is_available") and backend.is_available()):
        raise ValueError(f"device {str(dev)!r} is not available in this torch build or machine; pass device='cpu'")
    return dev


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
    from .fill import CheckpointMismatchError, _mismatch_message, load_into
    from .hub import resolve_model_path
    from .load import read_config_dict
    from .original import original_tensors

    device = check_device(device)  # before reading anything
    path = resolve_model_path(path_or_id, revision=revision)
    config, fmt = load_config(path, vision_tower)
    if fmt == "hf" and vision_tower is not None:  # an HF checkpoint holds its own tower: the argument would be ignored
        raise ValueError(
            f"vision_tower applies to original checkpoints (their CLIP / SigLIP tower is a separate model); {path} is "
            "in the HF layout and holds its own vision tower: leave vision_tower out"
        )
    with torch.device("meta"):
        model = LlavaModel(config)
    assumed = fmt == "hf" and text_config_assumed(read_config_dict(path))
    if assumed:  # shapes from the file headers first: no weight is read for a model the checkpoint is not
        check_assumed_text(path, model)
    tensors = original_tensors(path, config, vision_tower) if fmt == "original" else hf_tensors(path)
    result = load_into(model, tensors, dtype=parse_dtype(dtype), device=torch.device(device), strict=False)
    if result.missing or result.unexpected or result.mismatched:
        misfit = _text_misfit(result) if assumed else None
        raise CheckpointMismatchError(
            assumed_text_message(path, model, misfit) if misfit else _mismatch_message(result)
        )
    if result.untied:  # the config says tied, the stored weights are not: keep both, as transformers does
        config.tie_word_embeddings = config.text.tie_word_embeddings = False
    model.tie_weights()
    model.generation_eos_ids = generation_eos_ids(path, config.text.eos_token_id)
    return model.eval()


def text_config_assumed(d: dict) -> bool:
    """Does an HF ``config.json`` leave the language model to transformers' default (no or an empty
    ``text_config``: a 7B Llama for llava / llava_next, Qwen2's defaults for llava_onevision)?"""
    return not d.get("text_config")


def check_assumed_text(path: Path, model: LlavaModel) -> None:
    """Compare the language model's shapes with the checkpoint's safetensors headers (no tensor data is read) and
    refuse, naming the missing text_config, when they differ. ``.bin`` checkpoints are checked while loading."""
    from .fill import CheckpointMismatchError, LoadResult
    from .keymaps import LM_HEAD, TEXT, detect_layout, rename_tensors
    from .load import checkpoint_shapes

    stored = checkpoint_shapes(path)
    if stored is None:
        return
    stored = dict(rename_tensors(stored.items(), detect_layout(stored)))
    want = {k: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith((TEXT, LM_HEAD))}
    result = LoadResult(
        missing=[k for k in want if k not in stored],
        unexpected=[k for k in stored if k.startswith((TEXT, LM_HEAD)) and k not in want],
        mismatched=[
            f"{k}: checkpoint {stored[k]} vs model {want[k]}" for k in want if stored.get(k, want[k]) != want[k]
        ],
    )
    misfit = _text_misfit(result)
    if misfit:
        raise CheckpointMismatchError(assumed_text_message(path, model, misfit))


def _text_misfit(result: LoadResult) -> str | None:
    """One example of the language model weights not fitting (the embeddings when they differ), or None."""
    from .keymaps import LM_HEAD, TEXT

    shapes = [m for m in result.mismatched if m.startswith((TEXT, LM_HEAD))]
    if shapes:
        return next((m for m in shapes if m.startswith(TEXT + "embed_tokens.")), shapes[0])
    extra = [k for k in result.unexpected if k.startswith((TEXT, LM_HEAD))]
    if extra:
        return f"{len(extra)} unexpected weights such as {extra[0]}"
    missing = [k for k in result.missing if k.startswith(TEXT)]  # a lone lm_head is a tying question
    return f"{len(missing)} weights missing such as {missing[0]}" if missing else None


def assumed_text_message(path: Path, model: LlavaModel, misfit: str) -> str:
    """One line: config.json has no text_config, the default that was assumed, how the weights differ, the fix."""
    from .keymaps import LM_HEAD, TEXT

    text = model.config.text
    params = sum(p.numel() for k, p in model.named_parameters() if k.startswith((TEXT, LM_HEAD)))  # tied: once
    name = TEXT_ARCHITECTURES[text.model_type].removesuffix("ForCausalLM")
    return (
        f"{path / 'config.json'} has no text_config, so transformers' default language model was assumed (a "
        f"{params / 1e9:.0f}B {name}: {text.num_hidden_layers} layers, hidden size {text.hidden_size}, vocabulary "
        f"{text.vocab_size}), but the checkpoint's weights do not fit it ({misfit}); add the text_config of the "
        "checkpoint to config.json (model_type, vocab_size, hidden_size, intermediate_size, num_hidden_layers, "
        "num_attention_heads, num_key_value_heads, ...)"
    )


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
