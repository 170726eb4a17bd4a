"""Training recipes: a YAML file of four sections, dotted ``key=value`` overrides, every field type-checked.

    model:  where the weights come from (a full LLaVA checkpoint, or a base decoder + a vision tower + a fresh
            projector as in the original stage 1) and the processor's conversation template
    stage:  what trains at which learning rate (llavakit.train.stages.StageSpec)
    data:   datasets (the data helper's build_dataset spec), template, max_length
    train:  batch sizes, schedule, precision, checkpointing, output directory

    recipe = load_recipe("recipes/tiny-finetune.yaml", ["train.max_steps=5", "stage.lr=1e-4"])

An unknown key or a value of the wrong type raises ValueError naming the key (and the closest known key).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .stages import StageSpec


@dataclass
class ModelSpec:
    init: str | None = None  # a full LLaVA checkpoint (HF or original format), or "tiny:<family>" (random, tests)
    decoder: str | None = None  # or: a base decoder checkpoint (HF Llama / Qwen2 / Mistral directory) ...
    vision_tower: str | None = None  # ... plus a vision tower (HF CLIP / SigLIP directory), fresh projector
    family: str = "llava"  # for decoder + vision_tower: llava | llava_next | llava_onevision
    projector_type: str = "mlp2x_gelu"
    vision_feature_layer: int = -2
    vision_feature_select_strategy: str = "default"
    image_grid_pinpoints: list[list[int]] | None = None  # (height, width) pairs; None = the family's default
    vision_aspect_ratio: str | None = None  # OneVision: anyres_max_9
    template: str | None = None  # conversation template for the processor (None: the checkpoint's / family's)
    seed: int = 0  # init of fresh parts (projector, tiny models)


@dataclass
class DataSpec:
    datasets: list[dict[str, Any]] = field(default_factory=list)  # [{path, image_folder, weight}, ...]
    path: str | None = None  # or one dataset: a LLaVA .json / .jsonl ...
    image_folder: str | None = None  # ... and its image root
    num_frames: int = 32  # frames sampled from a video folder
    seed: int = 0  # picks the fractional part of mixture weights
    template: str | None = None  # None -> the processor's template
    max_length: int = 2048
    on_error: str = "raise"  # raise | skip
    group_by_modality_length: bool = True
    # [start, end]: hide background image tokens from attention with a probability going linearly from start
    # (first step) to end (last step); for images on a plain background (llavakit.train.foreground)
    background_drop: list[float] | None = None


@dataclass
class TrainSpec:
    output_dir: str = "runs/llava"
    epochs: float = 1.0
    max_steps: int | None = None  # None -> epochs * samples / global_batch_size
    global_batch_size: int = 128
    micro_batch_size: int = 4  # per process; accumulation = global / (micro * processes)
    warmup_ratio: float = 0.03
    schedule: str = "cosine"  # cosine | constant
    max_grad_norm: float = 1.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8
    bf16: bool = False  # bfloat16 autocast (weights and optimizer stay float32)
    gradient_checkpointing: bool = False
    seed: int = 42
    log_every: int = 1
    save_every: int = 500  # steps between checkpoints (0: only the final output)
    keep_last: int = 2
    resume: bool = False  # continue from the newest checkpoint in output_dir/checkpoints
    stop_after: int | None = None  # end (as if killed) after this many steps; for resume tests
    distributed: str = "ddp"  # ddp | fsdp  (used when launched with torchrun on several processes)
    device: str = "auto"  # auto | cpu | cuda
    progress: bool = True


@dataclass
class Recipe:
    model: ModelSpec = field(default_factory=ModelSpec)
    stage: StageSpec = field(default_factory=StageSpec)
    data: DataSpec = field(default_factory=DataSpec)
    train: TrainSpec = field(default_factory=TrainSpec)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_recipe(path: str | Path | None, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe (or start from defaults when ``path`` is None) and apply ``key=value`` overrides."""
    import yaml

    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"recipe {p} does not exist")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"recipe {p} is not valid YAML: {e}") from e
        if not isinstance(raw, dict):
            raise ValueError(f"recipe {p} must be a mapping of sections (model, stage, data, train)")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} must look like section.key=value, e.g. train.max_steps=10")
        _set_dotted(raw, key.strip(), yaml.safe_load(value) if value.strip() else None)
    return build(Recipe, raw, "")


def _set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    for part in parts[:-1]:
        d = d.setdefault(part, {})
        if not isinstance(d, dict):
            raise ValueError(f"override {key}: {part} is not a section")
    d[parts[-1]] = value


def build(cls: type, raw: Any, where: str) -> Any:
    """Build dataclass ``cls`` from a dict, checking every key and value type."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"{where or 'recipe'} must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        full = f"{where}.{key}" if where else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {(where + '.' if where else '') + close[0]}?" if close else ""
            raise ValueError(f"unknown recipe key {full!r}{hint} (known: {', '.join(names)})")
        tp = hints[key]
        kwargs[key] = build(tp, value, full) if dataclasses.is_dataclass(tp) else _check(value, tp, full)
    try:
        return cls(**kwargs)
    except ValueError as e:
        raise ValueError(f"{where or 'recipe'}: {e}") from e


def _check(value: Any, tp: Any, key: str) -> Any:
    """``value`` as type ``tp`` (ints accepted for floats) or ValueError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check(value, a, key)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(errors[0] if len(errors) == 1 else f"{key}: {value!r} fits none of {_name(tp)}")
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{key} must be a list ({_name(tp)}), got {value!r}")
        (inner,) = typing.get_args(tp) or (Any,)
        return [_check(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{key} must be a mapping, got {value!r}")
        return value
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        raise ValueError(f"{key} must be {tp.__name__}, got {value!r} ({type(value).__name__})")
    return value


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
