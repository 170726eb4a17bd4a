"""Where transformers keeps things in a processor / checkpoint directory, how to tell the model family, and how
its image / video processor settings map to (and from) llavakit's ``ImageConfig``.

A processor directory holds ``processor_config.json`` (transformers >= 5 nests the image processor in it as
``image_processor``), ``preprocessor_config.json`` (older layout), ``video_preprocessor_config.json``
(OneVision), the tokenizer files, a chat template (``chat_template.jinja``, legacy ``chat_template.json``, or
``chat_template`` inside processor_config.json / tokenizer_config.json) and, in a checkpoint, ``config.json``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from ..config import OV_PINPOINTS, V16_PINPOINTS
from .image import CLIP_MEAN, CLIP_STD, ImageConfig

FAMILIES = ("llava", "llava_next", "llava_onevision")
FAMILY_BY_PROCESSOR = {
    "LlavaProcessor": "llava",
    "LlavaNextProcessor": "llava_next",
    "LlavaOnevisionProcessor": "llava_onevision",
}
PROCESSOR_CLASS = {v: k for k, v in FAMILY_BY_PROCESSOR.items()}
IMAGE_PROCESSOR = {
    "llava": "LlavaImageProcessor",
    "llava_next": "LlavaNextImageProcessor",
    "llava_onevision": "LlavaOnevisionImageProcessor",
}


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from e


# transformers' LlavaNextImageProcessor / LlavaOnevisionImageProcessor class defaults, used when a config has none
DEFAULT_PINPOINTS: dict[str, list[list[int]]] = {"llava_next": V16_PINPOINTS, "llava_onevision": OV_PINPOINTS}
RESAMPLE_FILTERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}  # PIL codes


def check_image_processor(img: dict[str, Any], file: Path) -> None:
    """Refuse image-processor settings llavakit would not follow (it used to ignore them silently): turned-off
    resize / rescale / normalise steps, a shortest-edge resize to another side than the centre crop, an unknown
    resampling filter. Every released LLaVA checkpoint resizes, rescales and normalises, to one side."""
    where = str(file)  # processor_config.json's image_processor (transformers 5) or preprocessor_config.json
    off = [k for k in ("do_resize", "do_rescale", "do_normalize") if img.get(k) is False]
    if off:
        raise ValueError(
            f"{where}: {', '.join(f'{k}=false' for k in off)} is not supported (llavakit always resizes, rescales "
            "and normalises); set them to true, or preprocess the images yourself and call the model directly"
        )
    size, crop = img.get("size"), img.get("crop_size")
    short = size if isinstance(size, int) else (size or {}).get("shortest_edge")
    if img.get("do_center_crop") and short is not None and side_of(crop) not in (None, short):
        raise ValueError(
            f"{where}: resizing the shortest edge to {short} then cropping {side_of(crop)} is not supported; "
            "llavakit resizes to the crop side (released checkpoints have both equal)"
        )
    if img.get("resample", 3) not in RESAMPLE_FILTERS:
        raise ValueError(
            f"{where}: resample {img.get('resample')!r} is not a PIL filter code; "
            f"use one of {', '.join(f'{k} ({v})' for k, v in RESAMPLE_FILTERS.items())}"
        )


def side_of(d: dict[str, Any] | int | None) -> int | None:
    """A square side from a ``size`` / ``crop_size`` entry: {"height": h, ...}, {"shortest_edge": s} or an int."""
    if isinstance(d, int):
        return d
    if not d:
        return None
    return d.get("height") or d.get("shortest_edge")


def family_of(path: Path, model_cfg: dict[str, Any], proc: dict[str, Any], img: dict[str, Any]) -> str:
    """The model family of a processor directory: config.json's model_type, else the processor class, else
    the image processor type (a bare CLIP image processor means llava-1.5)."""
    supported = ", ".join(FAMILIES)
    model_type = model_cfg.get("model_type")
    if model_type in FAMILIES:
        return model_type
    if isinstance(model_type, str) and model_type.startswith("llava"):
        raise ValueError(
            f"{path} holds an original-format LLaVA checkpoint (model_type {model_type!r}): convert it with "
            "`llava convert SRC DST`, which writes the HF processor files"
        )
    if model_type:
        raise ValueError(f"unknown model family {model_type!r} in {path}/config.json; supported: {supported}")
    name = proc.get("processor_class") or img.get("processor_class")
    if name:
        if name not in FAMILY_BY_PROCESSOR:
            raise ValueError(f"unknown processor class {name!r} in {path}; supported: {', '.join(FAMILY_BY_PROCESSOR)}")
        return FAMILY_BY_PROCESSOR[name]
    kind = img.get("image_processor_type", "")
    return "llava_onevision" if "Onevision" in kind else "llava_next" if "Next" in kind else "llava"


def chat_template_of(path: Path, proc: dict[str, Any]) -> str | None:
    """The processor's chat template, found where transformers looks: processor_config.json's
    ``chat_template``, then chat_template.json, then chat_template.jinja (a set of named templates -> "default")."""
    found: Any = proc.get("chat_template")
    if found is None and (path / "chat_template.json").exists():
        found = read_json(path / "chat_template.json").get("chat_template")
    if found is None and (path / "chat_template.jinja").exists():
        found = (path / "chat_template.jinja").read_text(encoding="utf-8")
    if found is None and (path / "additional_chat_templates" / "default.jinja").exists():
        found = (path / "additional_chat_templates" / "default.jinja").read_text(encoding="utf-8")
    if isinstance(found, list):  # [{"name": ..., "template": ...}]
        found = {t.get("name"): t.get("template") for t in found if isinstance(t, dict)}
    if isinstance(found, dict):
        found = found.get("default")
    return found if isinstance(found, str) else None


# -- image / video processor settings <-> ImageConfig -------------------------------------------------------------


def image_config_from_hf(img: dict[str, Any], family: str, file: Path) -> ImageConfig:
    """The preprocessing an image processor's settings (``file``: where they were read) describe, as transformers'
    image processor of ``family`` follows them; settings llavakit does not implement are refused."""
    check_image_processor(img, file)
    tile = side_of(img.get("crop_size")) if img.get("do_center_crop") else None
    tile = tile or side_of(img.get("size")) or 336
    # without pinpoints of its own, transformers' image processor takes its class default (not config.json's)
    pins = None if family == "llava" else img.get("image_grid_pinpoints") or DEFAULT_PINPOINTS[family]
    return ImageConfig(
        tile=tile,
        mean=tuple(img.get("image_mean", CLIP_MEAN)),
        std=tuple(img.get("image_std", CLIP_STD)),
        resize_shortest=isinstance(img.get("size"), int) or "shortest_edge" in (img.get("size") or {}),
        center_crop=bool(img.get("do_center_crop")),
        pad_square=family == "llava" and bool(img.get("do_pad")),
        pinpoints=tuple((int(h), int(w)) for h, w in pins) if pins else None,
        rescale=img.get("rescale_factor", 1 / 255),
        resample=img.get("resample", 3),
    )


def video_config_from_hf(vid: dict[str, Any], image: ImageConfig) -> ImageConfig:
    """OneVision's video preprocessing (frames squashed to the tile) from its settings; the image one's by default."""
    return ImageConfig(
        tile=side_of(vid.get("size")) or image.tile,
        mean=tuple(vid.get("image_mean", image.mean)),
        std=tuple(vid.get("image_std", image.std)),
        resize_shortest=False,
        center_crop=False,
        rescale=vid.get("rescale_factor", 1 / 255),
        resample=vid.get("resample", image.resample),
    )


def image_processor_dict(c: ImageConfig, family: str) -> dict[str, Any]:
    """``preprocessor_config.json`` of ``c`` as transformers writes it (with ``processor_class``)."""
    size = {"shortest_edge": c.tile} if c.resize_shortest else {"height": c.tile, "width": c.tile}
    img: dict[str, Any] = {
        "image_processor_type": IMAGE_PROCESSOR[family],
        "processor_class": PROCESSOR_CLASS[family],
        "do_resize": True,
        "size": size,
        "resample": c.resample,
        "do_center_crop": c.center_crop,
        "crop_size": {"height": c.tile, "width": c.tile},
        "do_rescale": True,
        "rescale_factor": c.rescale,
        "do_normalize": True,
        "image_mean": list(c.mean),
        "image_std": list(c.std),
        "do_convert_rgb": True,
        "do_pad": c.pad_square if family == "llava" else True,
    }
    if c.pinpoints:
        img["image_grid_pinpoints"] = [list(p) for p in c.pinpoints]
    return img


def video_processor_dict(v: ImageConfig, family: str) -> dict[str, Any]:
    """``video_preprocessor_config.json`` of OneVision's video preprocessing ``v``."""
    return {
        "video_processor_type": "LlavaOnevisionVideoProcessor",
        "processor_class": PROCESSOR_CLASS[family],
        "size": {"height": v.tile, "width": v.tile},
        "resample": v.resample,
        "do_resize": True,
        "do_rescale": True,
        "rescale_factor": v.rescale,
        "do_normalize": True,
        "image_mean": list(v.mean),
        "image_std": list(v.std),
        "do_convert_rgb": True,
    }


def decoder_template(model_cfg: dict[str, Any], default: str, path: Path) -> str | None:
    """The template of a checkpoint that names none (no Jinja chat template, no conversation_template.json), from its
    decoder, when that is not ``default`` (the family's; with a warning saying so); None keeps the default.

    Example: an llava-v1.6-mistral-7b-hf download from before llava-hf added chat templates (text_config model_type
    "mistral") -> ``mistral_instruct``, where the family's default would have written Vicuna prompts.
    """
    text = model_cfg.get("text_config") or {}
    kind, vocab = text.get("model_type", "llama"), text.get("vocab_size") or 0
    guess = {"mistral": "mistral_instruct", "qwen2": "qwen_1_5"}.get(kind)
    if kind == "llama" and vocab >= 128256:  # Llama-3 (128256, grown by the conversion)
        guess = "llama3"
    elif kind == "llama" and 64000 <= vocab < 64256:  # Yi-34B
        guess = "chatml_direct"
    if guess is None or guess == default:
        return None
    warnings.warn(
        f"{path} ships no chat template: prompts use {guess!r}, guessed from its {kind} decoder; pass "
        "template=NAME (from_pretrained) to choose another",
        stacklevel=3,
    )
    return guess
