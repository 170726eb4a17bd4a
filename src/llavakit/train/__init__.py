"""Training: LLaVA-format data, labels derived from the rendered templates, batching (see data.py, labels.py,
collate.py); stages, LoRA, the loop, checkpoints, distributed runs and recipes (stages.py, lora.py, loop.py,
checkpointing.py, distributed.py, recipe.py)."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .collate import LengthGroupedSampler
    from .data import SupervisedDataset
    from .labels import SampleError, encode_sample
    from .loop import TrainingDiverged, TrainResult, train
    from .lora import LoRALinear, apply_lora, load_adapter, merge_lora, save_adapter
    from .mixture import MixedDataset, build_dataset
    from .recipe import Recipe, load_recipe
    from .stages import LoraSpec, StageSpec, apply_stage

# name -> the submodule that holds it; loaded on first use, so `llava --help` (whose `train` flags live in
# train/commands.py) does not import torch. The collate function is not here: lazily, the name `collate` would
# turn into its submodule once anything imports that; use `from llavakit.train.collate import collate`.
_WHERE = {
    "LengthGroupedSampler": "collate",
    "SupervisedDataset": "data",
    "SampleError": "labels",
    "encode_sample": "labels",
    "TrainingDiverged": "loop",
    "TrainResult": "loop",
    "train": "loop",
    "LoRALinear": "lora",
    "apply_lora": "lora",
    "load_adapter": "lora",
    "merge_lora": "lora",
    "save_adapter": "lora",
    "MixedDataset": "mixture",
    "build_dataset": "mixture",
    "Recipe": "recipe",
    "load_recipe": "recipe",
    "LoraSpec": "stages",
    "StageSpec": "stages",
    "apply_stage": "stages",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})


__all__ = [
    "LoRALinear",
    "LoraSpec",
    "Recipe",
    "StageSpec",
    "TrainResult",
    "TrainingDiverged",
    "apply_lora",
    "apply_stage",
    "load_adapter",
    "load_recipe",
    "merge_lora",
    "save_adapter",
    "train",
    "LengthGroupedSampler",
    "MixedDataset",
    "SampleError",
    "SupervisedDataset",
    "build_dataset",
    "encode_sample",
]
