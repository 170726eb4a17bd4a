"""Does a LoRA adapter belong to a base model? What the adapter directory records about the model it was trained
on (PEFT's ``auto_mapping``, the run's processor, the config of ``base_model_name_or_path``) against the base.

Only the family and the shapes are compared, never path strings: the same model under another path still fits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..config import LlavaConfig

# transformers' class of each family, as PEFT records it in adapter_config.json's auto_mapping.base_model_class
FAMILY_BY_CLASS = {
    "LlavaForConditionalGeneration": "llava",
    "LlavaNextForConditionalGeneration": "llava_next",
    "LlavaOnevisionForConditionalGeneration": "llava_onevision",
}


def check_adapter_base(adapter_dir: Path, adapter_cfg: dict[str, Any], config: LlavaConfig, base: str) -> None:
    """Refuse (ValueError naming both models) an adapter whose records say it was trained on a model of another
    family, or of other shapes, than ``config`` (that of ``base``, named as the user knows it: "--base DIR").
    Records that are absent or cannot be read decide nothing: the tensors' shapes are checked when loaded."""
    recorded = adapter_cfg.get("base_model_name_or_path")
    for family, where in recorded_families(adapter_dir, adapter_cfg):
        if family != config.model_type:
            raise ValueError(
                f"adapter {adapter_dir} was trained on a {family} model ({where}) and {base} is a "
                f"{config.model_type} model: an adapter only fits the model it was trained on; pass that model "
                f"as the base{f' ({recorded})' if isinstance(recorded, str) and recorded else ''}"
            )
    theirs = recorded_config(adapter_cfg)
    if theirs is None:
        return
    mine, other = shape_facts(config), shape_facts(theirs)
    differ = [f"{k} {other[k]} vs {mine[k]}" for k in mine if mine[k] != other[k]]
    if differ:
        raise ValueError(
            f"adapter {adapter_dir} was trained on {recorded}, which differs from {base} ({'; '.join(differ)}): "
            "an adapter only fits the model it was trained on; pass that model as the base (if that directory now "
            "holds another model, remove base_model_name_or_path from its adapter_config.json)"
        )


def recorded_families(adapter_dir: Path, adapter_cfg: dict[str, Any]) -> list[tuple[str, str]]:
    """(family, where it is recorded) for each record of the adapter's base family: PEFT's base model class and
    the processor a llavakit run saves beside its adapter. An unknown class is returned as it is."""
    out = []
    cls = (adapter_cfg.get("auto_mapping") or {}).get("base_model_class")
    if isinstance(cls, str) and cls:
        out.append((FAMILY_BY_CLASS.get(cls, cls), f"its adapter_config.json names {cls}"))
    from ..processing.hf_files import FAMILY_BY_PROCESSOR

    for name in ("processor_config.json", "preprocessor_config.json"):
        try:
            cls = json.loads((adapter_dir / name).read_text()).get("processor_class")
        except (OSError, ValueError, AttributeError):
            continue
        if cls in FAMILY_BY_PROCESSOR:
            out.append((FAMILY_BY_PROCESSOR[cls], f"the processor beside it is a {cls}"))
            break
    return out


def recorded_config(adapter_cfg: dict[str, Any]) -> LlavaConfig | None:
    """The config of ``base_model_name_or_path`` when it is an absolute local directory llavakit can read (a
    relative one depends on the directory the adapter was trained from; a hub id is not fetched)."""
    from .api import load_config

    recorded = adapter_cfg.get("base_model_name_or_path")
    if not isinstance(recorded, str) or not recorded or not Path(recorded).is_absolute():
        return None
    try:
        return load_config(Path(recorded))[0] if (Path(recorded) / "config.json").is_file() else None
    except (OSError, ValueError):  # e.g. an original checkpoint whose tower is elsewhere
        return None


def shape_facts(config: LlavaConfig) -> dict[str, Any]:
    """What must be equal for an adapter's weights to mean the same in two models."""
    t, v = config.text, config.vision
    return {
        "family": config.model_type,
        "language model": t.model_type,
        "hidden size": t.hidden_size,
        "layers": t.num_hidden_layers,
        "MLP size": t.intermediate_size,
        "attention heads": t.num_attention_heads,
        "key/value heads": t.num_key_value_heads or t.num_attention_heads,
        "vision tower": v.model_type,
        "vision hidden size": v.hidden_size,
        "vision layers": v.num_hidden_layers,
    }
