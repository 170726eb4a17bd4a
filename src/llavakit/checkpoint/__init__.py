"""Checkpoint IO: finding (hub), key layouts (keymaps), original-format configs (original), reading (load), filling a
model (fill), writing (save), a converted vocabulary's new rows (vocab_growth).

Library code imports the submodules directly; the names below are the public surface.
"""

from __future__ import annotations

from .fill import CheckpointMismatchError, load_into
from .hub import HubUnreachableError, resolve_model_path
from .keymaps import detect_layout, rename_tensors, to_hf_keys, trim_vision_layers
from .load import checkpoint_keys, iter_checkpoint_tensors, read_config_dict
from .original import (
    OriginalConfig,
    OriginalProcessing,
    config_from_original,
    is_original_config,
    original_tensors,
    read_vision_tower_config,
)
from .save import save_config, save_state_dict
from .vocab_growth import add_image_tokens

__all__ = [
    "CheckpointMismatchError",
    "HubUnreachableError",
    "OriginalConfig",
    "OriginalProcessing",
    "add_image_tokens",
    "checkpoint_keys",
    "config_from_original",
    "detect_layout",
    "iter_checkpoint_tensors",
    "load_into",
    "is_original_config",
    "original_tensors",
    "read_vision_tower_config",
    "read_config_dict",
    "rename_tensors",
    "resolve_model_path",
    "save_config",
    "save_state_dict",
    "to_hf_keys",
    "trim_vision_layers",
]
