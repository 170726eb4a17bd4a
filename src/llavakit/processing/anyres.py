"""AnyRes geometry: grid choice, unpadding, downsampling and THE image-token count.

Every size here is (height, width), as in HF (the original LLaVA code passes (width, height): the key maps and the
converter translate at the border, nothing inside llavakit uses that order).

``num_image_tokens`` is the single source of truth for how many ``<image>`` tokens one image expands to. The
processor, the model's consistency check, the trainer's collate and the server's batcher all call it.

Worked example (LLaVA-1.6, CLIP-L/336, patch 14, v1.6 pinpoints, a 768 x 1024 (h x w) photo):

1. best resolution: every pinpoint scales the image to fit inside it; 672x672 scales by 0.65625 to 504x672
   (effective area 338688, the largest), so the grid is 672x672 = 2 x 2 tiles of 336.
2. the tile features form a (2*24) x (2*24) = 48 x 48 map; the image filled 504 of 672 rows
   (48 * 768/1024 = 36 feature rows), so unpad removes (48 - 36) // 2 = 6 rows at the top and bottom: 36 x 48.
3. one newline per row: 36 * (48 + 1) = 1764, plus the 24 * 24 = 576 base-view tokens = 2340 tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import LlavaConfig


@dataclass(frozen=True)
class ImageGeometry:
    """What the token count depends on, gathered from a model config or from processor files.

    family:      "llava" | "llava_next" | "llava_onevision"
    tile:        vision input side in pixels (336 CLIP-L, 384 SigLIP)
    patch:       ViT patch side (14)
    extra:       tokens per tile beyond the patch grid: +1 for CLIP's CLS kept ("full"), -1 for SigLIP + "default"
    pinpoints:   candidate (height, width) resolutions for AnyRes (None for llava-1.5)
    max_tiles:   OneVision "anyres_max_N" -> N (None: never downsample)
    """

    family: str
    tile: int
    patch: int
    extra: int = 0
    pinpoints: tuple[tuple[int, int], ...] | None = None
    max_tiles: int | None = None

    @property
    def grid(self) -> int:
        """Feature map side of one tile: 336 // 14 = 24."""
        return self.tile // self.patch

    @property
    def tokens_per_tile(self) -> int:
        return self.grid * self.grid + self.extra

    @classmethod
    def from_config(cls, config: LlavaConfig) -> ImageGeometry:
        v = config.vision
        # tokens kept per tile: the CLS token (CLIP) is dropped by strategy "default" (which drops the first
        # token even for SigLIP, as transformers does)
        extra = (1 if v.has_cls else 0) - (1 if config.vision_feature_select_strategy == "default" else 0)
        pins = config.image_grid_pinpoints if config.model_type != "llava" else None
        return cls(
            family=config.model_type,
            tile=v.image_size,
            patch=v.patch_size,
            extra=extra,
            pinpoints=tuple((int(h), int(w)) for h, w in pins) if pins else None,
            max_tiles=config.max_tiles,
        )


def select_best_resolution(height: int, width: int, pinpoints: tuple[tuple[int, int], ...]) -> tuple[int, int]:
    """The pinpoint that keeps the most of the image's resolution, ties broken by the least wasted area.

    >>> select_best_resolution(768, 1024, ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)))
    (672, 672)
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width} (h x w)")
    best, best_eff, best_waste = None, -1, math.inf
    for ph, pw in pinpoints:
        scale = min(pw / width, ph / height)
        sh, sw = int(height * scale), int(width * scale)
        effective = min(sh * sw, height * width)
        waste = ph * pw - effective
        if effective > best_eff or (effective == best_eff and waste < best_waste):
            best, best_eff, best_waste = (ph, pw), effective, waste
    assert best is not None, "pinpoints must not be empty"
    return best


def grid_shape(height: int, width: int, geom: ImageGeometry) -> tuple[int, int]:
    """(rows, cols) of AnyRes tiles for an image of ``height x width``; (768, 1024) on v1.6 -> (2, 2)."""
    if geom.pinpoints is None:
        return (0, 0)
    ph, pw = select_best_resolution(height, width, geom.pinpoints)
    if ph < geom.tile or pw < geom.tile or ph % geom.tile or pw % geom.tile:  # no whole tiles: transformers'
        raise ValueError(  # processor and model then disagree on the tile count, and ours divided by zero
            f"image_grid_pinpoints entry {[ph, pw]} is not a (height, width) pair of multiples of the vision tile "
            f"size {geom.tile} (vision_config.image_size); fix the checkpoint's image_grid_pinpoints"
        )
    return ph // geom.tile, pw // geom.tile


def num_tiles(height: int, width: int, geom: ImageGeometry, *, multi_image: bool = False) -> int:
    """Vision-tower inputs for one image: the base view plus rows*cols tiles (1 when no AnyRes applies)."""
    if geom.pinpoints is None or multi_image:
        return 1
    rows, cols = grid_shape(height, width, geom)
    return 1 + rows * cols


def unpadded_size(height: int, width: int, feat_h: int, feat_w: int) -> tuple[int, int]:
    """Size of a ``feat_h x feat_w`` feature map after removing the rows/cols that only saw padding.

    The image was resized to fit the grid and centred, so the padding is split evenly; the count of kept rows
    (or columns) follows the original code's rounding: ``int(round(h * feat_w / w, 7))``.

    >>> unpadded_size(768, 1024, 48, 48)   # 36 of 48 rows hold the image -> drop 6 top and 6 bottom
    (36, 48)
    >>> unpadded_size(100, 400, 24, 48)    # 1:4 image on a 1x2 grid: 12 rows of 24 -> drop 6 and 6
    (12, 48)
    """
    if width / height > feat_w / feat_h:
        new_h = int(round(height * (feat_w / width), 7))
        pad = (feat_h - new_h) // 2
        return feat_h - 2 * pad, feat_w
    new_w = int(round(width * (feat_h / height), 7))
    pad = (feat_w - new_w) // 2
    return feat_h, feat_w - 2 * pad


def downsampled_size(feat_h: int, feat_w: int, geom: ImageGeometry) -> tuple[int, int] | None:
    """OneVision ``anyres_max_N``: the bilinear target size when the unpadded map holds more than ~N tiles.

    ratio = sqrt(feat_h * feat_w / (N * grid^2)); above 1.1 the map is resized to
    (int(feat_h // ratio), int(feat_w // ratio)). Returns None when no resize happens.

    >>> g = ImageGeometry("llava_onevision", tile=384, patch=14, pinpoints=((2304, 2304),), max_tiles=9)
    >>> downsampled_size(162, 162, g)   # 6x6 tiles of 27: ratio 2 -> 81 x 81
    (81, 81)
    """
    if geom.max_tiles is None:
        return None
    ratio = math.sqrt(feat_h * feat_w / (geom.max_tiles * geom.grid**2))
    if ratio <= 1.1:
        return None
    return int(feat_h // ratio), int(feat_w // ratio)


def packed_grid_size(height: int, width: int, geom: ImageGeometry) -> tuple[int, int]:
    """(rows, cols) of the tile features after unpad (and OneVision downsampling), before the newline column."""
    rows, cols = grid_shape(height, width, geom)
    fh, fw = unpadded_size(height, width, rows * geom.grid, cols * geom.grid)
    return downsampled_size(fh, fw, geom) or (fh, fw)


def num_image_tokens(height: int, width: int, geom: ImageGeometry, *, multi_image: bool = False) -> int:
    """Number of ``<image>`` tokens an image of ``height x width`` pixels becomes. The single source of truth.

    - llava-1.5: one tile: grid^2 (+1 CLS with strategy "full") -> 576 for CLIP-L/336;
    - llava-next / onevision, one image in the prompt: base tile + rows * (cols + 1) of the packed grid
      (see the module docstring: 768 x 1024 on v1.6 -> 576 + 36 * 49 = 2340);
    - onevision, several images in the prompt: each image is only its base view plus one newline token
      (729 + 1 = 730 for SigLIP/384).
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width} (h x w)")
    base = geom.tokens_per_tile
    if geom.pinpoints is None:
        return base
    if multi_image and geom.family == "llava_onevision":
        return base + 1
    rows, cols = packed_grid_size(height, width, geom)
    return base + rows * (cols + 1)


def num_video_tokens(num_frames: int, geom: ImageGeometry) -> int:
    """OneVision video: each frame's grid x grid map pooled to ceil(grid/2)^2 (27 -> 14: 196), plus one newline."""
    pooled = math.ceil(geom.grid / 2)
    return num_frames * pooled * pooled + 1
