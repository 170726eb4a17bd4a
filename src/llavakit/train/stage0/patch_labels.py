"""Patch labels for stage 0: which shape (kind and colour) each patch of a view shows, from the scene's ground truth.

The tile captions say what lies in an 80 px tile; these say it for every 16 px patch, the features LLaVA's
projector reads. Trained on them (``clip.patch_weight``), the tower's patch features name the shape they cover.
"""

from __future__ import annotations

import math

import torch

from ...data.synth_scene import COLORS, EXTENT, KINDS, Scene

NO_KIND = len(KINDS)  # the label of a patch that shows no shape
NO_COLOUR = len(COLORS)
_COLOURS = tuple(COLORS)


def patch_labels(
    scene: Scene, scale: tuple[float, float], offset: tuple[float, float], tile: int, patch: int
) -> torch.Tensor:
    """(2, G*G) labels of the G x G patches of a view, G = tile // patch: row 0 the kind index of the shape each
    patch shows (``NO_KIND`` if none), row 1 its colour index (``NO_COLOUR``), patches in row-major order.

    The view shows the scene scaled by ``scale`` (sx, sy) and shifted by ``offset``: a scene point (x, y) sits at
    (x * sx + ox, y * sy + oy) in the view. A patch shows a shape when the patch centre lies within the shape's ink
    radius (``EXTENT`` * radius, scaled) plus a quarter patch; of several, the one it lies deepest in wins.

    Example: a circle of radius 10 at (50, 30) in a scene shown at scale 0.8 with offset (-40, 0) (the scene's
    second 80 px tile at that scale) sits at (0, 24) with ink radius 8.8 in the view. With 16 px patches the
    patch centres are at 8, 24, 40, ...; patch (row 1, col 0), centre (8, 24), is 8 px from the circle's centre,
    within 8.8 + 4: it shows the circle. Patch (row 1, col 1), centre (24, 24), is 24 px away: background.
    """
    g = tile // patch
    sx, sy = scale
    ox, oy = offset
    labels = torch.tensor([NO_KIND, NO_COLOUR]).repeat(g * g, 1)  # (G*G, 2)
    depth = torch.full((g * g,), math.inf)  # distance / ink radius of the shape each patch shows so far
    centres = (torch.arange(g) * patch + patch / 2).float()
    py, px = torch.meshgrid(centres, centres, indexing="ij")
    py, px = py.flatten(), px.flatten()  # (G*G,)
    for s in scene.shapes:
        ink = EXTENT * s.radius * sx
        d = torch.hypot(px - (s.cx * sx + ox), py - (s.cy * sy + oy))
        rel = d / ink
        hit = (d < ink + patch / 4) & (rel < depth)
        labels[hit] = torch.tensor([KINDS.index(s.kind), _COLOURS.index(s.color)])
        depth = torch.where(hit, rel, depth)
    return labels.T.contiguous()
