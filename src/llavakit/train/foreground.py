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
from ..model.llava import pack_tiles, positions_from_mask
from ..processing.anyres import num_image_tokens
from ..processing.image import ImageConfig, preprocess_views, to_array
from ..processing.processor import LlavaProcessor

FOREGROUND_DIFF = 24  # uint8 difference from the background colour above which a pixel is foreground
_FG_LEVEL = 0.75  # the mask's foreground is white, its background the processor's pad colour (~0.47)


def foreground_pixels(img: Image.Image, background: tuple[int, int, int] | None = None) -> np.ndarray:
    """(H, W) bool: pixels that differ from ``background`` (default: the image's most common colour)."""
    rgb = np.asarray(img.convert("RGB"), dtype=np.int16)  # (H, W, 3)
    if background is None:
        step = max(1, max(rgb.shape[:2]) // 256)  # the mode of a plain background survives a strided sample
        sub = rgb[::step, ::step].astype(np.int32)
        packed = (sub[..., 0] << 16) | (sub[..., 1] << 8) | sub[..., 2]
        values, counts = np.unique(packed, return_counts=True)
        bg = int(values[counts.argmax()])
        background = ((bg >> 16) & 255, (bg >> 8) & 255, bg & 255)
    return (np.abs(rgb - np.array(background, dtype=np.int16)) > FOREGROUND_DIFF).any(-1)


def foreground_levels(cfg: ImageConfig) -> np.ndarray:
    """(256,) bool: the uint8 mask values whose preprocessed value (channel 0: rescaled, normalised, in float32
    as ``preprocess`` computes it) lies above the foreground level; a lookup table equal to thresholding the
    normalised views."""
    ramp = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)  # (1, 256, 3): an image row
    normalised = torch.from_numpy(to_array(Image.fromarray(ramp, "RGB"), cfg)[0, 0])  # (256,) channel 0
    return (normalised > (_FG_LEVEL - cfg.mean[0]) / cfg.std[0]).numpy()


def patch_flags(fg: np.ndarray, patch: int) -> torch.Tensor:
    """(V, S, S) bool foreground of the preprocessed views -> (V, g*g) bool: patches holding any of it."""
    v, s, _ = fg.shape
    g = s // patch
    flags = fg[:, : g * patch, : g * patch].reshape(v, g, patch, g, patch).any(axis=(2, 4))
    return torch.from_numpy(flags.reshape(v, g * g))


def mask_flags(
    masks: list[np.ndarray], size: tuple[int, int], processor: LlavaProcessor, multi_image: bool = False
) -> list[torch.Tensor]:
    """One (num_image_tokens,) bool per (H, W) bool pixel mask of an image of ``size`` (h, w): True where the
    image token's patch holds a masked pixel (newlines: True).

    Each mask is drawn white on the processor's pad colour and goes through its preprocessing; three masks
    share one RGB image, one per channel (every resize, crop and paste of the preprocessing treats the channels
    apart), and the views' uint8 values are compared with ``foreground_levels``: the flags are those of one
    mask per image thresholded after normalisation, at a third of the resizes and none of the float work."""
    geom, cfg = processor.geometry, processor.image_config
    if geom.extra != 0:
        raise ValueError(
            f"foreground flags need one token per patch; this geometry adds {geom.extra} token(s) per tile "
            "(vision_feature_select_strategy 'full' or SigLIP); use 'default' with a CLIP tower"
        )
    h, w = size
    levels, pad = foreground_levels(cfg), cfg.pad_colour[0]
    expected = num_image_tokens(h, w, geom, multi_image=multi_image)
    out: list[torch.Tensor] = []
    for k in range(0, len(masks), 3):
        group = masks[k : k + 3]
        planes = [np.where(m, np.uint8(255), np.uint8(pad)) for m in group]
        planes += [np.full((h, w), pad, dtype=np.uint8)] * (3 - len(group))
        rgb = Image.fromarray(np.stack(planes, axis=-1), "RGB")
        views = np.stack([np.asarray(v) for v in preprocess_views(rgb, cfg, multi_image=multi_image)])  # (V,S,S,3)
        for c in range(len(group)):
            flags = patch_flags(levels[views[..., c]], geom.patch)  # (V, g*g)
            if geom.pinpoints is None:
                tokens = flags[0]
            elif multi_image:
                tokens = torch.cat([flags[0], torch.ones(1, dtype=torch.bool)])
            else:
                tokens = pack_tiles(flags[..., None].float(), h, w, geom, torch.ones(1))[:, 0] > 0
            if tokens.shape[0] != expected:  # an internal invariant, as in LlavaModel.image_features
                raise RuntimeError(f"{tokens.shape[0]} foreground flags for a {h}x{w} image, expected {expected}")
            out.append(tokens)
    return out


def token_foreground(img: Image.Image, processor: LlavaProcessor, multi_image: bool = False) -> torch.Tensor:
    """(num_image_tokens,) bool for one image: True where the image token shows foreground (newlines: True)."""
    return mask_flags([foreground_pixels(img)], (img.height, img.width), processor, multi_image)[0]


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

    Each shape is rendered alone on the scene's background; its pixels that differ from the background are its
    mask (``mask_flags``).
    """
    alone = [render_scene(dataclasses.replace(scene, shapes=(s,), text=None)) for s in scene.shapes]
    masks = [foreground_pixels(im, scene.background) for im in alone]
    blank = np.zeros((scene.height, scene.width), dtype=bool)
    empty, *shapes = mask_flags([blank, *masks], (scene.height, scene.width), processor)
    owner = torch.full(empty.shape, -1, dtype=torch.long)
    for i, f in enumerate(shapes):
        f = f & ~empty
        owner[f & (owner >= 0)] = -2
        owner[f & (owner == -1)] = i
    owner[empty] = -3
    return owner


def hidden_background(
    batch: dict, drop: list[float], seed: int, step: int, total: int, micro: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """``data.background_drop`` = ``drop`` ([start, end]) in the training loop: the micro-batch's attention mask
    with background image tokens hidden (seeded by the run's ``seed``, the step and the micro-batch, so a resumed
    run hides the same tokens) and the position ids of the full mask."""
    if batch.get("foreground") is None:
        raise ValueError(
            "data.background_drop needs items with foreground flags; build the dataset with foreground=True"
        )
    start, end = drop
    p = drop_probability(start, end, step, total)
    g = torch.Generator().manual_seed(seed * 1_000_003 + step * 1_009 + micro)
    mask = batch["attention_mask"]
    b, t = mask.shape
    return {
        "attention_mask": hide_background(mask, batch["foreground"], p, g).to(device),
        "position_ids": positions_from_mask(mask, b, t, 0, device).to(device),
    }
