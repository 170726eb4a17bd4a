"""The views the stage-0 tower trains on, each with its text and patch labels (`patch_labels`).

Image views are what the LLaVA model will later see: the whole scene padded to a square tile (its caption as the
text); each AnyRes tile of the scene, captioned with what lies in it ("a small red star and a large blue circle"),
so that the tower's patch features describe local content; for scenes with a word or number, a tile-sized crop
around the text at the scale AnyRes would give it ("the word 'apple'"), so the tower learns to read at the
resolution of an AnyRes tile; and, for reading, extra scenes that all carry text (`reading_pairs`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from PIL import Image

from ...data.synth import EVAL_SEED_BASE, Scene, caption, render_scene
from ...data.synth_questions import listing
from ...data.synth_scene import generate_scene, scene_seed
from ...processing.anyres import select_best_resolution
from ...processing.image import (
    CLIP_MEAN,
    CLIP_STD,
    ImageConfig,
    anyres_views,
    expand_to_square,
    fit_size,
    normalize,
    rescale,
)
from .patch_labels import IGNORE, patch_labels


def _tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(normalize(rescale(img), CLIP_MEAN, CLIP_STD))  # (3, S, S)


@dataclass
class View:
    """One training image of the tower and its text. A scene point (x, y) lies at (x * sx + ox, y * sy + oy) in
    ``pixels`` (``scale`` = (sx, sy), ``offset`` = (ox, oy)), which is what `patch_labels` needs."""

    pixels: torch.Tensor  # (3, S, S) normalised
    text: str
    scale: tuple[float, float]
    offset: tuple[float, float]


def full_view(img: Image.Image, scene: Scene, tile: int) -> View:
    """The whole image, padded to a square with the mean colour (LLaVA-1.5 ``pad``) and resized to the tile."""
    square = expand_to_square(img, ImageConfig(tile=tile).pad_colour)
    side = max(scene.width, scene.height)
    s = tile / side
    offset = ((side - scene.width) // 2 * s, (side - scene.height) // 2 * s)
    return View(_tensor(square.resize((tile, tile), Image.Resampling.BICUBIC)), caption(scene), (s, s), offset)


def text_view(img: Image.Image, scene: Scene, tile: int, pinpoints: list[list[int]], rng: random.Random) -> View:
    """A tile-sized crop around the scene's text, the image first scaled as AnyRes scales it to its pinpoint.

    Example: a 256x256 scene with pinpoints up to 192x192 is scaled by 0.75; a word whose ink box is
    (40, 100, 90, 112) lands at (30, 75, 67, 84) and the 96x96 crop is placed at random so that it contains it."""
    assert scene.text is not None
    h, w = scene.height, scene.width
    ph, pw = select_best_resolution(h, w, tuple((int(a), int(b)) for a, b in pinpoints))
    s = min(ph / h, pw / w)
    big = img.resize((max(tile, round(w * s)), max(tile, round(h * s))), Image.Resampling.BICUBIC)
    x0, y0, x1, y1 = (round(v * s) for v in scene.text.box)
    lo_x, hi_x = max(0, x1 - tile), min(x0, big.width - tile)
    lo_y, hi_y = max(0, y1 - tile), min(y0, big.height - tile)
    cx = rng.randint(lo_x, hi_x) if lo_x <= hi_x else max(0, min(x0, big.width - tile))
    cy = rng.randint(lo_y, hi_y) if lo_y <= hi_y else max(0, min(y0, big.height - tile))
    scale = (big.width / w, big.height / h)
    return View(_tensor(big.crop((cx, cy, cx + tile, cy + tile))), text_caption(scene), scale, (-cx, -cy))


EMPTY_TILE = "an empty background"


def tile_views(img: Image.Image, scene: Scene, tile: int, pinpoints: list[list[int]]) -> list[View]:
    """The AnyRes tiles of the scene, each with a caption of the shapes whose centre lies in it (and of the text
    when its whole box does); a tile with nothing gets `EMPTY_TILE`.

    Example: a 200x100 (w x h) scene on pinpoints with 160x80 (w x h) is scaled by 0.8 to 160x80 and cut into
    two 80 px tiles; a circle centred at x = 120 lands at x = 96, in the right tile."""
    pins = tuple((int(a), int(b)) for a, b in pinpoints)
    ph, pw = select_best_resolution(scene.height, scene.width, pins)
    nh, nw = fit_size(scene.height, scene.width, ph, pw)  # where anyres_views pastes the scene on its canvas
    sx, sy = nw / scene.width, nh / scene.height
    ox, oy = (pw - nw) // 2, (ph - nh) // 2
    crops = anyres_views(img, tile, pins)[1:]  # the model's tiles, row-major (the base view dropped)
    corners = [(x, y) for y in range(0, ph, tile) for x in range(0, pw, tile)]
    views = []
    for crop, (x, y) in zip(crops, corners, strict=True):
        inside = [s for s in scene.shapes if x <= s.cx * sx + ox < x + tile and y <= s.cy * sy + oy < y + tile]
        text = scene.text
        if text is not None:
            x0, y0, x1, y1 = text.box
            box = (x0 * sx + ox, y0 * sy + oy, x1 * sx + ox, y1 * sy + oy)
            if not (x <= box[0] and box[2] <= x + tile and y <= box[1] and box[3] <= y + tile):
                text = None
        views.append(View(_tensor(crop), listing(inside, text) or EMPTY_TILE, (sx, sy), (ox - x, oy - y)))
    return views


def text_caption(scene: Scene) -> str:
    assert scene.text is not None
    return f"the {'number' if scene.text.is_number else 'word'} '{scene.text.value}'"


def _labelled(
    per_scene: list[tuple[Scene, list[View]]], tile: int, patch: int
) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """(N, 3, S, S) views, their texts and their patch labels (N, 6, G*G) (`patch_labels`, G = tile // patch) of
    each scene's views, its full view first. Only the full view shows where in the scene a shape is: the other
    views' side labels (rows 4-5) are ``IGNORE``."""
    views: list[View] = []
    labels = []
    for scene, mine in per_scene:
        views += mine
        for k, v in enumerate(mine):
            labels.append(patch_labels(scene, v.scale, v.offset, tile, patch))
            if k:
                labels[-1][4:] = IGNORE
    if not views:
        return torch.zeros(0, 3, tile, tile), [], torch.zeros(0, 6, (tile // patch) ** 2, dtype=torch.long)
    return torch.stack([v.pixels for v in views]), [v.text for v in views], torch.stack(labels)


def build_pairs(
    scenes: list[Scene], tile: int, patch: int, pinpoints: list[list[int]], seed: int = 0, tiles: bool = True
) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """Views, texts and patch labels as `_labelled` gives them: one full view per scene, its AnyRes tiles
    (``tiles``), one text crop per scene with text."""
    rng = random.Random(seed)
    per_scene = []
    for scene in scenes:
        img = render_scene(scene)
        mine = [full_view(img, scene, tile)] + (tile_views(img, scene, tile, pinpoints) if tiles else [])
        if scene.text is not None:
            mine.append(text_view(img, scene, tile, pinpoints, rng))
        per_scene.append((scene, mine))
    return _labelled(per_scene, tile, patch)


def check_reading_args(n: int, crops: int, seed: int) -> None:
    """`reading_pairs`' arguments as the recipe names them (``clip.text_scenes``, ``text_crops``, ``text_seed``)."""
    if n < 0 or crops < 0:
        raise ValueError(f"clip.text_scenes and clip.text_crops must be >= 0, got {n} and {crops}")
    if not 0 <= seed < EVAL_SEED_BASE:
        raise ValueError(f"clip.text_seed must be a training seed (0 <= seed < {EVAL_SEED_BASE}), got {seed}")


def reading_pairs(
    n: int, seed: int, crops: int, tile: int, patch: int, pinpoints: list[list[int]], min_side: int, max_side: int
) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """Extra views for reading: ``n`` scenes that all carry a word or number (`generate_scene` with ``text_prob``
    1, seeds ``scene_seed(seed, i)``), each as its full view and ``crops`` text crops (`text_view`, placed at random
    around the text), with their texts and patch labels (`_labelled`). The recipe's own scenes put text on 60% of
    scenes and show each once per view, too few for the tower to learn the glyphs (the per-patch text probe held
    out: docs/default-model.md, "Reading").

    Example: n = 2, crops = 2 gives 6 views: scene 0's full view, its two crops, then scene 1's three."""
    check_reading_args(n, crops, seed)
    rng = random.Random(seed)
    per_scene = []
    for i in range(n):
        scene = generate_scene(scene_seed(seed, i), text_prob=1.0, min_side=min_side, max_side=max_side)
        if scene.text is None:  # dropped by `generate_scene` when no shape fits beside it
            continue
        img = render_scene(scene)
        crops_ = [text_view(img, scene, tile, pinpoints, rng) for _ in range(crops)]
        per_scene.append((scene, [full_view(img, scene, tile), *crops_]))
    return _labelled(per_scene, tile, patch)
