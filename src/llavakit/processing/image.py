"""Image loading and the reference preprocessing (CLIP / SigLIP normalisation, LLaVA ``pad``, AnyRes tiling).

Every step follows transformers' PIL image processors so that pixel values match theirs: resampling in PIL
(bicubic), uint8 until rescaling, then ``x * (1/255)`` in float64 cast to float32, then ``(x - mean) / std``.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .anyres import select_best_resolution

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_PIXELS = 64_000_000  # larger images are refused (decompression bombs)

ImageSource = str | Path | bytes | Image.Image


def load_image(src: ImageSource, *, max_pixels: int = MAX_PIXELS, name: str | None = None) -> Image.Image:
    """Open a path, bytes or PIL image as RGB with EXIF orientation applied; clear errors for bad input.

    Transparency is composited onto white (as the reference processors do); L, P, CMYK, I;16 ... become RGB.
    """
    what = name or (str(src) if isinstance(src, (str, Path)) else type(src).__name__)
    if isinstance(src, Image.Image):
        img = src
    else:
        if isinstance(src, (str, Path)):
            path = Path(src)
            if not path.is_file():
                raise FileNotFoundError(f"image file not found: {path}")
            data = path.read_bytes()
        elif isinstance(src, (bytes, bytearray, memoryview)):
            data = bytes(src)
        else:
            raise TypeError(f"image must be a path, bytes or PIL.Image, got {type(src).__name__}")
        if not data:
            raise ValueError(f"image {what}: empty file / no bytes")
        try:
            img = Image.open(io.BytesIO(data))
            _check_size(img, what, max_pixels)
            img.load()
        except Image.DecompressionBombError as e:
            raise ValueError(f"image {what}: too many pixels ({e}); downscale it first") from e
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            hint = "is it a complete PNG/JPEG/WebP/GIF file?"
            raise ValueError(f"image {what}: cannot decode image ({e}); {hint}") from e
    _check_size(img, what, max_pixels)
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - a broken EXIF block should not make the image unusable
        pass
    return to_rgb(img)


def _check_size(img: Image.Image, what: str, max_pixels: int) -> None:
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ValueError(f"image {what}: zero-size image ({w}x{h})")
    if w * h > max_pixels:
        raise ValueError(
            f"image {what}: {w}x{h} = {w * h} pixels is over the limit of {max_pixels}; downscale it first"
        )


def to_rgb(img: Image.Image) -> Image.Image:
    if "A" in img.getbands() or img.info.get("transparency") is not None:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return img.convert("RGB") if img.mode != "RGB" else img


@dataclass(frozen=True)
class ImageConfig:
    """The preprocessing of one checkpoint (read from / written to ``preprocessor_config.json``)."""

    tile: int = 336  # side of one vision-tower input
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    resize_shortest: bool = True  # CLIP: shortest edge -> tile then centre crop; SigLIP / OneVision: squash
    center_crop: bool = True
    pad_square: bool = False  # LLaVA-1.5 `pad`: expand to a square with the mean colour first
    pinpoints: tuple[tuple[int, int], ...] | None = None
    rescale: float = 1 / 255

    @property
    def pad_colour(self) -> tuple[int, ...]:
        return tuple(int(m * 255) for m in self.mean)


def resize_shortest_edge(img: Image.Image, size: int) -> Image.Image:
    """Shortest side -> ``size``, the other ``int(size * long / short)`` (the reference rounding)."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    new = (size, new_long) if w <= h else (new_long, size)
    return img.resize(new, Image.Resampling.BICUBIC)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """Crop the centre ``size x size`` (zero-padding a side that is shorter, as the reference does)."""
    w, h = img.size
    top, left = (h - size) // 2, (w - size) // 2
    if top >= 0 and left >= 0:
        return img.crop((left, top, left + size, top + size))
    canvas = Image.new("RGB", (max(w, size), max(h, size)))
    canvas.paste(img, ((max(w, size) - w) // 2, (max(h, size) - h) // 2))
    return center_crop(canvas, size)


def expand_to_square(img: Image.Image, colour: tuple[int, ...]) -> Image.Image:
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    canvas = Image.new("RGB", (side, side), colour)
    canvas.paste(img, ((side - w) // 2, (side - h) // 2))
    return canvas


def normalize(img: Image.Image, cfg: ImageConfig) -> np.ndarray:
    """uint8 HWC -> float32 CHW: ``(x * rescale - mean) / std``."""
    x = (np.asarray(img, dtype=np.uint8).astype(np.float64) * cfg.rescale).astype(np.float32)
    x = (x - np.asarray(cfg.mean, dtype=np.float32)) / np.asarray(cfg.std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def to_tile(img: Image.Image, cfg: ImageConfig) -> np.ndarray:
    """One vision input (3, tile, tile) from an image: resize (shortest edge or squash), centre crop, normalise."""
    if cfg.resize_shortest:
        img = resize_shortest_edge(img, cfg.tile)
    elif img.size != (cfg.tile, cfg.tile):
        img = img.resize((cfg.tile, cfg.tile), Image.Resampling.BICUBIC)
    if cfg.center_crop:
        img = center_crop(img, cfg.tile)
    return normalize(img, cfg)


def fit_size(height: int, width: int, target_h: int, target_w: int) -> tuple[int, int]:
    """(h, w) of an image scaled to fit inside the target keeping its aspect (the side that binds is exact).

    >>> fit_size(768, 1024, 672, 672)
    (504, 672)
    """
    sw, sh = target_w / width, target_h / height
    if sw < sh:
        return min(math.ceil(height * sw), target_h), target_w
    return target_h, min(math.ceil(width * sh), target_w)


def anyres_tiles(img: Image.Image, cfg: ImageConfig) -> list[Image.Image]:
    """[base view squashed to tile x tile] + the row-major tiles of the image fitted and centred on its pinpoint.

    Example: a 1024x768 (w x h) photo on v1.6 pinpoints picks 672x672, is resized to 672x504, pasted at y = 84
    on a black 672x672 canvas and cut into 2 x 2 tiles of 336: 5 vision inputs.
    """
    assert cfg.pinpoints is not None
    w, h = img.size
    ph, pw = select_best_resolution(h, w, cfg.pinpoints)
    nh, nw = fit_size(h, w, ph, pw)
    canvas = Image.new("RGB", (pw, ph))
    canvas.paste(img.resize((nw, nh), Image.Resampling.BICUBIC), ((pw - nw) // 2, (ph - nh) // 2))
    t = cfg.tile
    tiles = [canvas.crop((x, y, x + t, y + t)) for y in range(0, ph, t) for x in range(0, pw, t)]
    return [img.resize((t, t), Image.Resampling.BICUBIC)] + tiles


def preprocess(img: Image.Image, cfg: ImageConfig, *, multi_image: bool = False) -> torch.Tensor:
    """(tiles, 3, tile, tile) float32 for one RGB image: 1 tile for LLaVA-1.5 (and OneVision multi-image)."""
    if cfg.pinpoints is None:
        if cfg.pad_square:
            img = expand_to_square(img, cfg.pad_colour)
        return torch.from_numpy(to_tile(img, cfg))[None]
    if multi_image:  # OneVision: images of a multi-image prompt are padded to a square and squashed
        return torch.from_numpy(to_tile(expand_to_square(img, cfg.pad_colour), cfg))[None]
    return torch.from_numpy(np.stack([to_tile(t, cfg) for t in anyres_tiles(img, cfg)]))


def video_frames(frames: list[Any], cfg: ImageConfig) -> torch.Tensor:
    """(F, 3, tile, tile) for a list of frames (paths, bytes or PIL): each squashed to the tile and normalised."""
    if not frames:
        raise ValueError("a video needs at least one frame")
    out = []
    for i, f in enumerate(frames):
        img = load_image(f, name=f"frame {i}").resize((cfg.tile, cfg.tile), Image.Resampling.BICUBIC)
        out.append(normalize(img, cfg))
    return torch.from_numpy(np.stack(out))


def sample_frames(n_total: int, k: int) -> list[int]:
    """``k`` frame indices spread uniformly over ``n_total`` frames (all of them when there are fewer)."""
    if n_total <= 0:
        raise ValueError("the video has no frames")
    if n_total <= k:
        return list(range(n_total))
    return np.linspace(0, n_total - 1, k).round().astype(int).tolist()
