"""The reference image preprocessing (CLIP / SigLIP normalisation, LLaVA ``pad``, AnyRes tiling); reading the
images is ``image_load``.

Every step follows transformers' PIL image processors so that pixel values match theirs: geometry in PIL
(bicubic resampling, crops and pads on uint8), then ``x.astype(float64) * (1/255)`` cast to float32, then
``(x - mean) / std`` in float32. All sizes in signatures are (height, width); PIL's ``img.size`` is (w, h).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from .anyres import select_best_resolution
from .image_load import MAX_PIXELS, NAME_KEY, load_image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)
BICUBIC = Image.Resampling.BICUBIC


# -- configuration ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageConfig:
    """The preprocessing of one checkpoint (read from / written to ``preprocessor_config.json``)."""

    tile: int = 336  # side of one vision-tower input
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD
    resize_shortest: bool = True  # CLIP: shortest edge -> tile then centre crop; SigLIP / OneVision: squash
    center_crop: bool = True
    pad_square: bool = False  # LLaVA-1.5 `pad`: expand to a square with the mean colour first
    pinpoints: tuple[tuple[int, int], ...] | None = None  # AnyRes candidates (h, w)
    rescale: float = 1 / 255
    resample: int = int(Image.Resampling.BICUBIC)  # PIL's filter code, as preprocessor_config.json's "resample"

    @property
    def filter(self) -> Image.Resampling:
        return Image.Resampling(self.resample)

    @property
    def pad_colour(self) -> tuple[int, ...]:
        """The mean as a uint8 colour: CLIP -> (122, 116, 104), SigLIP -> (127, 127, 127)."""
        return tuple(int(m * 255) for m in self.mean)


# -- pure geometry on PIL images ---------------------------------------------------------------------------------


def shortest_edge_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(h, w) with the shortest side at ``size`` and the other ``int(size * long / short)`` (truncated).

    >>> shortest_edge_size(480, 640, 336)   # 336 * 640 / 480 = 448.0
    (336, 448)
    >>> shortest_edge_size(7, 5, 56)        # 56 * 7 / 5 = 78.4 -> 78
    (78, 56)
    """
    short, long = min(height, width), max(height, width)
    new_long = int(size * long / short)
    return (size, new_long) if height <= width else (new_long, size)


def resize_shortest_edge(
    img: Image.Image, size: int, *, max_pixels: int = MAX_PIXELS, resample: Image.Resampling = BICUBIC
) -> Image.Image:
    """Resize of the shortest side to ``size``, keeping the aspect ratio (see ``shortest_edge_size``).

    A result of more than ``max_pixels`` pixels (an image longer than ``max_pixels / size**2`` : 1) is refused
    rather than built: 1 x 40000 pixels at 336 would be a 336 x 13440000 image.
    """
    _check_shortest_edge(img.width, img.height, size, max_pixels, _name_of(img))
    h, w = shortest_edge_size(img.height, img.width, size)
    return img.resize((w, h), resample)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """The centre ``size x size`` (top/left offsets rounded down); a shorter side is zero-padded first."""
    w, h = img.size
    if w < size or h < size:
        cw, ch = max(w, size), max(h, size)
        canvas = Image.new("RGB", (cw, ch))
        canvas.paste(img, ((cw - w) // 2, (ch - h) // 2))
        img, w, h = canvas, cw, ch
    top, left = (h - size) // 2, (w - size) // 2
    return img.crop((left, top, left + size, top + size))


def expand_to_square(img: Image.Image, colour: tuple[int, ...], *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """LLaVA-1.5 ``pad``: centre the image on a square of its longest side filled with ``colour``.

    A square of more than ``max_pixels`` pixels (a longest side over ``sqrt(max_pixels)``) is refused rather than
    built: 1 x 40000 pixels would make a 40000 x 40000 canvas (4.8 GB).
    """
    w, h = img.size
    if w == h:
        return img
    _check_square(w, h, max_pixels, _name_of(img))
    side = max(w, h)
    canvas = Image.new("RGB", (side, side), colour)
    canvas.paste(img, ((side - w) // 2, (side - h) // 2))
    return canvas


def fit_size(height: int, width: int, target_h: int, target_w: int) -> tuple[int, int]:
    """(h, w) of an image scaled to fit inside the target keeping its aspect (the binding side is exact).

    The free side is rounded up (and capped at the target), as in the reference ``get_patch_output_size``.

    >>> fit_size(768, 1024, 672, 672)   # scale 0.65625: 768 * 0.65625 = 504
    (504, 672)
    >>> fit_size(5, 7, 56, 112)         # scale 8 binds on the height: ceil(7 * 8) = 56
    (56, 56)
    """
    sw, sh = target_w / width, target_h / height
    if sw < sh:
        return min(math.ceil(height * sw), target_h), target_w
    return target_h, min(math.ceil(width * sh), target_w)


def anyres_views(
    img: Image.Image, tile: int, pinpoints: tuple[tuple[int, int], ...], resample: Image.Resampling = BICUBIC
) -> list[Image.Image]:
    """[base view squashed to tile x tile] + the tiles of the image fitted on its best pinpoint, row-major.

    Example: a 1024x768 (w x h) photo on v1.6 pinpoints (tile 336) picks 672x672, is resized to 672x504 (w x h),
    pasted at y = 84 on a black 672x672 canvas and cut into 2 x 2 tiles: [base, top-left, top-right,
    bottom-left, bottom-right].
    """
    ph, pw = select_best_resolution(img.height, img.width, pinpoints)
    nh, nw = fit_size(img.height, img.width, ph, pw)
    canvas = Image.new("RGB", (pw, ph))
    canvas.paste(img.resize((nw, nh), resample), ((pw - nw) // 2, (ph - nh) // 2))
    tiles = [canvas.crop((x, y, x + tile, y + tile)) for y in range(0, ph, tile) for x in range(0, pw, tile)]
    return [img.resize((tile, tile), resample)] + tiles


# -- numbers -----------------------------------------------------------------------------------------------------


def rescale(img: Image.Image | np.ndarray, factor: float = 1 / 255) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 ``x * factor`` (computed in float64 like the reference, then cast)."""
    return (np.asarray(img).astype(np.float64) * factor).astype(np.float32)


def normalize(x: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """float32 (H, W, 3) -> float32 (3, H, W): ``(x - mean) / std`` per channel."""
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def to_array(img: Image.Image, cfg: ImageConfig) -> np.ndarray:
    """(3, H, W) float32 of an RGB image: rescale then normalise."""
    return normalize(rescale(img, cfg.rescale), cfg.mean, cfg.std)


def tile_image(img: Image.Image, cfg: ImageConfig, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """One vision input as a uint8 image (tile x tile): resize (shortest edge or squash), centre crop."""
    if cfg.resize_shortest:
        img = resize_shortest_edge(img, cfg.tile, max_pixels=max_pixels, resample=cfg.filter)
    elif img.size != (cfg.tile, cfg.tile):
        img = img.resize((cfg.tile, cfg.tile), cfg.filter)
    if cfg.center_crop:
        img = center_crop(img, cfg.tile)
    return img


def to_tile(img: Image.Image, cfg: ImageConfig, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """One vision input (3, tile, tile): ``tile_image``, then rescale, normalise."""
    return to_array(tile_image(img, cfg, max_pixels=max_pixels), cfg)


def preprocess_views(
    img: Image.Image,
    cfg: ImageConfig,
    *,
    multi_image: bool = False,
    name: str | None = None,
    max_pixels: int = MAX_PIXELS,
) -> list[Image.Image]:
    """The uint8 views (tile x tile each) that ``preprocess`` rescales and normalises, in its order."""
    what = f"image {name}" if name else _name_of(img)
    check_geometry(img.width, img.height, cfg, multi_image=multi_image, max_pixels=max_pixels, what=what)
    if cfg.pinpoints is None or multi_image:
        if cfg.pad_square or multi_image:
            img = expand_to_square(img, cfg.pad_colour, max_pixels=max_pixels)
        return [tile_image(img, cfg, max_pixels=max_pixels)]
    return [tile_image(v, cfg) for v in anyres_views(img, cfg.tile, cfg.pinpoints, cfg.filter)]


def preprocess(
    img: Image.Image,
    cfg: ImageConfig,
    *,
    multi_image: bool = False,
    name: str | None = None,
    max_pixels: int = MAX_PIXELS,
) -> torch.Tensor:
    """(views, 3, tile, tile) float32 for one RGB image.

    - llava-1.5 (no pinpoints): 1 view, optionally expanded to a square with the mean colour first;
    - AnyRes: 1 base view + rows * cols tiles (see ``anyres_views``);
    - OneVision images of a multi-image prompt: 1 view, expanded to a square with the mean colour, squashed.

    Images these steps cannot take are refused first (``check_geometry``): ValueErrors naming the image
    (``name``, else the name ``load_image`` gave it) and its size.
    """
    views = preprocess_views(img, cfg, multi_image=multi_image, name=name, max_pixels=max_pixels)
    return torch.from_numpy(np.stack([to_array(v, cfg) for v in views]))


def check_geometry(
    width: int,
    height: int,
    cfg: ImageConfig,
    *,
    multi_image: bool = False,
    max_pixels: int = MAX_PIXELS,
    what: str = "the image",
) -> None:
    """Refuse (ValueError) an image that ``preprocess`` would blow up or make vanish; memory stays bounded.

    transformers builds these intermediates as they come; here an image is refused when

    - its pad-to-square canvas (llava-1.5 ``pad``, OneVision multi-image) would exceed ``max_pixels``:
      longest side over ``sqrt(max_pixels)`` (8000 px for 64M);
    - padded to a square and brought to the tile, its shorter side would be under half a pixel (an aspect ratio over
      2 * tile : 1, e.g. 1 x 1000 at tile 336): the image would vanish into the padding;
    - its shortest-edge resize (CLIP, no pad) would exceed ``max_pixels``: an aspect ratio over
      ``max_pixels / tile**2`` : 1 (567 : 1 for tile 336 and 64M).

    AnyRes never needs more than the chosen pinpoint (or a tile), so every size is accepted there.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"{what}: zero-size image ({width}x{height} w x h)")
    if cfg.pinpoints is not None and not multi_image:
        return
    if cfg.pad_square or multi_image:
        if width != height:
            _check_square(width, height, max_pixels, what)
            long, short = max(width, height), min(width, height)
            if 2 * short * cfg.tile < long:  # short * tile / long < 0.5 px
                raise ValueError(
                    f"{what}: {width}x{height} (w x h) is too elongated for this model: padded to a square and "
                    f"resized to {cfg.tile}x{cfg.tile}, its {'height' if height < width else 'width'} would be "
                    f"{short * cfg.tile / long:.2g} px, so the image would vanish; crop it to an aspect ratio of "
                    f"at most {2 * cfg.tile}:1"
                )
    elif cfg.resize_shortest:
        _check_shortest_edge(width, height, cfg.tile, max_pixels, what)


def _name_of(img: Image.Image) -> str:
    """How errors name ``img``: the name ``load_image`` recorded (the messages give its size anyway)."""
    return img.info.get(NAME_KEY) or "the image"


def _check_square(width: int, height: int, max_pixels: int, what: str) -> None:
    side = max(width, height)
    if side * side > max_pixels:
        raise ValueError(
            f"{what}: {width}x{height} (w x h) is padded to a {side}x{side} square for this model, {side * side} "
            f"pixels, over the limit of {max_pixels}; crop it or downscale it to a longest side of at most "
            f"{math.isqrt(max_pixels)} px"
        )


def _check_shortest_edge(width: int, height: int, size: int, max_pixels: int, what: str) -> None:
    h, w = shortest_edge_size(height, width, size)
    if h * w > max_pixels:
        raise ValueError(
            f"{what}: {width}x{height} (w x h) is too elongated for this model: resizing its shorter side to "
            f"{size} px makes a {w}x{h} image, {w * h} pixels, over the limit of {max_pixels}; crop it to an "
            f"aspect ratio of at most {max_pixels // (size * size)}:1"
        )


# -- video -------------------------------------------------------------------------------------------------------


def video_frames(frames: list[Any], cfg: ImageConfig) -> torch.Tensor:
    """(F, 3, tile, tile) for a list of frames (paths, bytes or PIL): each squashed to tile x tile, normalised.

    This is OneVision's video preprocessing (no crop, no pad, no AnyRes); frame sampling happens before
    (``sample_frames``).
    """
    if not frames:
        raise ValueError("a video needs at least one frame")
    out = []
    for i, f in enumerate(frames):
        img = load_image(f, name=f"frame {i}")
        if img.size != (cfg.tile, cfg.tile):
            img = img.resize((cfg.tile, cfg.tile), cfg.filter)
        out.append(to_array(img, cfg))
    return torch.from_numpy(np.stack(out))


def sample_frames(n_total: int, k: int) -> list[int]:
    """``k`` frame indices spread uniformly over ``n_total`` frames, first and last included (all if fewer).

    As LLaVA-NeXT's ``np.linspace(0, n - 1, k, dtype=int)`` (truncation, not rounding):

    >>> sample_frames(10, 4)   # linspace 0, 3, 6, 9
    [0, 3, 6, 9]
    >>> sample_frames(100, 3)  # 0, 49.5, 99 -> 49
    [0, 49, 99]
    """
    if n_total <= 0:
        raise ValueError(f"the video has no frames (n_total={n_total})")
    if k <= 0:
        raise ValueError(f"the number of frames to sample must be positive, got {k}")
    if n_total <= k:
        return list(range(n_total))
    return np.linspace(0, n_total - 1, k, dtype=int).tolist()
