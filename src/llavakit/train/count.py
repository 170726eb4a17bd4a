"""The counting half of the place passes (``llavakit.train.place.place_pass``): which shapes a count question counts,
where their tokens are, and the attention that gathers them at the question's plural word.

Why (docs/default-model.md, "Counting gathered at the plural word"): the tiny decoder answered "1" to every "How many
KINDs are there?", zero included: as with position, the answer's query does not find the shapes the question names.
The passes pull layer 1's attention at the plural word ("circles", "objects") onto the counted shapes and read the
count there, then (second pass) pull the answer's attention onto that word and read the count there too.

The attention wanted at the word is shared equally between the word itself and each counted shape (that shape's share
split evenly over its tokens): with n shapes each gets 1 / (n + 1), so what the word keeps of itself tells n.
Worked example: two circles, one over 3 tokens and one over 1: the word 1/3, each token of the first 1/9, the token of
the second 1/3. With none, all of it stays on the word.
"""

from __future__ import annotations

import re

import torch

from ..data.synth_questions import plural
from ..data.synth_scene import KINDS, MAX_SHAPES, Scene

KIND_OF_PLURAL = {plural(k): k for k in KINDS}
MAX_COUNTED = MAX_SHAPES  # count classes 0..8 ("How many objects": up to MAX_SHAPES)


def counted(scene: Scene, question: str) -> tuple[str, list[int]] | None:
    """(the plural word, the indices of the shapes it counts) of "How many circles are there?" or "How many objects
    are there?"; None when the question is not a count question."""
    m = re.search(r"How many (\w+) are there", question)
    if m is None:
        return None
    word = m.group(1)
    if word == "objects":
        return word, list(range(len(scene.shapes)))
    if word not in KIND_OF_PLURAL:
        return None
    return word, [i for i, s in enumerate(scene.shapes) if s.kind == KIND_OF_PLURAL[word]]


def shape_tokens(scene: Scene, places: torch.Tensor, base_tokens: int) -> list[torch.Tensor]:
    """Per shape, a bool (num_image_tokens,) of the image tokens that show it, from geometry: the tokens whose scene
    place (``named.token_places``: (x, y) in [-1, 1], NaN for newlines) lies within the shape's radius of its centre,
    and always the token nearest its centre in the base view (the first ``base_tokens``) and in the tiles.

    Rendering each shape alone (``foreground.scene_token_owners``) is exact but costs ~0.1 s a scene of 1-8 shapes;
    this needs only the places, which the passes compute once per image size anyway."""
    px, py = scene_pixels(places, scene.width, scene.height)
    out = []
    for sh in scene.shapes:
        dist = ((px - sh.cx) ** 2 + (py - sh.cy) ** 2).sqrt().nan_to_num(float("inf"))  # (N,)
        out.append(with_nearest(dist <= sh.radius, dist, base_tokens))
    return out


def scene_pixels(places: torch.Tensor, width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y), each (N,), the scene pixel of each token's place (``named.token_places``: [-1, 1]; NaN stays NaN)."""
    return (places[:, 0] + 1) / 2 * width, (places[:, 1] + 1) / 2 * height


def with_nearest(mine: torch.Tensor, dist: torch.Tensor, base_tokens: int) -> torch.Tensor:
    """``mine`` (a bool over the N image tokens) with the token of least ``dist`` (inf for newlines) set in the base
    view (the first ``base_tokens``) and in the tiles, so that a small object has a token in each view."""
    for lo, hi in ((0, base_tokens), (base_tokens, len(dist))):
        if hi > lo and torch.isfinite(dist[lo:hi]).any():
            mine[lo + int(dist[lo:hi].argmin())] = True
    return mine


def count_attention(shapes: list[torch.Tensor], visible: torch.Tensor, word: int) -> torch.Tensor:
    """(T,) the attention wanted at the plural word (position ``word``): 1 / (n + 1) on the word and on each of the n
    ``shapes`` (bools over the T positions), split evenly over its ``visible`` tokens (a shape with none visible gives
    its share to the word). Worked example: the module docstring."""
    want = torch.zeros(visible.shape[0])
    share = 1.0 / (len(shapes) + 1)
    want[word] = share
    for tokens in shapes:
        tokens = tokens & visible
        if tokens.any():
            want[tokens] += share / int(tokens.sum())
        else:
            want[word] += share
    return want
