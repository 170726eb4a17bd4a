"""Scene description and seeded sampling for the synthetic data generator.

A scene is a light background with 1-8 non-overlapping filled shapes and optionally one word or number.
Everything is drawn from one ``random.Random`` seeded per scene, so a scene seed fully determines the scene.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

from PIL import ImageFont

# Named shape colours (RGB): far from the light backgrounds below and from each other (no white: invisible).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 150, 50),
    "blue": (30, 70, 220),
    "yellow": (235, 195, 0),
    "purple": (130, 40, 170),
    "orange": (245, 125, 0),
    "black": (20, 20, 20),
    "gray": (125, 125, 125),
    "pink": (240, 100, 175),
    "brown": (125, 75, 30),
}
BACKGROUNDS: tuple[tuple[int, int, int], ...] = (
    (250, 250, 250),
    (245, 240, 228),
    (232, 238, 248),
    (236, 246, 236),
)
TEXT_COLOR = (15, 15, 15)
KINDS: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond", "cross", "hexagon")
WORDS: tuple[str, ...] = (
    "apple", "bread", "chair", "cloud", "dance", "eagle", "flame", "grape", "honey", "island",
    "jelly", "kite", "lemon", "mango", "night", "ocean", "piano", "queen", "robot", "sugar",
    "table", "violin", "water", "yacht", "zebra", "tiger", "house", "river", "stone", "train",
    "plant", "music", "light", "horse", "smile", "tower", "dream", "ghost", "magic", "pizza",
    "rocket", "forest", "garden", "candle", "planet", "bottle", "window", "pencil", "turtle", "moon",
)  # fmt: skip
# Font sizes (pixels) sampled per bucket; `font_bucket` maps any size back to its bucket. Tiny text (10-13 px)
# only goes on images whose long side is >= 800 px: readable at full resolution, about 4 px after the 336 px
# base view of LLaVA, and 7-13 px in AnyRes tiles (the AnyRes vs single-resolution ablation).
FONT_BUCKETS: dict[str, tuple[int, int]] = {
    "tiny": (10, 13),
    "small": (16, 22),
    "medium": (28, 38),
    "large": (44, 60),
}
TINY_MIN_LONG_SIDE = 800
MIN_SIDE, MAX_SIDE = 336, 1008  # default bounds of the long side of a scene, pixels
LOWEST_SIDE, HIGHEST_SIDE = 112, 4096  # what the bounds may be: 4096 px scenes are 48 MiB of pixels each


def check_sides(min_side: int, max_side: int, default: str = f"{MIN_SIDE} {MAX_SIDE}") -> None:
    """Refuse long-side bounds outside [LOWEST_SIDE, HIGHEST_SIDE] or the wrong way round, naming --sides and the
    command's ``default``."""
    if not LOWEST_SIDE <= min_side <= max_side <= HIGHEST_SIDE:
        raise ValueError(
            f"scene sizes need {LOWEST_SIDE} <= min_side <= max_side <= {HIGHEST_SIDE} (long side, pixels), got "
            f"{min_side}, {max_side}; pass --sides MIN MAX within those bounds (default {default})"
        )


MAX_SHAPES = 8
EXTENT = 1.1  # every kind's ink lies within EXTENT * radius of its centre (a square's corners reach 1.1)


@dataclass(frozen=True)
class Shape:
    """A filled shape centred at (cx, cy); ``radius`` is its size in pixels (circle radius, star tip)."""

    kind: str
    color: str
    size: str  # "small" | "large"
    cx: int
    cy: int
    radius: int


@dataclass(frozen=True)
class Text:
    """One word or number; ``box`` is the ink bounding box (x0, y0, x1, y1) in pixels, exclusive end."""

    value: str
    font_px: int
    bucket: str  # "tiny" | "small" | "medium" | "large"
    box: tuple[int, int, int, int]

    @property
    def is_number(self) -> bool:
        return self.value.isdigit()


@dataclass(frozen=True)
class Scene:
    """Ground truth of one synthetic image. ``seed`` records where it came from and is ignored by ``==``."""

    width: int
    height: int
    background: tuple[int, int, int]
    shapes: tuple[Shape, ...]
    text: Text | None = None
    seed: int = field(default=0, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scene:
        """Inverse of `to_dict` (also after a JSON round trip, which turns tuples into lists)."""
        t = d.get("text")
        text = Text(t["value"], t["font_px"], t["bucket"], tuple(t["box"])) if t else None
        shapes = tuple(Shape(**s) for s in d["shapes"])
        return cls(d["width"], d["height"], tuple(d["background"]), shapes, text, d.get("seed", 0))


def scene_seed(seed: int, index: int) -> int:
    """Stable 63-bit seed for scene ``index`` of a dataset seeded with ``seed`` (sha256, not ``hash()``)."""
    digest = hashlib.sha256(f"llavakit-synth/{seed}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def sub_rng(seed: int, purpose: str) -> random.Random:
    """An independent stream for ``purpose`` (e.g. questions), so adding questions never changes the scene."""
    digest = hashlib.sha256(f"{seed}/{purpose}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


@lru_cache(maxsize=64)
def font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's bundled scalable font (Pillow >= 10.1) at ``size`` pixels."""
    f = ImageFont.load_default(size=size)
    if not isinstance(f, ImageFont.FreeTypeFont):
        raise RuntimeError("Pillow was built without FreeType; the synthetic text needs a scalable font")
    return f


def font_bucket(font_px: int) -> str:
    """Bucket name for a font size: <=13 tiny, <=24 small, <=40 medium, else large."""
    return "tiny" if font_px <= 13 else "small" if font_px <= 24 else "medium" if font_px <= 40 else "large"


def _canvas(rng: random.Random, min_side: int, max_side: int) -> tuple[int, int]:
    """Width and height: aspect ratio log-uniform in [1/3, 3] (each end drawn exactly 5% of the time), long
    side uniform in [min_side, max_side] but at least 2/3 * min_side * ratio when max_side allows, so that
    a 3:1 scene is not a thin strip. The short side is rounded up, so the ratio never leaves [1/3, 3]."""
    r = rng.random()
    ratio = 3.0 if r < 0.05 else 1 / 3 if r < 0.1 else math.exp(rng.uniform(-math.log(3), math.log(3)))
    stretch = max(ratio, 1 / ratio)
    low = min(max_side, max(min_side, math.ceil(2 / 3 * min_side * stretch)))
    long_side = rng.randint(low, max_side)
    short_side = math.ceil(long_side / stretch - 1e-9)
    return (long_side, short_side) if ratio >= 1 else (short_side, long_side)


def _place_text(rng: random.Random, w: int, h: int, bucket: str) -> Text | None:
    lo, hi = FONT_BUCKETS[bucket]
    size = rng.randint(lo, hi)
    for _ in range(20):
        if rng.random() < 0.7:
            value = rng.choice(WORDS)
        else:
            digits = rng.randint(1, 3)
            value = str(rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1))
        x0, y0, x1, y1 = font(size).getbbox(value)
        tw, th = x1 - x0, y1 - y0
        margin = max(6, size // 2)
        if tw + 2 * margin <= 0.8 * w and th + 2 * margin <= 0.5 * h:
            x = rng.randint(margin, w - margin - tw)
            y = rng.randint(margin, h - margin - th)
            return Text(value, size, font_bucket(size), (x, y, x + tw, y + th))
        size = max(lo, size - 4)
    return None


def _clear(cx: int, cy: int, r: int, placed: list[Shape], text: Text | None) -> bool:
    """True if a shape of radius ``r`` at (cx, cy) keeps a visible gap to every placed shape and the text."""
    for s in placed:
        gap = 6 + 0.05 * (r + s.radius)
        if math.hypot(cx - s.cx, cy - s.cy) < EXTENT * (r + s.radius) + gap:
            return False
    if text is not None:
        x0, y0, x1, y1 = text.box
        dx = max(x0 - cx, 0, cx - x1)
        dy = max(y0 - cy, 0, cy - y1)
        if math.hypot(dx, dy) < EXTENT * r + 6 + 0.05 * r:
            return False
    return True


def _shape_specs(rng: random.Random, max_shapes: int = MAX_SHAPES) -> list[tuple[str, str, str]]:
    """(kind, colour, size) for 1-``max_shapes`` shapes; a third of scenes with 2 or more repeat one kind 2-5
    times (for counting)."""
    n = rng.randint(1, max_shapes)
    kinds = [rng.choice(KINDS) for _ in range(n)]
    if n >= 2 and rng.random() < 0.35:
        repeated = rng.choice(KINDS)
        for i in rng.sample(range(n), min(n, rng.randint(2, 5))):
            kinds[i] = repeated
    return [(k, rng.choice(list(COLORS)), rng.choice(("small", "large"))) for k in kinds]


def _place_shapes(rng: random.Random, w: int, h: int, text: Text | None, max_shapes: int = MAX_SHAPES) -> list[Shape]:
    """Rejection sampling, 200 tries per shape; sizes scale with sqrt(area), so they survive a 336 px view."""
    unit = math.sqrt(w * h)
    cap = 0.2 * min(w, h)
    placed: list[Shape] = []
    for kind, color, size in _shape_specs(rng, max_shapes):
        frac = rng.uniform(0.085, 0.1) if size == "large" else rng.uniform(0.04, 0.05)
        r = max(8, round(min(frac * unit, cap if size == "large" else cap / 2)))
        margin = math.ceil(EXTENT * r) + 2
        for _ in range(200):
            cx, cy = rng.randint(margin, w - margin), rng.randint(margin, h - margin)
            if _clear(cx, cy, r, placed, text):
                placed.append(Shape(kind, color, size, cx, cy, r))
                break
    return placed


def generate_scene(
    seed: int,
    text_prob: float = 0.6,
    *,
    min_side: int = MIN_SIDE,
    max_side: int = MAX_SIDE,
    max_shapes: int = MAX_SHAPES,
) -> Scene:
    """Sample a scene from ``seed``; ``min_side``/``max_side`` bound its long side in pixels.

    Shapes that cannot be placed in 200 tries are dropped; if none fits beside the text (a crowded small
    canvas), the text is dropped instead, so every scene has at least one shape."""
    check_sides(min_side, max_side)
    rng = random.Random(seed)
    bucket = rng.choice(list(FONT_BUCKETS)) if rng.random() < text_prob else None
    if bucket == "tiny":
        min_side = max(min_side, min(TINY_MIN_LONG_SIDE, max_side))
    w, h = _canvas(rng, min_side, max_side)
    background = rng.choice(BACKGROUNDS)
    text = _place_text(rng, w, h, bucket) if bucket else None
    shapes = _place_shapes(rng, w, h, text, max_shapes)
    if not shapes:
        text, shapes = None, _place_shapes(rng, w, h, None, max_shapes)
    return Scene(w, h, background, tuple(shapes), text, seed)
