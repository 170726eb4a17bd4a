"""Which image tokens show something: per-token foreground flags for the background-hiding curriculum.

With ``data.background_drop: [start, end]`` the training loop hides each image token that shows only background
from the attention of the whole sequence with a probability that goes linearly from ``start`` at the first step
to ``end`` at the last. A model that starts with the objects' tokens alone learns to look one object up among
several, then keeps doing it as the background comes back (``scripts/probe_lookup.py --task scene --ramp``).

Foreground is read from the image itself, for images drawn on one plain background colour (the synthetic
scenes): a pixel is foreground when a channel differs from the image's most common colour by more than
``FOREGROUND_DIFF``. The mask image goes through the processor's own preprocessing (resize, AnyRes views) and
the model's own packing (``pack_tiles``: unpad, newline per row), so its flags line up with the image tokens
one to one; an image token is foreground when any pixel of its patch is.

Worked example (the default model: tile 80, patch 16, pinpoints 80x160 ...): a 224 x 112 (w x h) scene ->
base view (squashed to 80x80, 5x5 = 25 patches) and a 1x2 tile grid (5x10 patches, nothing to unpad) plus 5
newlines -> 25 + 55 = 80 tokens. A square at x, y = 4..28 flags base patches (0, 0) and (1, 0) (squashed
horizontally), grid patches (0..1, 0..1) and the 5 newlines: 9 of 80 tokens.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from PIL import Image

from ..data.synth_render import render_scene
from ..data.synth_scene import Scene
from ..model.llava import pack_tiles
from ..processing.anyres import num_image_tokens
from ..processing.image import ImageConfig, preprocess
from ..processing.processor import LlavaProcessor

FOREGROUND_DIFF = 24  # uint8 difference from the background colour above which a pixel is foreground
_FG_LEVEL = 0.75  # the mask's foreground is white, its background the processor's pad colour (~0.47)


def foreground_pixels(img: Image.Image) -> np.ndarray:
    """(H, W) bool: pixels that differ from the image's most common colour (its background)."""
    rgb = np.asarray(img.convert("RGB"), dtype=np.int16)  # (H, W, 3)
    step = max(1, max(rgb.shape[:2]) // 256)  # the mode of a plain background survives a strided sample
    sub = rgb[::step, ::step].astype(np.int32)
    packed = (sub[..., 0] << 16) | (sub[..., 1] << 8) | sub[..., 2]
    values, counts = np.unique(packed, return_counts=True)
    bg = int(values[counts.argmax()])
    colour = np.array([(bg >> 16) & 255, (bg >> 8) & 255, bg & 255], dtype=np.int16)
    return (np.abs(rgb - colour) > FOREGROUND_DIFF).any(-1)


def patch_flags(views: torch.Tensor, cfg: ImageConfig, patch: int) -> torch.Tensor:
    """(V, 3, S, S) preprocessed mask views -> (V, g*g) bool: patches holding any foreground pixel."""
    level = (_FG_LEVEL - cfg.mean[0]) / cfg.std[0]
    fg = views[:, 0] > level  # (V, S, S)
    v, s, _ = fg.shape
    g = s // patch
    return fg[:, : g * patch, : g * patch].reshape(v, g, patch, g, patch).any(4).any(2).reshape(v, g * g)


def token_foreground(img: Image.Image, processor: LlavaProcessor, multi_image: bool = False) -> torch.Tensor:
    """(num_image_tokens,) bool for one image: True where the image token shows foreground (newlines: True)."""
    geom = processor.geometry
    if geom.extra != 0:
        raise ValueError(
            f"foreground flags need one token per patch; this geometry adds {geom.extra} token(s) per tile "
            "(vision_feature_select_strategy 'full' or SigLIP); use 'default' with a CLIP tower"
        )
    cfg = processor.image_config
    mask = Image.new("RGB", img.size, cfg.pad_colour)
    mask.paste((255, 255, 255), mask=Image.fromarray(foreground_pixels(img).astype(np.uint8) * 255))
    flags = patch_flags(preprocess(mask, cfg, multi_image=multi_image), cfg, geom.patch)  # (V, g*g)
    h, w = img.height, img.width
    if geom.pinpoints is None:
        out = flags[0]
    elif multi_image:
        out = torch.cat([flags[0], torch.ones(1, dtype=torch.bool)])
    else:
        out = pack_tiles(flags[..., None].float(), h, w, geom, torch.ones(1))[:, 0] > 0
    expected = num_image_tokens(h, w, geom, multi_image=multi_image)
    if out.shape[0] != expected:  # an internal invariant, as in LlavaModel.image_features
        raise RuntimeError(f"{out.shape[0]} foreground flags for a {h}x{w} image, expected {expected}")
    return out


def sample_foreground(input_ids: torch.Tensor, images: list[Image.Image], processor: LlavaProcessor) -> torch.Tensor:
    """(L,) bool over a sample's ids: False only on image tokens that show background."""
    out = torch.ones(input_ids.shape[0], dtype=torch.bool)
    if not images:
        return out
    multi = processor.family == "llava_onevision" and len(images) > 1
    flags = torch.cat([token_foreground(im, processor, multi) for im in images])
    slots = input_ids == processor.image_token_id
    if int(slots.sum()) != flags.shape[0]:
        raise ValueError(f"the sample holds {int(slots.sum())} image tokens but its images give {flags.shape[0]}")
    out[slots] = flags
    return out


def hide_background(
    attention_mask: torch.Tensor, foreground: torch.Tensor, p: float, generator: torch.Generator
) -> torch.Tensor:
    """(B, T) attention mask with each background image token (``foreground`` False) hidden with probability p.

    Hidden tokens leave the keys of every query (the sequence's text does not see them); positions are not
    shifted (the loop passes the position ids of the unhidden mask).
    """
    if p <= 0:
        return attention_mask
    drop = torch.rand(foreground.shape, generator=generator) < p  # (B, T)
    return attention_mask * ~(drop & ~foreground.bool())


def drop_probability(start: float, end: float, step: int, total: int) -> float:
    """Linear from ``start`` at step 0 to ``end`` at step total - 1."""
    return start + (end - start) * step / max(1, total - 1)


def scene_token_owners(scene: Scene, processor: LlavaProcessor) -> torch.Tensor:
    """(num_image_tokens,) long for a synthetic scene: the index of the shape each image token shows, -1 for
    background, -2 for a token showing two shapes, -3 for the newlines (the recipe's probes and experiments).

    Each shape is rendered alone on the scene's background and flagged with ``token_foreground``.
    """
    empty = token_foreground(render_scene(dataclasses.replace(scene, shapes=(), text=None)), processor)
    owner = torch.full(empty.shape, -1, dtype=torch.long)
    for i, s in enumerate(scene.shapes):
        f = token_foreground(render_scene(dataclasses.replace(scene, shapes=(s,), text=None)), processor) & ~empty
        owner[f & (owner >= 0)] = -2
        owner[f & (owner == -1)] = i
    owner[empty] = -3
    return owner
