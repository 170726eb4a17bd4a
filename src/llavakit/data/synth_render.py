"""Draw a synthetic `Scene` with Pillow only (no anti-aliasing on shapes, so colours stay exact)."""

from __future__ import annotations

import math

from PIL import Image, ImageDraw

from .synth_scene import COLORS, EXTENT, KINDS, TEXT_COLOR, Scene, Shape, font

Point = tuple[float, float]


def _regular(cx: float, cy: float, r: float, n: int, start_deg: float) -> list[Point]:
    """Vertices of a regular n-gon, circumradius ``r``, first vertex at ``start_deg`` (0 = right, 90 = up)."""
    step = 2 * math.pi / n
    a0 = math.radians(start_deg)
    return [(cx + r * math.cos(a0 + i * step), cy - r * math.sin(a0 + i * step)) for i in range(n)]


def _star(cx: float, cy: float, r: float) -> list[Point]:
    outer = _regular(cx, cy, r, 5, 90)
    inner = _regular(cx, cy, 0.45 * r, 5, 90 + 36)
    return [p for pair in zip(outer, inner) for p in pair]


def draw_shape(draw: ImageDraw.ImageDraw, s: Shape) -> None:
    """Fill ``s`` in its named colour; every kind covers its own centre pixel."""
    fill = COLORS[s.color]
    cx, cy, r = s.cx, s.cy, s.radius
    if s.kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif s.kind == "square":
        half = EXTENT * r / math.sqrt(2)  # corners at EXTENT * r, so squares do not look small
        draw.rectangle((cx - half, cy - half, cx + half, cy + half), fill=fill)
    elif s.kind == "triangle":
        # Equilateral, pointing up, centroid 0.1 r below (cx, cy): it fits in the disc of radius r.
        draw.polygon(_regular(cx, cy + 0.1 * r, 0.95 * r, 3, 90), fill=fill)
    elif s.kind == "star":
        draw.polygon(_star(cx, cy, r), fill=fill)
    elif s.kind == "diamond":
        draw.polygon([(cx, cy - r), (cx + 0.75 * r, cy), (cx, cy + r), (cx - 0.75 * r, cy)], fill=fill)
    elif s.kind == "cross":
        arm = 0.3 * r
        draw.rectangle((cx - r, cy - arm, cx + r, cy + arm), fill=fill)
        draw.rectangle((cx - arm, cy - r, cx + arm, cy + r), fill=fill)
    elif s.kind == "hexagon":
        draw.polygon(_regular(cx, cy, r, 6, 0), fill=fill)
    else:
        raise ValueError(f"unknown shape kind {s.kind!r}; expected one of {', '.join(KINDS)}")


def render_scene(scene: Scene) -> Image.Image:
    """RGB image of ``scene``; deterministic pixel for pixel."""
    img = Image.new("RGB", (scene.width, scene.height), scene.background)
    draw = ImageDraw.Draw(img)
    for s in scene.shapes:
        draw_shape(draw, s)
    if scene.text is not None:
        t = scene.text
        f = font(t.font_px)
        bx0, by0, _, _ = f.getbbox(t.value)
        draw.text((t.box[0] - bx0, t.box[1] - by0), t.value, font=f, fill=TEXT_COLOR)
    return img
