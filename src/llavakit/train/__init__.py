"""Training: LLaVA-format data, labels derived from the rendered templates, batching (see data.py, labels.py,
collate.py); stages, LoRA, the loop, checkpoints, distributed runs and recipes (stages.py, lora.py, loop.py,
checkpointing.py, distributed.py, recipe.py)."""

from .collate import LengthGroupedSampler, collate
from .data import SupervisedDataset
from .labels import SampleError, encode_sample
from .loop import TrainingDiverged, TrainResult, train
from .lora import LoRALinear, apply_lora, load_adapter, merge_lora, save_adapter
from .mixture import MixedDataset, build_dataset
from .recipe import Recipe, load_recipe
from .stages import LoraSpec, StageSpec, apply_stage

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
    "collate",
    "encode_sample",
]
