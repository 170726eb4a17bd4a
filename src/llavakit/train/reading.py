"""The reading half of the place passes (``llavakit.train.place.place_pass``): where each token of a reading answer
is written in the image, so the query that predicts it can be pulled onto those image tokens.

Why (docs/default-model.md, "Reading gathered at the glyph"): the tower carries the digits of large text (a linear
probe reads 0.5-0.7 of their patches) but the tiny decoder answered every number with one digit, and a pass of
reading questions alone left its loss where it started: the answer's query does not find the text. As the position
and count passes pull the word's attention onto the named shapes, this pulls the attention of the query that
predicts each answer token onto the glyphs that token writes.

Worked example: the number "74" in a 40 px font, ink box (100, 50, 144, 80); the answer's tokens decode as " ",
"7", "4", "</s>". The space writes nothing of "74": its query is pulled onto the whole box; "7" onto the first
glyph's columns, 100 to about 122 (the font's advance), "4" onto the rest; "</s>" is not pulled.
"""

from __future__ import annotations

import re

import torch

from ..data.synth_scene import Scene, Text, font
from .count import scene_pixels, with_nearest

Box = tuple[float, float, float, float]


def read_text(scene: Scene, question: str) -> Text | None:
    """The text a reading question ("What word is written in the image?", "What number ...") asks for, None when
    the question is not one or the scene has no text."""
    if scene.text is None or re.search(r"What (?:word|number) is written", question) is None:
        return None
    return scene.text


def answer_spans(pieces: list[str], value: str) -> list[tuple[int, int] | None]:
    """Per answer token (its decoded text, in order), the characters [start, end) of ``value`` it writes: a token
    that writes none of it before the value is done (the space before a number) spans all of it; tokens after the
    value (end of sequence), or that do not match it, span nothing (None). Worked example: the module docstring."""
    out: list[tuple[int, int] | None] = []
    at = 0
    for piece in pieces:
        s = piece.strip()
        if at >= len(value) or (s and value[at : at + len(s)] != s):
            out.append(None)
            at = len(value)  # a mismatch ends the walk: no later token is trusted
        elif not s:
            out.append((0, len(value)))
        else:
            out.append((at, at + len(s)))
            at += len(s)
    return out


def glyph_box(text: Text, start: int, end: int) -> Box:
    """The (x0, y0, x1, y1) scene pixels of ``text.value[start:end]``: its columns from the font's advances, the
    text's ink rows (``render_scene`` draws the ink box's left edge at ``box[0]``)."""
    f = font(text.font_px)
    origin = text.box[0] - f.getbbox(text.value)[0]
    x0 = max(float(text.box[0]), origin + f.getlength(text.value[:start]))
    x1 = min(float(text.box[2]), origin + f.getlength(text.value[:end]))
    return x0, float(text.box[1]), max(x0 + 1.0, x1), float(text.box[3])


def box_tokens(box: Box, width: int, height: int, places: torch.Tensor, base_tokens: int) -> torch.Tensor:
    """A bool (num_image_tokens,) of the image tokens whose scene place (``named.token_places``: (x, y) in [-1, 1],
    NaN for newlines) lies in ``box`` (scene pixels), and always the token nearest its centre in the base view (the
    first ``base_tokens``) and in the tiles (a small glyph may hold no token's place)."""
    px, py = scene_pixels(places, width, height)  # (N,) each, NaN for newlines
    x0, y0, x1, y1 = box
    mine = (px >= x0) & (px < x1) & (py >= y0) & (py < y1)
    dist = ((px - (x0 + x1) / 2) ** 2 + (py - (y0 + y1) / 2) ** 2).sqrt().nan_to_num(float("inf"))
    return with_nearest(mine, dist, base_tokens)
