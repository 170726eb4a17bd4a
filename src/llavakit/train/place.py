"""The place passes of the tiny synthetic recipe: where a named object lies, gathered at the word that names it.

Why (docs/default-model.md, "The place gathered at the kind's word"): the tiny decoder reads a lone object's place
from the order of its tokens, but among several objects its answer to "Is the KIND on the left or the right side of
the image?" follows where all the shapes are: the answer's query does not pick the named one out. The word that
names the kind does (the grounding pass taught layer 0 to look from it). These passes train, beside the language
loss on position conversations, six auxiliary losses (linear heads thrown away afterwards):

- each base-view token's place in its view, from the projector's output (``place``; for AnyRes the base view is the
  whole scene squashed to one tile, so this is the place in the scene; for single-resolution ``pad`` it is the
  place in the padded square);
- every image token's place in the scene, from layer 0's output (``decoder``): a tile token's features place it
  within its tile only, so layer 0 has to find its place in the scene from the token order or the base view;
- layer 1's attention at the named kind's word onto the named shape's tokens (``kind_mass``), and the shape's
  centre read from layer 1's output there (``kind_place``);
- with ``final``: the last layer's attention at the answer's query onto the kind's word (``final_mass``), and the
  centre read from the last layer's output at that query (``final_place``).

Conversations that start with a count question ("How many circles are there?") train the same way at the plural
word (``llavakit.train.count``): layer 1's attention there pulled towards the counted shapes (``count_mass``), the
count read from its output (``count_word``) and, with ``final``, at the answer's query (``final_count``), whose
attention is pulled onto the plural word as it is onto the kind's (``final_mass``).

The first pass (``final`` off, the background image tokens hidden at first and brought back over the pass) builds
the gathering at the word; the second (``final`` on) makes the answer read it.

Worked example of a place target: a 100 x 300 (h x w) image; the base view squashes it to 80 x 80, so base token 0
(the top-left 16 px patch) shows columns 0-60 and rows 0-20 of the scene: (x, y) = (30/300 * 2 - 1, 10/100 * 2 - 1)
= (-0.8, -0.8).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..data.synth import read_scenes
from ..data.synth_scene import KINDS, Scene
from ..model.llava import LlavaModel, pack_tiles, positions_from_mask
from ..processing.anyres import num_tiles
from ..processing.image import preprocess_views
from ..processing.processor import LlavaProcessor
from .attention_pull import answer_queries, attention_cross_entropy, attention_log_mass, kind_positions
from .collate import collate
from .count import KIND_OF_PLURAL, MAX_COUNTED, count_attention, counted, shape_tokens
from .foreground import drop_probability, hide_background, scene_token_owners
from .mixture import build_dataset
from .stages import StageSpec, apply_stage


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


def grid_places(grid: int) -> torch.Tensor:
    """(grid * grid, 2) the (x, y) of each token of a row-major grid, in [-1, 1]: token 7 of a 5 x 5 grid is row 1,
    column 2 -> (0.0, -0.5)."""
    idx = torch.arange(grid * grid)
    return torch.stack([idx % grid, idx // grid], 1).float() / max(1, grid - 1) * 2 - 1


def named_shape(scene: Scene, question: str) -> int | None:
    """Index of the shape a position question names ("Is the red circle on the left or ...", "Is the star in the
    top or ..."), None when the question is not one or names no single shape."""
    import re

    m = re.search(r"Is the (.+?) (?:on the left|in the top)", question)
    if m is None:
        return None
    *color, kind = m.group(1).split()
    hits = [i for i, sh in enumerate(scene.shapes) if sh.kind == kind and (not color or sh.color == color[0])]
    return hits[0] if len(hits) == 1 else None


class Named:
    """Per dataset item (of ``build_dataset`` over ``data``): the shape its first question names, as its image
    tokens (a bool over them, all views), its kind and its centre (x, y) in [-1, 1], None when it names none
    (``named(i)``); or the shapes a count question counts (``named.counting(i)``)."""

    def __init__(self, proc: LlavaProcessor, data: list[str], ds, scenes: dict | None = None) -> None:  # noqa: ANN001
        self.proc, self.ds, self.dirs, self.cache = proc, ds, list(data), {}
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

    def __call__(self, i: int) -> tuple[torch.Tensor, str, tuple[float, float]] | None:
        key = ("named", *self.key(i))
        if key not in self.cache:
            scene, question, _ = self.record(i)
            k = named_shape(scene, question)
            out = None
            if k is not None:
                tokens = scene_token_owners(scene, self.proc) == k
                sh = scene.shapes[k]
                centre = (sh.cx / scene.width * 2 - 1, sh.cy / scene.height * 2 - 1)
                out = (tokens, sh.kind, centre) if tokens.any() else None
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

    def count(self) -> int:
        """How many records' first question names a single shape or is a count question."""
        return sum(
            named_shape(scene, q) is not None or counted(scene, q) is not None
            for recs in self.records
            for scene, q, _ in recs
        )


def place_pass(
    init: str | Path,
    data: list[str | Path],
    out: str | Path,
    *,
    final: bool,
    drop: tuple[float, float] | None = None,
    batch: int = 16,
    lr: float = 1e-3,
    projector_lr: float = 2e-3,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> list[float]:
    """One place pass from checkpoint ``init`` over the position and count conversations of ``data`` (several
    directories: their mixture; one given twice is seen twice), projector and decoder trained at stage 2's rates
    (5% linear warm-up, then cosine); writes a checkpoint to ``out`` and returns the language loss of every step.
    ``final``: the answer's losses too (the second pass); ``drop``: background image tokens hidden with a
    probability going from drop[0] to drop[1] over the pass."""
    dirs = [str(d) for d in data]
    scenes = {d: read_scenes(d) for d in dict.fromkeys(dirs)}  # refuses data without scenes first
    torch.manual_seed(seed)
    model = LlavaModel.from_pretrained(init)
    proc = LlavaProcessor.from_pretrained(init)
    spec = {"datasets": [{"path": str(Path(d) / "instruct.json"), "image_folder": d} for d in dirs]}
    if len(dirs) == 1:
        spec = {"path": str(Path(dirs[0]) / "instruct.json"), "image_folder": dirs[0]}
    layers = model.model.language_model.layers
    if len(layers) < 2:
        raise ValueError(
            f"the place passes read layer 1 of the decoder; {init} has {len(layers)} layer(s): use a decoder of two "
            "layers or more, or leave the place passes out (train_default_model.py --place-passes 0)"
        )
    ds = build_dataset(spec, proc, proc.template, 1024, foreground=True)
    named = Named(proc, dirs, ds, scenes)
    if not named.count():
        raise ValueError(
            f"no conversation in {dirs} starts with a position question about a single shape or a count question; "
            "the place passes need position or count data (write_dataset(..., qtypes=('position',)) or "
            "qtypes=('count',))"
        )
    groups = apply_stage(model, StageSpec(name="stage2", lr=lr, projector_lr=projector_lr))
    d = model.config.text.hidden_size
    heads = {k: torch.nn.Linear(d, 2) for k in ("place", "decoder", "kind_place", "final_place")}
    groups.append({"name": "place_head", "params": list(heads["place"].parameters()), "lr": projector_lr})
    heads |= {k: torch.nn.Linear(d, MAX_COUNTED + 1) for k in ("count_word", "final_count")}  # classes 0..8
    for k in ("decoder", "kind_place", "final_place", "count_word", "final_count"):
        groups.append({"name": f"{k}_head", "params": list(heads[k].parameters()), "lr": lr})
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    base_lrs = [g["lr"] for g in opt.param_groups]
    order = list(range(len(ds)))
    random.Random(seed).shuffle(order)
    steps = len(order) // batch
    if steps < 1:
        raise ValueError(f"{len(ds)} conversations in {dirs}: fewer than one batch of {batch}")
    warm = max(1, int(0.05 * steps))
    grid = model.config.vision.image_size // model.config.vision.patch_size
    base_targets = grid_places(grid)  # (g*g, 2)
    image_id = model.config.image_token_id
    kind_token = {k: proc.tokenizer.encode(" " + k, add_special_tokens=False)[-1] for k in KINDS}
    word_token = {w: proc.tokenizer.encode(" " + w, add_special_tokens=False)[-1] for w in (*KIND_OF_PLURAL, "objects")}
    pad = partial(collate, pad_id=ds.pad_id, family=proc.family)

    projected: list[torch.Tensor] = []
    tile_features = model.tile_features

    def capture(tiles: torch.Tensor) -> torch.Tensor:
        f = tile_features(tiles)  # (N tiles, g*g, D)
        projected.append(f)
        return f

    model.tile_features = capture  # the instance's method: the base views' projector output
    attn_inputs: list[tuple] = []
    hidden: dict[int, torch.Tensor] = {}
    hooks = [
        layer.self_attn.register_forward_pre_hook(lambda m, a: attn_inputs.append((m, *a[:4])))  # x, cos, sin, mask
        for layer in layers
    ]
    last = len(layers) - 1
    for k in sorted({0, 1, last}):
        hooks.append(layers[k].register_forward_hook(partial(lambda k, m, a, o: hidden.__setitem__(k, o), k)))
    model.train()
    history = []
    named_rows = 0
    t0 = time.perf_counter()
    for step in range(steps):
        scale = (step + 1) / warm if step < warm else 0.5 * (1 + math.cos(math.pi * (step - warm) / (steps - warm)))
        for g, base_lr in zip(opt.param_groups, base_lrs):
            g["lr"] = base_lr * scale
        rows = order[step * batch : (step + 1) * batch]
        items = [ds[i] for i in rows]
        if any(it["id"] != named.record(i)[2] for i, it in zip(rows, items)):
            raise ValueError(
                f"samples skipped ({dict(ds.skipped)}): the named shapes would be another record's; the place passes "
                "need every record usable (ids, images, at most 1024 tokens)"
            )
        b_ = pad(items)
        mask = b_["attention_mask"]
        b, t = mask.shape
        pos = positions_from_mask(mask, b, t, 0, mask.device)
        if drop:
            gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
            mask = hide_background(mask, b_["foreground"], drop_probability(drop[0], drop[1], step, steps), gen)
        projected.clear()
        attn_inputs.clear()
        res = model(
            input_ids=b_["input_ids"],
            pixel_values=b_["pixel_values"],
            image_sizes=b_["image_sizes"],
            attention_mask=mask,
            position_ids=pos,
            labels=b_["labels"],
        )
        losses = {"lm": res.loss}
        # each base view's place, from the projector's output
        counts = [num_tiles(int(h), int(w), model.geometry) for h, w in b_["image_sizes"].tolist()]
        starts = torch.tensor([0, *counts[:-1]]).cumsum(0)
        base = projected[0][starts]  # (images, g*g, D)
        losses["place"] = F.mse_loss(heads["place"](base), base_targets.expand(base.shape[0], -1, -1))
        # every image token's place in the scene, from layer 0's output
        image = b_["input_ids"] == image_id  # (B, T)
        want = torch.full((b, t, 2), float("nan"))
        for j, (h, w) in enumerate(b_["image_sizes"].tolist()):
            want[j, image[j].nonzero()[:, 0]] = named.places(int(h), int(w))
        ok = ~want[..., 0].isnan()
        losses["decoder"] = (heads["decoder"](hidden[0][ok]) - want[ok]).pow(2).mean()
        # the named shape, gathered at its kind's word (layer 1) and read at the answer (last layer)
        info = [named(i) for i in rows]
        words = kind_positions(b_["input_ids"], b_["labels"], [kind_token[x[1]] if x else None for x in info])
        has = [j for j in range(b) if info[j] is not None and words[j] is not None]
        named_rows += len(has)
        if has:
            targets = torch.zeros(b, t, dtype=torch.bool)
            for j in has:
                targets[j, image[j].nonzero()[:, 0][info[j][0]]] = True
            targets &= mask.bool()
            kind_rows = {j: words[j] for j in has if targets[j, : words[j] + 1].any()}  # the shape before its word
            if kind_rows:
                logm = attention_log_mass(attn_inputs[1:2], kind_rows, targets, every_head=True)  # (rows, 1)
                losses["kind_mass"] = -logm[:, 0].mean()
            centres = torch.tensor([info[j][2] for j in has])
            losses["kind_place"] = F.mse_loss(heads["kind_place"](hidden[1][has, [words[j] for j in has]]), centres)
            if final:
                at = answer_queries(b_["labels"], has)
                losses["final_place"] = F.mse_loss(heads["final_place"](hidden[last][has, at]), centres)
        # the counted shapes, gathered at the plural word (layer 1) and their number read there and at the answer
        cinfo = [named.counting(i) for i in rows]
        cwords = kind_positions(b_["input_ids"], b_["labels"], [word_token[x[1]] if x else None for x in cinfo])
        crows = [j for j in range(b) if cinfo[j] is not None and cwords[j] is not None]
        named_rows += len(crows)
        if crows:
            wanted = torch.zeros(b, t)
            before = torch.arange(t)
            for j in crows:
                at_image = image[j].nonzero()[:, 0]
                shapes = []
                for tokens in cinfo[j][0]:
                    m = torch.zeros(t, dtype=torch.bool)
                    m[at_image[tokens]] = True
                    shapes.append(m)
                wanted[j] = count_attention(shapes, mask[j].bool() & (before < cwords[j]), cwords[j])
            cq = {j: cwords[j] for j in crows}
            losses["count_mass"] = attention_cross_entropy(attn_inputs[1], cq, wanted)
            n = torch.tensor([cinfo[j][2] for j in crows])
            losses["count_word"] = F.cross_entropy(heads["count_word"](hidden[1][crows, list(cq.values())]), n)
            if final:
                losses["final_count"] = F.cross_entropy(
                    heads["final_count"](hidden[last][crows, answer_queries(b_["labels"], crows)]), n
                )
        if final and (has or crows):  # the answer looks at the word (the kind's, or the plural's)
            at_word = {j: words[j] for j in has} | {j: cwords[j] for j in crows}
            queries = dict(zip(at_word, answer_queries(b_["labels"], list(at_word))))
            word = torch.zeros(b, t, dtype=torch.bool)
            word[list(at_word), list(at_word.values())] = True
            losses["final_mass"] = -attention_log_mass(attn_inputs[last : last + 1], queries, word)[:, 0].mean()
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
        opt.step()
        history.append(res.loss.item())
        if step % 50 == 0 or step == steps - 1:
            parts = " ".join(f"{k} {v.item():.3f}" for k, v in losses.items())
            log(f"place pass step {step + 1}/{steps}: {parts} ({time.perf_counter() - t0:.0f}s)")
    for hook in hooks:
        hook.remove()
    if not named_rows:
        raise ValueError(
            f"the named kinds' and counted plurals' words were never found in the questions of {dirs} (tokenizer of "
            f"{init}: {sorted((kind_token | word_token).items())}); nothing but the language and place losses "
            "trained, so nothing is saved"
        )
    del model.tile_features
    model.eval()
    model.save_pretrained(out)
    proc.save_pretrained(out)
    marker = {"init": str(init), "data": dirs, "final": final, "drop": drop, "steps": steps, "loss": history}
    (Path(out) / "place.json").write_text(json.dumps(marker) + "\n")  # written last: the pass finished
    return history
