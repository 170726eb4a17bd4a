"""What the place passes (``llavakit.train.place``) know of a conversation: where each image token lies in the scene
(``token_places``), which shape its first question names (a position, colour or shape question) or counts, and
which text it asks to read, per dataset item (``Named``).

Worked example of a place: a 100 x 300 (h x w) image; the base view squashes it to 80 x 80, so base token 0 (the
top-left 16 px patch) shows columns 0-60 and rows 0-20 of the scene: (x, y) = (30/300 * 2 - 1, 10/100 * 2 - 1) =
(-0.8, -0.8).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.synth import read_scenes
from ..data.synth_scene import Scene, Shape, Text
from ..model.llava import pack_tiles
from ..processing.anyres import num_image_tokens
from ..processing.image import preprocess_views
from ..processing.processor import LlavaProcessor
from .count import MAX_COUNTED, counted, shape_tokens
from .foreground import scene_token_owners
from .reading import read_text


def token_places(h: int, w: int, proc: LlavaProcessor) -> torch.Tensor:
    """(num_image_tokens, 2) the scene's (x, y) in [-1, 1] at each image token of an h x w image: the mean over its
    patch of the scene point each pixel shows, padding left out; NaN for the newlines (and a patch of padding only).

    A map of each pixel's column and row (0-255, channels 0 and 1) and of the image's extent (channel 2: 255 in the
    image, the pad colour outside) goes through the processor's own views and ``pack_tiles``, as
    ``foreground.mask_flags`` does for foreground (worked example: the module's docstring)."""
    cfg, geom = proc.image_config, proc.geometry
    xs = np.broadcast_to(np.round((np.arange(w) + 0.5) / w * 255), (h, w))
    ys = np.broadcast_to(np.round((np.arange(h) + 0.5) / h * 255)[:, None], (h, w))
    rgb = np.stack([xs, ys, np.full((h, w), 255.0)], -1).astype(np.uint8)
    views = np.stack([np.asarray(v) for v in preprocess_views(Image.fromarray(rgb, "RGB"), cfg)]).astype(np.float64)
    pad = float(cfg.pad_colour[2])
    weight = np.clip((views[..., 2] - pad) / (255.0 - pad), 0.0, 1.0)  # (V, S, S): 1 in the image
    p, g = geom.patch, geom.grid
    v = views.shape[0]
    sums = np.stack([views[..., 0] * weight, views[..., 1] * weight, weight], -1)[:, : g * p, : g * p]
    sums = sums.reshape(v, g, p, g, p, 3).sum(axis=(2, 4)).reshape(v, g * g, 3)
    feats = torch.from_numpy(sums).float()
    if geom.pinpoints is None:
        tokens = feats[0]
    else:
        tokens = pack_tiles(feats, h, w, geom, torch.tensor([float("nan"), float("nan"), 0.0]))
    xy = tokens[:, :2] / tokens[:, 2:] / 255 * 2 - 1
    xy[tokens[:, 2] < 1e-3 * p * p] = float("nan")
    return xy


def named_shape(scene: Scene, question: str) -> int | None:
    """Index of the shape a position question names ("Is the red circle on the left or ...", "Is the star in the
    top or ..."), None when the question is not one or names no single shape."""
    m = re.search(r"Is the (.+?) (?:on the left|in the top)", question)
    if m is None:
        return None
    *color, kind = m.group(1).split()
    hits = [i for i, sh in enumerate(scene.shapes) if sh.kind == kind and (not color or sh.color == color[0])]
    return hits[0] if len(hits) == 1 else None


def attribute_shape(scene: Scene, question: str) -> tuple[int, str] | None:
    """(index, naming word) of the shape a colour or shape question names: "What color is the star?" names the
    one star by "star", "What shape is the red object?" the one red shape by "red"; None otherwise."""
    m = re.search(r"What color is the (\w+)\?", question) or re.search(r"What shape is the (\w+) object\?", question)
    if m is None:
        return None
    word = m.group(1)
    hits = [i for i, sh in enumerate(scene.shapes) if word in (sh.kind, sh.color)]
    return (hits[0], word) if len(hits) == 1 else None


class Named:
    """Per dataset item (of ``build_dataset`` over ``data``): the shape its first question names, as its image
    tokens (a bool over them, all views), the word that names it, its centre (x, y) in [-1, 1] and the shape, None
    when it names none (``named(i)``; position questions, and with ``attributes`` colour and shape questions); the
    shapes a count question counts (``named.counting(i)``); the text a reading question asks for
    (``named.reading(i)``); and the items' lengths (``named.lengths()``)."""

    def __init__(
        self,
        proc: LlavaProcessor,
        data: list[str],
        ds,  # noqa: ANN001
        scenes: dict | None = None,
        attributes: bool = False,
    ) -> None:
        self.proc, self.ds, self.dirs, self.cache = proc, ds, list(data), {}
        self.attributes = attributes
        self.sizes: dict[tuple[int, int], torch.Tensor] = {}  # image size -> token_places
        self.records = []
        for d in data:
            scenes_d = scenes[d] if scenes and d in scenes else read_scenes(d)
            recs = json.loads((Path(d) / "instruct.json").read_text())
            self.records.append(
                [(scenes_d[r["image"]], r["conversations"][0]["value"], str(r.get("id"))) for r in recs]
            )

    def locate(self, i: int) -> tuple[int, int]:
        """(dataset, record) of item ``i``: a mixture maps items to them, a single dataset's item is its record."""
        return self.ds.index[i] if hasattr(self.ds, "index") else (0, i)

    def record(self, i: int) -> tuple:
        """(scene, first question, id) of item ``i``."""
        d, j = self.locate(i)
        return self.records[d][j]

    def key(self, i: int) -> tuple[str, int]:
        """(data directory, record index) of item ``i``: a directory given twice is one key per record, two
        directories never share one (their record ids may: ids repeat across directories of the same seed)."""
        d, j = self.locate(i)
        return self.dirs[d], j

    def places(self, h: int, w: int) -> torch.Tensor:
        """``token_places`` of an h x w image, computed once per size."""
        if (h, w) not in self.sizes:
            self.sizes[h, w] = token_places(h, w, self.proc)
        return self.sizes[h, w]

    def __call__(self, i: int) -> tuple[torch.Tensor, str, tuple[float, float], Shape] | None:
        key = ("named", *self.key(i))
        if key not in self.cache:
            scene, question, _ = self.record(i)
            k = named_shape(scene, question)
            if k is not None:  # exact: the tokens the shape covers rendered alone
                tokens, word = scene_token_owners(scene, self.proc) == k, scene.shapes[k].kind
            elif self.attributes and (a := attribute_shape(scene, question)) is not None:
                k, word = a  # geometric (``count.shape_tokens``): never empty
                tokens = shape_tokens(scene, self.places(scene.height, scene.width), self.proc.geometry.grid**2)[k]
            out = None
            if k is not None and tokens.any():
                sh = scene.shapes[k]
                out = (tokens, word, (sh.cx / scene.width * 2 - 1, sh.cy / scene.height * 2 - 1), sh)
            self.cache[key] = out
        return self.cache[key]

    def counting(self, i: int) -> tuple[list[torch.Tensor], str, int] | None:
        """The shapes item ``i``'s first question counts ("How many circles are there?"): per shape a bool over the
        image tokens (``count.shape_tokens``), the plural word and how many; None when it is no count question."""
        scene, question, _ = self.record(i)
        key = ("count", *self.key(i))
        if key not in self.cache:
            c = counted(scene, question)
            out = None
            if c is not None:
                word, idx = c
                if len(idx) > MAX_COUNTED:
                    raise ValueError(
                        f"record {self.record(i)[2]} counts {len(idx)} shapes; the count heads know 0-{MAX_COUNTED} "
                        f"(synth_scene.MAX_SHAPES): write the data with max_shapes <= {MAX_COUNTED}"
                    )
                tokens = shape_tokens(scene, self.places(scene.height, scene.width), self.proc.geometry.grid**2)
                out = ([tokens[k] for k in idx], word, len(idx))
            self.cache[key] = out
        return self.cache[key]

    def reading(self, i: int) -> tuple[Scene, Text] | None:
        """(scene, its text) when item ``i``'s first question asks for the text (``reading.read_text``), else None."""
        scene, question, _ = self.record(i)
        text = read_text(scene, question)
        return (scene, text) if text is not None else None

    def lengths(self) -> list[int]:
        """Per dataset item, its length in tokens as ``data.py`` estimates it, with the image tokens of its scene's
        size in place of one tile's."""
        per_tile = self.proc.geometry.tokens_per_tile
        out = []
        for i in range(len(self.ds)):
            scene = self.record(i)[0]
            out.append(self.ds.lengths[i] - per_tile + num_image_tokens(scene.height, scene.width, self.proc.geometry))
        return out

    def count(self) -> int:
        """How many records' first question names a single shape, is a count question or asks for the text."""
        return sum(
            named_shape(scene, q) is not None
            or (self.attributes and attribute_shape(scene, q) is not None)
            or counted(scene, q) is not None
            or read_text(scene, q) is not None
            for recs in self.records
            for scene, q, _ in recs
        )
