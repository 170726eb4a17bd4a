"""Patch labels for stage 0: what each patch of a view shows (shape kind and colour, text), from the scene's truth.

The tile captions say what lies in an 80 px tile; these say it for every 16 px patch, the features LLaVA's
projector reads. Trained on them (``clip.patch_weight``), the tower's patch features name the shape they cover
and the word or digit written there.
"""

from __future__ import annotations

import math

import torch

from ...data.synth_questions import side
from ...data.synth_scene import COLORS, EXTENT, KINDS, WORDS, Scene, font

NO_KIND = len(KINDS)  # the label of a patch that shows no shape
NO_COLOUR = len(COLORS)
DIGITS = "0123456789"
NO_TEXT = len(WORDS) + len(DIGITS)  # text labels: a word's index in WORDS, len(WORDS) + digit, or NO_TEXT
IGNORE = -100  # a label no loss reads (cross_entropy's ignore_index)
SIDES = {"x": ("left", "right"), "y": ("top", "bottom")}
_COLOURS = tuple(COLORS)


def char_spans(value: str, font_px: int, x0: float) -> list[tuple[float, float]]:
    """Horizontal extent (scene pixels, end exclusive) of each character of ``value`` drawn at ``font_px`` with its
    ink box starting at ``x0`` (the scene's ``Text.box[0]``), from the font's advances.

    Example: "47" whose ink starts at x0 = 100, in a font where "4" advances 9 px and the ink of "4" starts 1 px
    after the pen: the pen starts at 99, "4" spans [99, 108) and "7" [108, 117)."""
    f = font(font_px)
    pen = x0 - f.getbbox(value)[0]
    edges = [pen + f.getlength(value[:i]) for i in range(len(value) + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


def patch_labels(
    scene: Scene, scale: tuple[float, float], offset: tuple[float, float], tile: int, patch: int
) -> torch.Tensor:
    """(6, G*G) labels of the G x G patches of a view, G = tile // patch, patches in row-major order: row 0 the kind
    index of the shape each patch shows (``NO_KIND`` if none), row 1 its colour index (``NO_COLOUR``), row 2 the
    text it shows (``NO_TEXT`` if none): the word's index in ``WORDS`` on every patch of a word, and for a number
    ``len(WORDS)`` + the digit under the patch (so the digits of "472" can be read left to right); row 3 is 1 on
    the patch that holds a shape's centre and 0 elsewhere (one patch per shape in the view: counting marks); rows
    4 and 5 give the side of the scene (0 left, 1 right; 0 top, 1 bottom) of the shape a patch shows, as a position
    question answers it (`synth_questions.side`), ``IGNORE`` on the background and for shapes near the middle.

    The view shows the scene scaled by ``scale`` (sx, sy) and shifted by ``offset``: a scene point (x, y) sits at
    (x * sx + ox, y * sy + oy) in the view. A patch shows a shape when the patch centre lies within the shape's ink
    radius (``EXTENT`` * radius, scaled) plus a quarter patch; of several, the one it lies deepest in wins. It shows
    the text when its centre lies within the text's ink box grown by a quarter patch on every side.

    Example: a circle of radius 10 at (50, 30) in a scene shown at scale 0.8 with offset (-40, 0) (the scene's
    second 80 px tile at that scale) sits at (0, 24) with ink radius 8.8 in the view. With 16 px patches the
    patch centres are at 8, 24, 40, ...; patch (row 1, col 0), centre (8, 24), is 8 px from the circle's centre,
    within 8.8 + 4: it shows the circle. Patch (row 1, col 1), centre (24, 24), is 24 px away: background. The
    circle's centre (0, 24) lies in patch (row 1, col 0) (x in [0, 16), y in [16, 32)): row 3 is 1 there.
    """
    g = tile // patch
    sx, sy = scale
    ox, oy = offset
    labels = torch.tensor([NO_KIND, NO_COLOUR, NO_TEXT, 0, IGNORE, IGNORE]).repeat(g * g, 1)  # (G*G, 6)
    depth = torch.full((g * g,), math.inf)  # distance / ink radius of the shape each patch shows so far
    centres = (torch.arange(g) * patch + patch / 2).float()
    py, px = torch.meshgrid(centres, centres, indexing="ij")
    py, px = py.flatten(), px.flatten()  # (G*G,)
    for s in scene.shapes:
        ink = EXTENT * s.radius * sx
        d = torch.hypot(px - (s.cx * sx + ox), py - (s.cy * sy + oy))
        rel = d / ink
        hit = (d < ink + patch / 4) & (rel < depth)
        sides = [IGNORE if (v := side(scene, s, a)) is None else SIDES[a].index(v) for a in "xy"]
        labels[hit, :2] = torch.tensor([KINDS.index(s.kind), _COLOURS.index(s.color)])
        labels[hit, 4:] = torch.tensor(sides)
        depth = torch.where(hit, rel, depth)
        col, row = math.floor((s.cx * sx + ox) / patch), math.floor((s.cy * sy + oy) / patch)
        if 0 <= col < g and 0 <= row < g:
            labels[row * g + col, 3] = 1
    if (t := scene.text) is not None:
        x0, y0, x1, y1 = t.box
        m = patch / 4
        inside = (px >= x0 * sx + ox - m) & (px < x1 * sx + ox + m) & (py >= y0 * sy + oy - m) & (py < y1 * sy + oy + m)
        if t.is_number:
            x = (px - ox) / sx  # patch centres in scene x
            spans = char_spans(t.value, t.font_px, x0)
            for i, ((a, b), digit) in enumerate(zip(spans, t.value, strict=True)):
                a, b = (-math.inf if i == 0 else a), (math.inf if i == len(spans) - 1 else b)  # the margins
                labels[inside & (x >= a) & (x < b), 2] = len(WORDS) + DIGITS.index(digit)
        else:
            labels[inside, 2] = WORDS.index(t.value)
    return labels.T.contiguous()
