"""Original-format LLaVA checkpoints (haotian-liu/LLaVA, LLaVA-VL/LLaVA-NeXT): config -> LlavaConfig, the
vocab growth the HF format needs for its ``<image>`` token, and streaming the weights in the current layout.

An original ``config.json`` is the LLM's config plus ``mm_*`` fields::

    "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava",
    "mm_vision_tower": "openai/clip-vit-large-patch14-336", "mm_hidden_size": 1024,
    "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch",
    "image_aspect_ratio": "anyres", "image_grid_pinpoints": [[336, 672], ...],
    "mm_patch_merge_type": "spatial_unpad"

Family: ``mm_patch_merge_type`` flat (or absent) -> ``llava`` (1.5); ``spatial_unpad`` with ``anyres`` ->
``llava_next``; ``spatial_unpad`` with ``anyres_max_N`` -> ``llava_onevision``.

Conventions that differ from HF and are converted here:

- pinpoints: the original code reads each pair as (width, height) (``select_best_resolution`` unpacks
  ``for width, height in possible_resolutions``); HF reads (height, width). Each pair is swapped and the
  order kept, so both pick the same candidate. The OneVision string form ``"(1x1),...,(6x6)"`` means the
  range from the first to the last pair, ``(i, j)`` for i in 1..6 for j in 1..6, times the tile size, again
  as (width, height).
- SigLIP towers: the original code deletes SigLIP's last layer and takes the output of what remains
  (``hidden_states[-1]``, all 729 tokens). HF (and llavakit) keep ``num_hidden_layers - 1`` layers with
  ``vision_feature_layer=-1`` and strategy ``"full"``. CLIP towers keep every layer;
  ``mm_vision_select_layer`` (-2) becomes ``vision_feature_layer`` and ``mm_vision_select_feature``
  patch / cls_patch becomes ``default`` / ``full``.
- image tokens: the original splices ``-200`` into the ids. HF gives ``<image>`` a real id, the first id
  after the tokenizer's own tokens: ``vocab_size`` for Llama/Mistral/Yi (32000, 64000), 151646 for Qwen
  (151647 for ``<video>``); the embedding matrices grow to match (``vocab_growth.converted_vocab_size``).

Converting an original checkpoint directory (the tower may be inside it or in the ``mm_vision_tower`` model)::

    cfg = read_config_dict(path)
    orig = config_from_original(cfg, read_vision_tower_config(cfg, path))
    with torch.device("meta"):
        model = LlavaModel(orig.config)
    load_into(model, original_tensors(path, orig.config))
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import LlavaConfig, TextConfig, VisionConfig
from ..processing.image import CLIP_MEAN, CLIP_STD, SIGLIP_MEAN, SIGLIP_STD
from .config_types import check_original_config_types
from .hub import HubUnreachableError, resolve_model_path
from .keymaps import LM_HEAD, TEXT, detect_layout, rename_tensors, trim_vision_layers
from .load import checkpoint_keys, iter_checkpoint_tensors, read_config_dict
from .vocab_growth import converted_vocab_size, grow_rows

# config.json of the towers the released checkpoints name in mm_vision_tower (vision part only)
KNOWN_TOWERS: dict[str, dict[str, Any]] = {
    "clip-vit-large-patch14-336": dict(model_type="clip_vision_model", image_size=336),
    "clip-vit-large-patch14": dict(model_type="clip_vision_model", image_size=224),
    "siglip-so400m-patch14-384": dict(
        model_type="siglip_vision_model",
        hidden_size=1152,
        intermediate_size=4304,
        num_hidden_layers=27,
        num_attention_heads=16,
        image_size=384,
        patch_size=14,
    ),
}
_TEXT_BY_ARCH = {
    "LlavaLlamaForCausalLM": "llama",
    "LlavaMistralForCausalLM": "mistral",
    "LlavaQwenForCausalLM": "qwen2",
}
_TEXT_BY_TYPE = {"llava": "llama", "llava_llama": "llama", "llava_mistral": "mistral", "llava_qwen": "qwen2"}
QWEN_TOKENIZER_SIZE = 151646  # 151643 BPE tokens + <|endoftext|>, <|im_start|>, <|im_end|>


@dataclass
class OriginalProcessing:
    """What the processor needs from an original config (sizes in HF's (height, width) order)."""

    image_aspect_ratio: str  # "square" | "pad" | "anyres" | "anyres_max_9"
    image_grid_pinpoints: list[list[int]] | None
    image_size: int  # tile side in pixels
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    template: str | None  # conversation template name, None when it cannot be guessed
    squash: bool = False  # a single view is resized straight to the tile (SigLIP), not shortest edge + centre crop


@dataclass
class OriginalConfig:
    """:func:`config_from_original`'s answer: the converted model config and the processor facts."""

    config: LlavaConfig  # HF conventions: image token ids set, text.vocab_size grown (vocab_growth)
    processing: OriginalProcessing
    stored_vocab_size: int  # rows of embed_tokens / lm_head in the original checkpoint


def is_original_config(cfg: dict[str, Any]) -> bool:
    """True for the config.json of an original-format LLaVA checkpoint (LLM config + ``mm_*`` fields)."""
    return "mm_vision_tower" in cfg or "mm_hidden_size" in cfg


def config_from_original(
    cfg: dict[str, Any], vision_config: dict[str, Any] | None = None, name: str | None = None
) -> OriginalConfig:
    """The converted LlavaConfig (and processor facts) of an original checkpoint's ``config.json``.

    ``vision_config`` is the ``config.json`` of the ``mm_vision_tower`` model (a CLIP/SigLIP config, whole or
    vision part); without it the tower must be one of :data:`KNOWN_TOWERS`. ``name`` (repo id or directory)
    only helps guess the conversation template.
    """
    if not is_original_config(cfg):
        raise ValueError("not an original LLaVA config: no mm_vision_tower / mm_hidden_size field")
    check_original_config_types(cfg)
    family = _family(cfg)
    _check_unsupported(cfg, family)
    vision = _vision(cfg, vision_config)
    if cfg.get("mm_hidden_size", vision.hidden_size) != vision.hidden_size:
        raise ValueError(
            f"mm_hidden_size {cfg['mm_hidden_size']} != hidden size {vision.hidden_size} of the vision tower "
            f"{cfg.get('mm_vision_tower')!r}: this model was trained with another tower. "
            + (convert_hint(name) if vision_config is None else "Pass the directory of that tower (--vision-tower DIR)")
        )
    text = TextConfig.from_hf({**cfg, "model_type": _text_type(cfg)})
    if vision.model_type == "siglip_vision_model":
        vision = dataclasses.replace(vision, num_hidden_layers=vision.num_hidden_layers - 1)
        layer, strategy = -1, "full"
    else:
        layer = cfg.get("mm_vision_select_layer", -2)
        feature = cfg.get("mm_vision_select_feature", "patch")
        if feature not in ("patch", "cls_patch"):
            raise ValueError(f"mm_vision_select_feature must be 'patch' or 'cls_patch', got {feature!r}")
        strategy = "default" if feature == "patch" else "full"
    projector = cfg.get("mm_projector_type", "linear")
    if projector != "linear" and not re.fullmatch(r"mlp\d+x_gelu", projector):
        raise ValueError(f"mm_projector_type {projector!r} is not supported (only linear and mlpNx_gelu)")
    image_id = cfg.get("image_token_index")
    if not isinstance(image_id, int) or image_id < 0:
        image_id = QWEN_TOKENIZER_SIZE if text.model_type == "qwen2" else text.vocab_size
    video_id = image_id + 1 if family == "llava_onevision" else None
    rows = converted_vocab_size(text.vocab_size, [image_id] + ([video_id] if video_id is not None else []))
    pins = cfg.get("image_grid_pinpoints")
    aspect = cfg.get("image_aspect_ratio") or "square"
    config = LlavaConfig(
        model_type=family,
        vision=vision,
        text=dataclasses.replace(text, vocab_size=rows),
        image_token_id=image_id,
        video_token_id=video_id,
        projector_type=projector,
        projector_hidden_act="gelu",  # nn.GELU() in the original builder
        vision_feature_layer=layer,
        vision_feature_select_strategy=strategy,
        image_grid_pinpoints=None if family == "llava" else pinpoints_to_hf(pins, vision),
        vision_aspect_ratio=aspect if family == "llava_onevision" else None,
        tie_word_embeddings=text.tie_word_embeddings,
    )
    processing = OriginalProcessing(
        image_aspect_ratio=aspect,
        image_grid_pinpoints=config.image_grid_pinpoints,
        image_size=vision.image_size,
        image_mean=SIGLIP_MEAN if vision.model_type == "siglip_vision_model" else CLIP_MEAN,
        image_std=SIGLIP_STD if vision.model_type == "siglip_vision_model" else CLIP_STD,
        template=guess_template(cfg, text, name),
        squash=vision.model_type == "siglip_vision_model",
    )
    return OriginalConfig(config=config, processing=processing, stored_vocab_size=text.vocab_size)


# OneVision's video settings llavakit implements (model/llava.py video_features): anything else is refused
OV_VIDEO_SETTINGS = {
    "mm_newline_position": (None, "one_token"),
    "mm_spatial_pool_mode": (None, "bilinear"),
    "mm_spatial_pool_stride": (None, 2),
}


def _check_unsupported(cfg: dict[str, Any], family: str) -> None:
    """Refuse original settings that change what the model computes and that llavakit does not implement."""
    if cfg.get("mm_use_im_start_end") is True:  # (mm_use_im_patch_token only adds a vocabulary row)
        raise ValueError(
            "mm_use_im_start_end true (the first LLaVA checkpoints wrap each image in <im_start> <im_end> tokens) "
            "is not supported; LLaVA-1.5 and later set it false"
        )
    if family == "llava_onevision":
        for key, allowed in OV_VIDEO_SETTINGS.items():
            if cfg.get(key) not in allowed:
                raise ValueError(
                    f"{key} {cfg[key]!r} is not supported (llavakit pools video frames as released OneVision "
                    f"checkpoints do: {', '.join(f'{k} {v[1]!r}' for k, v in OV_VIDEO_SETTINGS.items())})"
                )


def _family(cfg: dict[str, Any]) -> str:
    merge = cfg.get("mm_patch_merge_type") or "flat"
    aspect = cfg.get("image_aspect_ratio") or "square"
    if merge == "flat" and aspect in ("square", "pad"):
        return "llava"
    if merge == "spatial_unpad" and aspect == "anyres":
        return "llava_next"
    if merge == "spatial_unpad" and re.fullmatch(r"anyres_max_\d+", aspect):
        return "llava_onevision"
    raise ValueError(
        f"unsupported combination mm_patch_merge_type={merge!r}, image_aspect_ratio={aspect!r}; supported: "
        "flat + square/pad (LLaVA-1.5), spatial_unpad + anyres (1.6), spatial_unpad + anyres_max_N (OV)"
    )


def _text_type(cfg: dict[str, Any]) -> str:
    archs = cfg.get("architectures") or []
    for arch in archs:
        if arch in _TEXT_BY_ARCH:
            return _TEXT_BY_ARCH[arch]
    if archs:
        raise ValueError(f"unsupported architecture {archs[0]!r}; supported: {', '.join(_TEXT_BY_ARCH)}")
    mt = cfg.get("model_type", "llava")
    if mt not in _TEXT_BY_TYPE:
        raise ValueError(f"unsupported model_type {mt!r}; supported: {', '.join(_TEXT_BY_TYPE)}")
    return _TEXT_BY_TYPE[mt]


def _vision(cfg: dict[str, Any], given: dict[str, Any] | None) -> VisionConfig:
    tower = str(cfg.get("mm_vision_tower", ""))
    if given is None:
        if _known_tower(tower) is None:
            raise ValueError(
                f"unknown vision tower {tower!r} (known without its config.json: {', '.join(KNOWN_TOWERS)}). "
                + convert_hint(None)
            )
        given = KNOWN_TOWERS[_known_tower(tower)]  # type: ignore[index]
    outer = str(given.get("model_type", ""))
    d = dict(given.get("vision_config") or given)  # CLIPConfig / SiglipConfig nest the vision part
    siglip = "siglip" in outer or "siglip" in str(d.get("model_type", "")) or "siglip" in tower.lower()
    d["model_type"] = "siglip_vision_model" if siglip else "clip_vision_model"
    return VisionConfig.from_hf(d)


def _known_tower(tower: str) -> str | None:
    base = tower.rstrip("/").rsplit("/", 1)[-1]
    return base if base in KNOWN_TOWERS else None


def pinpoints_to_hf(value: str | list | None, vision: VisionConfig | int) -> list[list[int]]:
    """Original ``image_grid_pinpoints`` ((width, height) pairs, list or string) -> HF (height, width) pairs.

    >>> pinpoints_to_hf([[336, 672], [1008, 336]], 336)
    [[672, 336], [336, 1008]]
    >>> pinpoints_to_hf("(1x1),...,(2x3)", 384)[:4]  # (w, h) = (1,1) (1,2) (1,3) (2,1) tiles -> [h, w] px
    [[384, 384], [768, 384], [1152, 384], [384, 768]]
    """
    tile = vision if isinstance(vision, int) else vision.image_size
    if value is None:
        raise ValueError("image_grid_pinpoints is required for anyres checkpoints but missing from config.json")
    pairs: list
    if isinstance(value, str) and "x" in value:
        found = re.findall(r"\((\d+)x(\d+)\)", value)
        if not found:
            raise ValueError(f"cannot parse image_grid_pinpoints {value!r}; expected e.g. '(1x1),...,(6x6)'")
        (w0, h0), (w1, h1) = map(int, found[0]), map(int, found[-1])
        pairs = [(i * tile, j * tile) for i in range(w0, w1 + 1) for j in range(h0, h1 + 1)]
    else:
        pairs = ast.literal_eval(value) if isinstance(value, str) else value
    try:
        return [[int(h), int(w)] for w, h in pairs]
    except (TypeError, ValueError) as e:
        raise ValueError(f"image_grid_pinpoints must be (width, height) pairs, got {value!r}") from e


LLAMA3_VOCAB = 128256


def guess_template(cfg: dict[str, Any], text: TextConfig, name: str | None = None) -> str | None:
    """The conversation template the released checkpoint was trained with, from its name and LLM.

    Stage-1 (projector pretraining) configs -> ``plain``; Mistral -> ``mistral_instruct``; Qwen ->
    ``qwen_1_5``; Yi-34B (Llama arch, vocab 64000) -> ``chatml_direct``; Llama-3 (vocab 128256, or "llama3" in
    the name: lmms-lab/llama3-llava-next-8b) -> ``llama3``; Vicuna (Llama, vocab 32000) -> ``vicuna_v1``.
    Anything else -> None: the caller must choose.
    """
    hint = f"{name or ''} {cfg.get('_name_or_path') or ''}".lower()
    if cfg.get("tune_mm_mlp_adapter") is True:
        return "plain"
    if text.model_type == "mistral" or "mistral" in hint:
        return "mistral_instruct"
    if text.model_type == "qwen2":
        return "qwen_1_5"
    if text.vocab_size == LLAMA3_VOCAB or "llama3" in hint.replace("-", "").replace("_", ""):
        return "llama3"
    if text.vocab_size == 64000 or "34b" in hint:
        return "chatml_direct"
    if text.vocab_size == 32000:
        return "vicuna_v1"
    return None


# -- reading an original checkpoint directory --------------------------------------------------------------


def read_vision_tower_config(
    cfg: dict[str, Any], path: str | Path, vision_tower: str | Path | None = None
) -> dict[str, Any] | None:
    """The tower's config.json: from ``vision_tower`` (a directory or hub id) when given, else None for a
    :data:`KNOWN_TOWERS` tower, else from ``mm_vision_tower`` (local directory or hub id)."""
    check_original_config_types(cfg)
    if vision_tower is None and _known_tower(str(cfg.get("mm_vision_tower", ""))) is not None:
        return None
    source = vision_tower if vision_tower is not None else cfg.get("mm_vision_tower")
    if not source:
        raise ValueError(f"{Path(path) / 'config.json'} names no mm_vision_tower; pass the tower directory")
    return read_config_dict(_tower_path(source, path))


def _tower_path(source: str | Path, path: str | Path) -> Path:
    try:
        return resolve_model_path(source)
    except (HubUnreachableError, FileNotFoundError) as e:
        raise type(e)(
            f"{path} needs its vision tower {str(source)!r} (mm_vision_tower): {e}. {convert_hint(path)}"
        ) from e


def convert_hint(src: str | Path | None) -> str:
    """The fix for an original checkpoint whose vision tower is unknown, unreachable or not the one it names: convert
    it once with the tower's directory (training's model.init takes no separate tower: model.vision_tower is for
    building from a decoder)."""
    return (
        f"Convert it with the tower's local directory: `llava convert {src or 'SRC'} DST --vision-tower DIR`, "
        "then use DST (`--model DST`; to train from it, model.init=DST)"
    )


def original_tensors(
    path: str | Path, config: LlavaConfig, vision_tower: str | Path | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """Current-layout ``(name, tensor)`` pairs of an original checkpoint directory, streamed.

    Keys are renamed (:mod:`keymaps`), embedding rows grown to ``config.text.vocab_size``, and when the
    checkpoint does not hold the vision tower it is read from ``vision_tower`` (or ``mm_vision_tower``),
    keeping ``config.vision.num_hidden_layers`` layers (SigLIP loses its last one, as in the original code).
    """
    path = Path(path)
    keys = checkpoint_keys(path)
    layout = detect_layout(keys)
    if layout != "original":
        raise ValueError(f"{path} is in the {layout!r} layout, not the original LLaVA one")
    grow = {TEXT + "embed_tokens.weight", LM_HEAD + "weight"}
    for name, t in rename_tensors(iter_checkpoint_tensors(path), "original"):
        yield name, grow_rows(t, config.text.vocab_size, name) if name in grow else t
    if not any(k.startswith("model.vision_tower.vision_tower.") for k in keys):
        source = vision_tower if vision_tower is not None else read_config_dict(path).get("mm_vision_tower")
        if not source:
            raise ValueError(f"{path} holds no vision tower weights and names no mm_vision_tower")
        tower = iter_checkpoint_tensors(_tower_path(source, path))
        yield from trim_vision_layers(rename_tensors(tower, "original"), config.vision.num_hidden_layers)
