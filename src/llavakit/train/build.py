"""The model and processor a recipe starts from.

- ``init: DIR``: a full LLaVA checkpoint (HF or original format; processor files from the same directory).
- ``decoder: DIR`` + ``vision_tower: DIR``: a base decoder (HF Llama / Qwen2 / Mistral) and a separate vision tower
  (HF CLIP / SigLIP) joined by a freshly initialised projector, as the original stage 1 does. The decoder's
  tokenizer gains ``<image>`` at the id the llava-hf checkpoints use and the embeddings grow with mean rows
  (``llavakit.checkpoint.original`` does the arithmetic, the same as for converting original checkpoints).
- ``init: tiny:<family>``: a random tiny model with a character tokenizer (tests and tiny recipes).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .recipe import ModelSpec

if TYPE_CHECKING:
    from ..model.llava import LlavaModel
    from ..processing.processor import LlavaProcessor

_LLAVA_ARCH = {"llama": "LlavaLlamaForCausalLM", "mistral": "LlavaMistralForCausalLM", "qwen2": "LlavaQwenForCausalLM"}
FRESH = ("model.multi_modal_projector.", "model.image_newline")


def build_model(spec: ModelSpec) -> tuple[LlavaModel, LlavaProcessor]:
    """(float32 model, processor) for a recipe's ``model:`` section."""
    if spec.init and (spec.decoder or spec.vision_tower):
        raise ValueError("model: give either init (a LLaVA checkpoint) or decoder + vision_tower, not both")
    if spec.init and spec.init.startswith("tiny:"):
        return _tiny(spec)
    if spec.init:
        from ..checkpoint.api import load_model
        from ..processing.processor import LlavaProcessor

        model = load_model(spec.init, dtype=torch.float32)
        return model, LlavaProcessor.from_pretrained(spec.init, template=spec.template)
    if spec.decoder and spec.vision_tower:
        return _from_parts(spec)
    raise ValueError("model: set init (a LLaVA checkpoint directory) or both decoder and vision_tower")


def source_generation_config(spec: ModelSpec) -> str | None:
    """The ``generation_config.json`` text the run's outputs carry: ``model.init``'s, or for a model built from
    parts the decoder's (its extra end-of-sequence ids, e.g. Llama-3's ``<|eot_id|>``); None for a tiny model or
    a source without one."""
    from ..checkpoint.hub import resolve_model_path
    from ..checkpoint.save import read_generation_config

    source = spec.decoder if spec.decoder and spec.vision_tower else spec.init
    if not source or source.startswith("tiny:"):
        return None
    return read_generation_config(resolve_model_path(source))


def _tiny(spec: ModelSpec) -> tuple[LlavaModel, LlavaProcessor]:
    from ..config import FAMILIES
    from ..model.llava import LlavaModel
    from ..processing.processor import DEFAULT_TEMPLATE, LlavaProcessor
    from ..tiny import char_tokenizer, tiny_config

    family = spec.init.removeprefix("tiny:")  # type: ignore[union-attr]
    if family not in FAMILIES:
        raise ValueError(f"model.init tiny:{family}: family must be one of {', '.join(FAMILIES)}")
    torch.manual_seed(spec.seed)
    model = LlavaModel(tiny_config(family))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, p.shape[-1] ** -0.5)
    template = spec.template or DEFAULT_TEMPLATE[family]
    return model, LlavaProcessor.from_parts(char_tokenizer(), model.config, template=template)


def original_style_config(
    spec: ModelSpec, decoder_cfg: dict[str, Any], tower_cfg: dict[str, Any], image_token_id: int | None = None
) -> dict[str, Any]:
    """The decoder's config.json + the ``mm_*`` fields of an original LLaVA config for this recipe.

    ``image_token_id``: where ``<image>`` goes (the tokenizer's own ``<image>``, else its first free id).
    """
    mt = decoder_cfg.get("model_type")
    if mt not in _LLAVA_ARCH:
        raise ValueError(f"model.decoder has model_type {mt!r}; supported decoders: {', '.join(_LLAVA_ARCH)}")
    vision = tower_cfg.get("vision_config") or tower_cfg
    aspect = {"llava": "pad", "llava_next": "anyres", "llava_onevision": spec.vision_aspect_ratio or "anyres_max_9"}
    if spec.family not in aspect:
        raise ValueError(f"model.family must be one of {', '.join(aspect)}, got {spec.family!r}")
    cfg = {
        **decoder_cfg,
        "architectures": [_LLAVA_ARCH[mt]],
        "mm_vision_tower": spec.vision_tower,
        "mm_hidden_size": vision.get("hidden_size", 1024),
        "mm_projector_type": spec.projector_type,
        "mm_vision_select_layer": spec.vision_feature_layer,
        "mm_vision_select_feature": "patch" if spec.vision_feature_select_strategy == "default" else "cls_patch",
        "image_aspect_ratio": aspect[spec.family],
        "mm_patch_merge_type": "flat" if spec.family == "llava" else "spatial_unpad",
    }
    if image_token_id is not None:
        cfg["image_token_index"] = image_token_id
    if spec.family != "llava":
        tile = vision.get("image_size", 336)
        pins = spec.image_grid_pinpoints or (
            [[tile * i, tile * j] for i in range(1, 7) for j in range(1, 7)]
            if spec.family == "llava_onevision"
            else [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
        )
        cfg["image_grid_pinpoints"] = [[w, h] for h, w in pins]  # the original format stores (width, height)
    return cfg


def _from_parts(spec: ModelSpec) -> tuple[LlavaModel, LlavaProcessor]:
    from ..checkpoint.convert import original_tokenizer
    from ..checkpoint.fill import load_into
    from ..checkpoint.hub import resolve_model_path
    from ..checkpoint.load import read_config_dict
    from ..checkpoint.original import config_from_original
    from ..model.llava import LlavaModel
    from ..processing.processor import DEFAULT_TEMPLATE, LlavaProcessor

    decoder = resolve_model_path(spec.decoder)  # type: ignore[arg-type]
    tower = resolve_model_path(spec.vision_tower)  # type: ignore[arg-type]
    from ..processing.tokenizer import Tokenizer

    tok = Tokenizer.from_dir(decoder)
    image_id = tok.token_to_id("<image>")
    if image_id is None:  # the first id after the tokenizer's own (32000 for Vicuna, 151646 for Qwen2)
        image_id = tok.tok.get_vocab_size(with_added_tokens=True)
    cfg = original_style_config(spec, read_config_dict(decoder), read_config_dict(tower), image_id)
    config = config_from_original(cfg, read_config_dict(tower)).config
    torch.manual_seed(spec.seed)
    model = LlavaModel(config)  # fresh projector and image_newline (nn.Linear's default init)
    result = load_into(model, _part_tensors(decoder, tower, config), strict=False)
    wrong = [k for k in result.missing if not k.startswith(FRESH)] + result.unexpected + result.mismatched
    if wrong:
        raise ValueError(f"decoder {decoder} + vision tower {tower}: these tensors do not fit: {', '.join(wrong[:8])}")
    if result.untied:  # the decoder's config says tied, its stored head is not: keep both (as from_pretrained)
        config.tie_word_embeddings = config.text.tie_word_embeddings = False
    model.tie_weights()
    tokenizer = original_tokenizer(decoder, config)
    template = spec.template or DEFAULT_TEMPLATE[config.model_type]
    return model, LlavaProcessor.from_parts(tokenizer, config, template=template)


_TOWER_ROOTS = ("embeddings.", "encoder.", "pre_layrnorm.", "post_layernorm.", "head.")


def _part_tensors(decoder: Path, tower: Path, config: Any):  # noqa: ANN202
    """Current-layout tensors of a base decoder (embedding rows grown) and a separately saved vision tower.

    CLIP / SigLIP files hold ``vision_model.*`` (hub checkpoints) or, written by transformers 5 from a
    ``CLIPVisionModel``, the same keys without the ``vision_model.`` level; both are read.
    """
    from ..checkpoint.keymaps import LM_HEAD, TEXT, rename_tensors, trim_vision_layers
    from ..checkpoint.load import iter_checkpoint_tensors
    from ..checkpoint.vocab_growth import grow_rows

    grow = {TEXT + "embed_tokens.weight", LM_HEAD + "weight"}
    for name, t in rename_tensors(iter_checkpoint_tensors(decoder), "original"):
        if name.startswith("model.vision_tower."):
            continue  # a decoder checkpoint that carries a tower of its own: the recipe's tower wins
        yield name, grow_rows(t, config.text.vocab_size, name) if name in grow else t
    pairs = (("vision_model." + k if k.startswith(_TOWER_ROOTS) else k, t) for k, t in iter_checkpoint_tensors(tower))
    yield from trim_vision_layers(rename_tensors(pairs, "original"), config.vision.num_hidden_layers)


def drops_questions(processor: LlavaProcessor) -> bool:
    """True when the processor renders with a captions-only named template (``plain``: a user turn is only its
    images, the question is dropped), as a stage-1 checkpoint does."""
    from ..processing.templates import TEMPLATES

    named = TEMPLATES.get(processor.template)
    return processor.chat_template is None and named is not None and named.images_only


def trained_processor(processor: LlavaProcessor, template: str | None) -> LlavaProcessor:
    """The processor a run saves: with ``template`` (the recipe's data.template or model.template, the one the run
    trains with) as its template and exported chat template; unchanged when the recipe names none, or names the
    checkpoint's own Jinja template (``chat_template``)."""
    import copy

    from .labels import CHAT_TEMPLATE

    if not template or template == CHAT_TEMPLATE:
        return processor
    if processor.template == template and processor.chat_template is None:
        return processor
    out = copy.copy(processor)
    out.template, out.chat_template = template, None  # None: save_pretrained writes the named template as Jinja
    return out
