"""Key maps: the only place where foreign checkpoint layouts become llavakit's (= HF's current) keys.

Three layouts exist (the "Checkpoint layouts" table of the LLaVA compatibility notes):

``"hf"`` (current)
    ``model.vision_tower.vision_model.*``, ``model.multi_modal_projector.linear_k.*``,
    ``model.image_newline``, ``model.language_model.{embed_tokens,layers,norm}.*``, ``lm_head.*``
``"hf_old"`` (transformers < 4.52)
    ``vision_tower.vision_model.*``, ``multi_modal_projector.linear_k.*``, ``image_newline``,
    ``language_model.model.*``, ``language_model.lm_head.*``
``"original"`` (liuhaotian / lmms-lab)
    ``model.vision_tower.vision_tower.vision_model.*``, ``model.mm_projector.{0,2,4..}.*`` (Linear layers at
    the even Sequential indices; a bare ``model.mm_projector.weight`` for the ``linear`` projector),
    ``model.image_newline``, ``model.{embed_tokens,layers,norm}.*``, ``lm_head.*``

The "original" layout also covers the side files of the original code base: a separately stored CLIP / SigLIP
tower (``vision_model.*`` kept, ``text_model.*`` / projections / ``logit_scale`` dropped), the stage-1
``mm_projector.bin`` (``model.mm_projector.*`` only) and LoRA ``non_lora_trainables.bin`` (every key prefixed
``base_model.model.``).

Two variants of the HF layouts are accepted as well, because transformers 5 produces them: the vision tower
without its ``vision_model.`` level (``model.vision_tower.embeddings.*`` in memory, and
``vision_tower.embeddings.*`` in files that ``save_pretrained`` writes for a freshly built model). Both are
put back under ``vision_model.``.

Known junk is dropped: rotary ``inv_freq`` buffers, CLIP ``position_ids``, SigLIP's pooling ``head``.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Literal, TypeVar, overload

Layout = Literal["hf", "hf_old", "original"]
LAYOUTS: tuple[str, ...] = ("hf", "hf_old", "original")

VISION = "model.vision_tower.vision_model."
PROJECTOR = "model.multi_modal_projector."
NEWLINE = "model.image_newline"
TEXT = "model.language_model."
LM_HEAD = "lm_head."

T = TypeVar("T")

# Keys that carry no weights: recomputed buffers and parts of a CLIP/SigLIP checkpoint LLaVA never uses.
_JUNK = re.compile(
    r"(^|\.)(inv_freq|original_inv_freq|position_ids)$"  # RoPE / CLIP position buffers
    r"|^text_model\.|^(visual|text)_projection\.|^logit_(scale|bias)$"  # the text half of a CLIP / SigLIP
    r"|(^|\.)vision_model\.head\."  # SigLIP attention-pooling head (HF: vision_use_head=False)
)
_MM_PROJ = re.compile(r"^model\.mm_projector\.(?:(\d+)\.)?(weight|bias)$")
_LORA = re.compile(r"\.lora_[AB]\.|\.lora_embedding_[AB]$|\.lora_magnitude_vector")


def detect_layout(keys: Iterable[str]) -> Layout:
    """Which layout a set of checkpoint keys is in; raises ValueError on mixed or unknown keys.

    >>> detect_layout(["language_model.model.norm.weight", "multi_modal_projector.linear_1.weight"])
    'hf_old'
    """
    seen: dict[str, str] = {}  # layout -> one example key
    for k in keys:
        k = k.removeprefix("base_model.model.")
        if _JUNK.search(k):
            continue
        layout = _layout_of(k)
        if layout is not None:
            seen.setdefault(layout, k)
    if len(seen) == 1:
        return next(iter(seen))  # type: ignore[return-value]
    if not seen:
        raise ValueError(
            "cannot tell the checkpoint layout: no key starts with model.language_model. / language_model. / "
            "model.layers. / model.mm_projector. / vision_model. (is this a LLaVA checkpoint?)"
        )
    examples = ", ".join(f"{lay}: {k!r}" for lay, k in seen.items())
    raise ValueError(f"checkpoint mixes key layouts ({examples}); convert each part separately")


def _layout_of(k: str) -> str | None:
    if k.startswith(("model.vision_tower.vision_tower.", "model.mm_projector", "model.layers.", "model.norm.")):
        return "original"
    if k.startswith(("model.embed_tokens.", "vision_model.")):
        return "original"
    if k.startswith(("model.language_model.", "model.vision_tower.", "model.multi_modal_projector.")):
        return "hf"
    if k.startswith(("language_model.", "vision_tower.", "multi_modal_projector.")) or k == "image_newline":
        return "hf_old"
    return None  # lm_head.*, model.image_newline: the same in several layouts


def rename_key(key: str, layout: Layout) -> str | None:
    """The current-layout name of one checkpoint key, or None when the key is junk to drop.

    Keys outside the layout's known prefixes are returned unchanged, so that a strict load reports them.

    >>> rename_key("model.mm_projector.2.weight", "original")
    'model.multi_modal_projector.linear_2.weight'
    >>> rename_key("language_model.model.layers.0.mlp.up_proj.weight", "hf_old")
    'model.language_model.layers.0.mlp.up_proj.weight'
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    if layout == "original":
        key = key.removeprefix("base_model.model.")  # LoRA non_lora_trainables.bin
        if _LORA.search(key):
            raise ValueError(
                f"{key!r} is a LoRA adapter weight: merge the adapter into the base model before converting"
            )
        key = key.removeprefix("model.vision_tower.")  # -> vision_tower.vision_model.* (tower inside)
    if _JUNK.search(key):
        return None
    if layout == "hf":
        if key.startswith("model.vision_tower.") and not key.startswith(VISION):
            return VISION + key.removeprefix("model.vision_tower.")
        return key
    if layout == "original":
        return _rename_original(key)
    return _rename_hf_old(key)


def _rename_hf_old(key: str) -> str:
    if key.startswith("language_model.model."):
        return TEXT + key.removeprefix("language_model.model.")
    if key.startswith("language_model.lm_head."):
        return LM_HEAD + key.removeprefix("language_model.lm_head.")
    if key.startswith("vision_tower."):
        return VISION + key.removeprefix("vision_tower.").removeprefix("vision_model.")
    if key.startswith("multi_modal_projector."):
        return "model." + key
    if key == "image_newline":
        return NEWLINE
    return key


def _rename_original(key: str) -> str:
    # `model.vision_tower.` was stripped already: the tower sits at vision_tower.vision_model.*
    if key.startswith(("vision_tower.vision_model.", "vision_model.")):
        return VISION + key.removeprefix("vision_tower.").removeprefix("vision_model.")
    m = _MM_PROJ.match(key)
    if m:
        index, leaf = m.groups()
        if index is None:  # mm_projector_type "linear": a bare nn.Linear
            return f"{PROJECTOR}linear_1.{leaf}"
        if int(index) % 2:
            raise ValueError(
                f"{key!r}: odd mm_projector indices are activations and hold no weights; "
                "unsupported projector type (only linear and mlpNx_gelu are)"
            )
        return f"{PROJECTOR}linear_{int(index) // 2 + 1}.{leaf}"
    for part in ("embed_tokens.", "layers.", "norm."):
        if key.startswith("model." + part):
            return TEXT + key.removeprefix("model.")
    return key  # model.image_newline, lm_head.* are already current; anything else is reported on load


@overload
def to_hf_keys(state: Mapping[str, T], layout: Layout) -> dict[str, T]: ...
@overload
def to_hf_keys(state: Iterable[str], layout: Layout) -> list[str]: ...
@overload
def to_hf_keys(state: Iterable[tuple[str, T]], layout: Layout) -> Iterator[tuple[str, T]]: ...
def to_hf_keys(
    state: Mapping[str, T] | Iterable[str] | Iterable[tuple[str, T]], layout: Layout
) -> dict[str, T] | list[str] | Iterator[tuple[str, T]]:
    """Rename to the current layout, dropping junk: a state dict (-> new dict), key names (-> list), or
    ``(name, tensor)`` pairs (-> a lazy iterator, see :func:`rename_tensors`).

    Raises ValueError when two source keys land on the same name (e.g. a checkpoint holding both
    ``vision_tower.vision_model.x`` and ``vision_tower.x``).
    """
    if isinstance(state, Mapping):
        return dict(rename_tensors(state.items(), layout))
    items = iter(state)
    first = next(items, None)
    if first is None:
        return []
    items = itertools.chain([first], items)
    if isinstance(first, str):
        return [k for k, _ in rename_tensors(((k, None) for k in items), layout)]
    return rename_tensors(items, layout)  # type: ignore[arg-type]


def rename_tensors(pairs: Iterable[tuple[str, T]], layout: Layout) -> Iterator[tuple[str, T]]:
    """Streaming form of :func:`to_hf_keys` over ``(name, tensor)`` pairs, one tensor in flight at a time."""
    origin: dict[str, str] = {}
    for key, value in pairs:
        new = rename_key(key, layout)
        if new is None:
            continue
        if new in origin:
            raise ValueError(f"checkpoint keys {origin[new]!r} and {key!r} both map to {new!r}")
        origin[new] = key
        yield new, value


def trim_vision_layers(pairs: Iterable[tuple[str, T]], num_layers: int) -> Iterator[tuple[str, T]]:
    """Drop vision encoder layers ``>= num_layers`` (current-layout keys).

    The original OneVision code deletes SigLIP's last layer (27 -> 26) after loading
    ``google/siglip-so400m-patch14-384``; a tower read from that separate checkpoint must lose it too.
    """
    prefix = VISION + "encoder.layers."
    for key, value in pairs:
        if key.startswith(prefix) and int(key[len(prefix) :].split(".", 1)[0]) >= num_layers:
            continue
        yield key, value
