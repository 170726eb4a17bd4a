"""Type checks of config.json values (HF and original LLaVA layouts): a value of the wrong JSON type is refused
naming its key, as transformers' config classes refuse it, instead of a traceback or a misread value."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_hf_config_types(d: dict, file: Path) -> None:
    """Refuse, naming the key, a family-level value of the wrong JSON type (a string "false", a token id "120", a
    text_config that is not an object), as transformers' config classes refuse it: read as they are they ended in
    TypeError tracebacks, or a truthy "false" asked for weights the checkpoint does not have."""
    sections = {key: d.get(key) for key in ("text_config", "vision_config")}
    checks: list[tuple[str, object, bool, str]] = []
    for key, value in sections.items():
        checks.append((key, value, value is None or isinstance(value, dict), "an object"))
        if isinstance(value, dict) and "model_type" in value:
            checks.append((f"{key}.model_type", value["model_type"], isinstance(value["model_type"], str), "a string"))
    for key in ("rope_parameters", "rope_scaling"):
        value = sections["text_config"].get(key) if isinstance(sections["text_config"], dict) else None
        checks.append((f"text_config.{key}", value, value is None or isinstance(value, dict), "an object"))
    for key in ("image_token_index", "image_token_id", "video_token_index", "video_token_id"):
        checks.append((key, d.get(key), d.get(key) is None or _is_int(d.get(key)), "an integer"))
    layer = d.get("vision_feature_layer")
    ok = layer is None or _is_int(layer) or (isinstance(layer, list) and bool(layer) and all(map(_is_int, layer)))
    checks.append(("vision_feature_layer", layer, ok, "an integer or a list of integers"))
    pins = d.get("image_grid_pinpoints")
    ok = pins is None or (
        isinstance(pins, list) and all(isinstance(p, list) and len(p) == 2 and all(map(_is_int, p)) for p in pins)
    )
    checks.append(("image_grid_pinpoints", pins, ok, "a list of [height, width] pairs"))
    for key in ("vision_aspect_ratio", "vision_feature_select_strategy", "projector_hidden_act"):
        checks.append((key, d.get(key), d.get(key) is None or isinstance(d.get(key), str), "a string"))
    flags = [
        ("tie_word_embeddings", d.get("tie_word_embeddings")),
        ("multimodal_projector_bias", d.get("multimodal_projector_bias")),
    ]
    if isinstance(sections["text_config"], dict):
        flags.append(("text_config.tie_word_embeddings", sections["text_config"].get("tie_word_embeddings")))
    checks += [(key, value, value is None or isinstance(value, bool), "true or false") for key, value in flags]
    for key, value, ok, want in checks:
        if not ok:
            raise ValueError(f"{file}: {key} must be {want}, got {value!r}; fix config.json")


def check_original_config_types(cfg: dict[str, Any]) -> None:
    """Refuse, naming the key, an ``mm_*`` (or family) value of the wrong JSON type: read as it is, it ended in a
    TypeError traceback, a misleading message ("unsupported architecture 'L'", "mm_hidden_size 1024 != 1024"), or a
    string "false" / "-2" taken for another value."""

    archs = cfg.get("architectures")
    checks = [
        ("architectures", archs, isinstance(archs, list) and all(isinstance(a, str) for a in archs), "a list of names"),
        ("mm_hidden_size", cfg.get("mm_hidden_size"), _is_int(cfg.get("mm_hidden_size")), "an integer"),
        (
            "mm_vision_select_layer",
            cfg.get("mm_vision_select_layer"),
            _is_int(cfg.get("mm_vision_select_layer")),
            "an integer",
        ),
        ("image_token_index", cfg.get("image_token_index"), _is_int(cfg.get("image_token_index")), "an integer"),
    ]
    for key in (
        "mm_vision_tower",
        "mm_projector_type",
        "mm_vision_select_feature",
        "image_aspect_ratio",
        "mm_patch_merge_type",
    ):
        checks.append((key, cfg.get(key), isinstance(cfg.get(key), str), "a string"))
    for key in ("tie_word_embeddings", "mm_use_im_start_end", "mm_use_im_patch_token", "tune_mm_mlp_adapter"):
        checks.append((key, cfg.get(key), isinstance(cfg.get(key), bool), "true or false"))
    for key, value, ok, want in checks:
        if value is not None and not ok:
            raise ValueError(f"config.json: {key} must be {want}, got {value!r}; fix config.json")
