"""A stage-2 pass with an auxiliary place loss (scratch experiment for issue 5's position target).

Why: ``scripts/probe_place.py`` found that a decoder of the tiny model's shape answers "Is the KIND on the left or
right?" perfectly when every image token carries its column and row and the empty cells come in gradually, and at
chance from the token order (RoPE) alone; the real model's projector output does not keep the place
(docs/default-model.md, "A position read-out from the base view alone"). This pass trains as a stage-2 pass does
(projector + decoder on conversations, the recipe's learning rates; 5% linear warm-up from 1/warm-up-steps, then
cosine, close to ``llava train``'s schedule) with these additions:

- a linear head (thrown away afterwards) regresses each base-view token's column and row, in [-1, 1], from the
  projector's output; its mean squared error, times ``--place-weight``, is added to the language-model loss. The
  base view is the whole image squashed to one tile, so its grid is the scene's (5 x 5 tokens for the tiny model);
- ``--drop START END``: background image tokens hidden from the text with a probability going linearly from START
  to END over the pass (``llavakit.train.foreground``), as ``data.background_drop`` does in the loop;
- ``--tile-drop START END``: the tile tokens (every image token after the base view's, newlines included) hidden
  from the text with a probability going linearly from START to END over the pass: the base view alone at first,
  where each token's place is the scene's (``scripts/probe_place.py --tiles 2 --tile-ramp``);
- ``--shuffle-positions base|image``: the position ids of each row's base-view (or all its) image tokens permuted
  among themselves at every step, so that the token order no longer says where a token lies and the place can
  only come from the features (``scripts/place_eval.py --flip-rows`` shows the row is otherwise read from the order);
- ``--answer-ground W``: a loss, times W, on every layer's attention at the query just before each row's first
  answer: minus the log of the largest mass a head puts on the image tokens left visible (with ``--drop 1 1
  --tile-drop 1 1`` and one shape per scene: that shape's base-view tokens), averaged over layers and rows;
- ``--answer-target named|named-tiles|named-all``: pull onto the tokens of the shape each row's first question
  names (in the base view, the tiles or all views) instead; ``--answer-heads all``: every head, not the one of
  each layer that looks most;
- ``--others-drop START END``: the tokens of the shapes the first question does not name hidden with a probability
  going from START to END over the pass (the named shape alone at first, as for a lone object); only the first
  answer of each conversation is trained then (later ones may ask about the hidden shapes);
- ``--decoder-place W``: a second linear head (thrown away) regresses, from the decoder's hidden state after layer
  ``--decoder-place-layer``, the scene's (x, y) under every image token (``token_places``; base view and tiles
  alike, newlines left out); its mean squared error times W is added. A tile token's features place it within its
  tile only, so the decoder has to find its place in the scene from the token order (or from the base view);
  ``scripts/probe_place.py --feat`` found answers need the scene's place in every token of an object;
- ``--answer-place W``: a third linear head (thrown away) regresses the centre of the shape each row's first
  question names, in [-1, 1], from the hidden state after layer ``--answer-place-layer`` at the query just before
  the first answer (the place the answer has to gather there); its mean squared error times W is added;
- ``--answer-query kind``: ``--answer-ground`` and ``--answer-place`` look from the named kind's word in the first
  question instead (``--answer-layers``: the layers pulled); ``--final-place W`` then reads the centre at the
  answer's query after ``--final-place-layer`` too, and ``--final-ground W`` pulls that layer's attention at the
  answer's query onto the kind's word (where ``--answer-place`` gathered the place);
- ``--ground-weight W``: the grounding pass's attention loss (``train.grounding``), times W, on ``--ground-batch``
  position questions per step ("Is the KIND on the left or the right side of the image?", or top / bottom, about a
  shape alone of its kind in the scenes of the first ``--data`` directory), its target the named shape's base-view
  tokens only: layer 0 at the kind's name learns to look where its place is kept.

Worked example of the targets: 5 x 5 base-view tokens; token 7 is row 1, column 2 -> (x, y) = (2/4 * 2 - 1,
1/4 * 2 - 1) = (0.0, -0.5).

    python scripts/place_pass.py --init MODEL --data DIR [DIR ...] --out OUT [--drop 1 0] [--tile-drop 1 0]
        [--place-weight 1]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from llavakit.data.synth import read_scenes
from llavakit.train.attention_pull import kind_positions
from llavakit.train.named import named_shape, token_places
from llavakit.train.place import grid_places


def tile_flags(input_ids: torch.Tensor, image_token_id: int, per_view: int) -> torch.Tensor:
    """(B, T) bool: the image tokens of each row after its first ``per_view`` (one image per row: the tiles and
    newlines after the base view). Worked example, per_view 2: ids [t, I, I, I, I, t] -> [F, F, F, T, T, F]."""
    image = input_ids == image_token_id
    return image & (image.long().cumsum(1) > per_view)


def shuffle_positions(
    pos: torch.Tensor, input_ids: torch.Tensor, image_token_id: int, first: int | None, gen: torch.Generator
) -> torch.Tensor:
    """(B, T) position ids with those of each row's first ``first`` image tokens (None: all of them) permuted
    at random among themselves: the token order no longer says where a token lies in the image. Worked example,
    first 2: ids [t, I, I, I], pos [0, 1, 2, 3] -> [0, 2, 1, 3] or unchanged."""
    pos = pos.clone()
    for j in range(pos.shape[0]):
        idx = (input_ids[j] == image_token_id).nonzero()[:, 0]
        if first is not None:
            idx = idx[:first]
        pos[j, idx] = pos[j, idx[torch.randperm(len(idx), generator=gen)]]
    return pos


def answer_log_mass(
    captured: list[tuple],
    labels: torch.Tensor,
    visible: torch.Tensor,
    rows: list[int] | None = None,
    every_head: bool = False,
    queries: list[int] | None = None,
) -> torch.Tensor:
    """(R, L) ``attention_pull.attention_log_mass`` from the query just before each row's first label, or from
    ``queries[j]`` in row j, for each of ``rows`` (default: all B; each needs a visible token)."""
    from llavakit.train.attention_pull import answer_queries, attention_log_mass

    rows = list(range(labels.shape[0])) if rows is None else rows
    at = answer_queries(labels, rows) if queries is None else [queries[j] for j in rows]
    return attention_log_mass(captured, dict(zip(rows, at)), visible, every_head)


def first_answer_only(labels: torch.Tensor) -> torch.Tensor:
    """(B, T) labels, in place: every label after each row's first answer (its first run of labels) ignored.
    Worked example: [-100, 5, 2, -100, 7, 2] -> [-100, 5, 2, -100, -100, -100]."""
    for j in range(labels.shape[0]):
        sup = (labels[j] != -100).nonzero()[:, 0]
        if len(sup):
            gaps = (sup[1:] - sup[:-1] > 1).nonzero()[:, 0]
            if len(gaps):
                labels[j, sup[int(gaps[0]) + 1] :] = -100
    return labels


def image_flags(input_ids: torch.Tensor, image_token_id: int, flags: list[torch.Tensor | None]) -> torch.Tensor:
    """(B, T) bool: row j's image tokens marked by ``flags[j]`` (a bool over that row's image tokens, in order;
    None: none). Worked example: ids [[t, I, I, t, I]], flags [[F, T, T]] -> [[F, F, T, F, T]]."""
    out = torch.zeros(input_ids.shape, dtype=torch.bool)
    for j, f in enumerate(flags):
        if f is not None:
            out[j, (input_ids[j] == image_token_id).nonzero()[:, 0][f]] = True
    return out


class NamedTargets:
    """Per dataset item, the image tokens (a bool over them) of the shape its first question names in ``views``
    ("base": the base view's, "tiles": the tiles', "all"), or None; computed on first use
    (``foreground.scene_token_owners`` renders each shape alone)."""

    def __init__(self, proc, data: list[str], ds, per_view: int, views: str = "base") -> None:  # noqa: ANN001
        self.proc, self.ds, self.per_view, self.views, self.cache = proc, ds, per_view, views, {}
        self.records = []
        for d in data:
            scenes = read_scenes(d)
            recs = json.loads((Path(d) / "instruct.json").read_text())
            self.records.append([(scenes[r["image"]], r["conversations"][0]["value"], r.get("id")) for r in recs])

    def _record(self, i: int) -> tuple:
        """(scene, first question, id) of dataset item ``i`` (a mixture maps items to (dataset, record))."""
        d, j = self.ds.index[i] if hasattr(self.ds, "index") else (0, i)
        return self.records[d][j]

    def __call__(self, i: int) -> torch.Tensor | None:
        return self._get(i)[0]

    def record_id(self, i: int) -> str | None:
        return self._record(i)[2]

    def kind(self, i: int) -> str | None:
        """The kind of the shape item ``i``'s first question names, None when none."""
        scene, question, _ = self._record(i)
        k = named_shape(scene, question)
        return None if k is None else scene.shapes[k].kind

    def centre(self, i: int) -> tuple[float, float] | None:
        """The centre (x, y) in [-1, 1] of the shape item ``i``'s first question names, None when none."""
        scene, question, _ = self._record(i)
        k = named_shape(scene, question)
        if k is None:
            return None
        sh = scene.shapes[k]
        return (sh.cx / scene.width * 2 - 1, sh.cy / scene.height * 2 - 1)

    def others(self, i: int) -> torch.Tensor | None:
        """The image tokens that show one shape, not the named one, in every view (tokens showing two shapes,
        which may include the named one, are left out)."""
        return self._get(i)[1]

    def _get(self, i: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if i not in self.cache:
            from llavakit.train.foreground import scene_token_owners

            scene, question, _ = self._record(i)
            k = named_shape(scene, question)
            target = others = None
            if k is not None:
                owner = scene_token_owners(scene, self.proc)
                target = owner == k
                others = (owner >= 0) & (owner != k)  # tokens of two shapes (-2) may show the named one: kept
                if self.views == "base":
                    target[self.per_view :] = False
                elif self.views == "tiles":
                    target[: self.per_view] = False
                target = target if target.any() else None
            self.cache[i] = (target, others)
        return self.cache[i]


def ground_examples(proc, data: Path, n: int, per_view: int, seed: int = 0) -> list[dict]:  # noqa: ANN001
    """Up to ``n`` position questions (``grounding.question_inputs``) about a shape alone of its kind, their
    ``target`` the shape's base-view tokens (the first ``per_view`` image tokens)."""
    from PIL import Image

    from llavakit.data.synth_questions import side
    from llavakit.data.synth_scene import Scene
    from llavakit.train.grounding import TEXT, question_inputs

    rng = random.Random(seed)
    out: list[dict] = []
    for line in (data / "scenes.jsonl").read_text().splitlines():
        if len(out) >= n:
            break
        rec = json.loads(line)
        scene = Scene.from_dict(rec["scene"])
        kinds = [s.kind for s in scene.shapes]
        options = [(i, axis) for i, k in enumerate(kinds) if kinds.count(k) == 1 for axis in ("x", "y")]
        options = [(i, axis) for i, axis in options if side(scene, scene.shapes[i], axis)]
        if not options:
            continue
        i, axis = rng.choice(options)
        kind = kinds[i]
        question = (
            f"Is the {kind} on the left or the right side of the image?"
            if axis == "x"
            else f"Is the {kind} in the top or the bottom part of the image?"
        )
        q = question_inputs(proc, scene, Image.open(data / rec["image"]).convert("RGB"), question, kind)
        target = q["owner"] == i
        target[(q["owner"] != TEXT).nonzero()[per_view:, 0]] = False  # tile tokens and newlines left out
        if target.any():
            out.append({**q, "target": target})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--init", required=True)
    ap.add_argument("--data", nargs="+", required=True, help="synthetic instruct directories (mixed)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--drop", type=float, nargs=2, metavar=("START", "END"))
    ap.add_argument("--tile-drop", type=float, nargs=2, metavar=("START", "END"))
    ap.add_argument(
        "--shuffle-positions",
        choices=("base", "image"),
        help="permute the position ids of each row's base-view (or all) image tokens every step",
    )
    others_help = "hide the shapes the first question does not name, probability START -> END (position data)"
    ap.add_argument("--others-drop", type=float, nargs=2, metavar=("START", "END"), help=others_help)
    ap.add_argument("--place-weight", type=float, default=1.0, help="0: the plain pass (a control)")
    ap.add_argument("--ground-weight", type=float, default=0.0, help="the base-view grounding loss (0: none)")
    ap.add_argument(
        "--answer-ground",
        type=float,
        default=0.0,
        help="weight of a loss on each layer's attention at the first answer's query: its mass on the image tokens "
        "left visible (with --drop 1 1 --tile-drop 1 1: the objects' base-view tokens); 0: none",
    )
    ap.add_argument(
        "--answer-target",
        choices=("visible", "named", "named-tiles", "named-all"),
        default="visible",
        help="what --answer-ground pulls the attention to: the image tokens left visible, or the tokens of the "
        "shape each row's first question names (position data) in the base view, the tiles or all views",
    )
    ap.add_argument(
        "--answer-heads",
        choices=("max", "all"),
        default="max",
        help="--answer-ground pulls the head of each layer that looks most at the target (max) or every head (all)",
    )
    ap.add_argument(
        "--decoder-place",
        type=float,
        default=0.0,
        help="weight of a loss regressing every image token's place in the scene from the decoder's hidden state "
        "after --decoder-place-layer (0: none)",
    )
    ap.add_argument("--decoder-place-layer", type=int, default=0, help="the layer whose output --decoder-place reads")
    ap.add_argument(
        "--answer-query",
        choices=("answer", "kind"),
        default="answer",
        help="where --answer-ground and --answer-place look from: the query just before the first answer, or the "
        "named kind's word in the first question",
    )
    ap.add_argument(
        "--answer-layers", type=int, nargs="+", help="the layers --answer-ground pulls (default: all of them)"
    )
    ap.add_argument(
        "--answer-place",
        type=float,
        default=0.0,
        help="weight of a loss regressing the named shape's centre from the hidden state at the first answer's "
        "query after --answer-place-layer (position data; 0: none)",
    )
    ap.add_argument("--answer-place-layer", type=int, default=1, help="the layer whose output --answer-place reads")
    ap.add_argument("--final-place", type=float, default=0.0, help="with --answer-query kind: the centre read out at "
                    "the answer's query after --final-place-layer too (weight; 0: none)")  # fmt: skip
    ap.add_argument("--final-place-layer", type=int, default=-1, help="default: the last layer")
    ap.add_argument("--final-ground", type=float, default=0.0, help="with --answer-query kind: pull the attention of "
                    "--final-place-layer at the answer's query onto the kind's word (weight; 0: none)")  # fmt: skip
    ap.add_argument("--ground-batch", type=int, default=8)
    ap.add_argument("--ground-examples", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--projector-lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int)
    args = ap.parse_args(argv)
    if args.answer_target != "visible" and not args.answer_ground:
        ap.error(f"--answer-target {args.answer_target} needs --answer-ground W (W > 0)")
    if args.threads is not None:
        if args.threads < 1:
            ap.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)

    from llavakit.data.synth_scene import KINDS
    from llavakit.model.llava import LlavaModel, positions_from_mask
    from llavakit.processing.anyres import num_tiles
    from llavakit.processing.processor import LlavaProcessor
    from llavakit.train.collate import collate
    from llavakit.train.foreground import drop_probability, hide_background
    from llavakit.train.grounding import layer0_log_mass
    from llavakit.train.mixture import build_dataset
    from llavakit.train.stages import StageSpec, apply_stage

    torch.manual_seed(args.seed)
    model = LlavaModel.from_pretrained(args.init)
    proc = LlavaProcessor.from_pretrained(args.init)
    spec = {"datasets": [{"path": str(Path(d) / "instruct.json"), "image_folder": d} for d in args.data]}
    if len(args.data) == 1:
        spec = {"path": str(Path(args.data[0]) / "instruct.json"), "image_folder": args.data[0]}
    ds = build_dataset(spec, proc, proc.template, 1024, foreground=True)
    groups = apply_stage(model, StageSpec(name="stage2", lr=args.lr, projector_lr=args.projector_lr))
    d = model.config.text.hidden_size
    head = torch.nn.Linear(d, 2)
    groups.append({"name": "place_head", "params": list(head.parameters()), "lr": args.projector_lr})
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    base_lrs = [g["lr"] for g in opt.param_groups]
    order = list(range(len(ds)))
    random.Random(args.seed).shuffle(order)
    steps = len(order) // args.batch
    warm = max(1, int(0.05 * steps))
    grid = model.config.vision.image_size // model.config.vision.patch_size
    targets = grid_places(grid)  # (g*g, 2)
    geom = model.geometry
    pad = partial(collate, pad_id=ds.pad_id, family=proc.family)
    grounding = []
    if args.ground_weight:
        grounding = ground_examples(proc, Path(args.data[0]), args.ground_examples, grid * grid, args.seed)
        if not grounding:
            raise SystemExit(f"{args.data[0]}: no shape alone of its kind off-centre to ask about")
    g_rng = torch.Generator().manual_seed(args.seed)
    s_rng = torch.Generator().manual_seed(args.seed + 1_000_000)  # position shuffles

    captured: list[torch.Tensor] = []
    tile_features = model.tile_features

    def capture(tiles: torch.Tensor) -> torch.Tensor:
        f = tile_features(tiles)  # (N tiles, g*g, D)
        captured.append(f)
        return f

    model.tile_features = capture  # the instance's method: the base views' projector output, for the place loss
    attn_inputs: list[tuple] = []
    views = {"named": "base", "named-tiles": "tiles", "named-all": "all"}.get(args.answer_target)
    named = NamedTargets(proc, args.data, ds, grid * grid, views or "base") if views or args.others_drop else None
    if args.answer_ground or args.final_ground:
        for layer in model.model.language_model.layers:
            layer.self_attn.register_forward_pre_hook(
                lambda m, a: attn_inputs.append((m, a[0], a[1], a[2], a[3]))  # x, cos, sin, mask
            )
    hidden: dict[int, torch.Tensor] = {}  # layer -> its output (B, T, D), this step
    places: dict[tuple[int, int], torch.Tensor] = {}  # image size -> token_places
    dec_head, ans_head, fin_head = torch.nn.Linear(d, 2), torch.nn.Linear(d, 2), torch.nn.Linear(d, 2)
    if (args.final_place or args.final_ground) and args.answer_query != "kind":
        ap.error("--final-place and --final-ground need --answer-query kind")
    n_layers = len(model.model.language_model.layers)
    if (args.final_place or args.final_ground) and not -n_layers <= args.final_place_layer < n_layers:
        ap.error(f"--final-place-layer must be in {-n_layers}..{n_layers - 1}, got {args.final_place_layer}")
    args.final_place_layer %= n_layers
    layers = model.model.language_model.layers
    for on, layer_arg, name, h in (
        (args.decoder_place, args.decoder_place_layer, "decoder_place", dec_head),
        (args.answer_place, args.answer_place_layer, "answer_place", ans_head),
        (args.final_place, args.final_place_layer, "final_place", fin_head),
    ):
        if not on:
            continue
        if not -len(layers) <= layer_arg < len(layers):
            ap.error(f"--{name.replace('_', '-')}-layer must be in 0..{len(layers) - 1}, got {layer_arg}")
        if layer_arg not in hidden:
            hidden[layer_arg] = None
            layers[layer_arg].register_forward_hook(partial(lambda k, m, a, out: hidden.__setitem__(k, out), layer_arg))
        opt.add_param_group({"name": f"{name}_head", "params": list(h.parameters()), "lr": args.lr})
        base_lrs.append(args.lr)
    if (args.answer_place or args.answer_query == "kind") and named is None:
        named = NamedTargets(proc, args.data, ds, grid * grid, "base")
    kind_token = {k: proc.tokenizer.encode(" " + k, add_special_tokens=False)[-1] for k in KINDS}  # a word's last
    if any(not 0 <= n < len(layers) for n in args.answer_layers or []):
        ap.error(f"--answer-layers must be in 0..{len(layers) - 1}, got {args.answer_layers}")
    model.train()
    log = []
    t0 = time.perf_counter()
    for step in range(steps):
        scale = (step + 1) / warm if step < warm else 0.5 * (1 + math.cos(math.pi * (step - warm) / (steps - warm)))
        for g, lr in zip(opt.param_groups, base_lrs):
            g["lr"] = lr * scale
        rows = order[step * args.batch : (step + 1) * args.batch]
        items = [ds[i] for i in rows]
        if named is not None and any(it["id"] != named.record_id(i) for i, it in zip(rows, items)):
            raise SystemExit(f"samples skipped ({dict(ds.skipped)}): the named shapes would be another record's")
        batch = pad(items)
        mask = batch["attention_mask"]
        b, t = mask.shape
        pos = positions_from_mask(mask, b, t, 0, mask.device)
        if args.drop:
            p = drop_probability(args.drop[0], args.drop[1], step, steps)
            gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
            mask = hide_background(mask, batch["foreground"], p, gen)
        if args.tile_drop:
            p = drop_probability(args.tile_drop[0], args.tile_drop[1], step, steps)
            gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step + 500_000)
            tiles = tile_flags(batch["input_ids"], model.config.image_token_id, grid * grid)
            mask = hide_background(mask, ~tiles, p, gen)  # all but the tiles kept, as foreground is
        if args.shuffle_positions:
            pos = shuffle_positions(
                pos,
                batch["input_ids"],
                model.config.image_token_id,
                grid * grid if args.shuffle_positions == "base" else None,
                s_rng,
            )
        if args.others_drop:
            p = drop_probability(args.others_drop[0], args.others_drop[1], step, steps)
            gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step + 900_000)
            others = image_flags(batch["input_ids"], model.config.image_token_id, [named.others(i) for i in rows])
            mask = hide_background(mask, ~others, p, gen)  # all but the other shapes kept
            first_answer_only(batch["labels"])  # later turns may ask about the shapes hidden here
        captured.clear()
        attn_inputs.clear()
        out = model(
            input_ids=batch["input_ids"],
            pixel_values=batch["pixel_values"],
            image_sizes=batch["image_sizes"],
            attention_mask=mask,
            position_ids=pos,
            labels=batch["labels"],
        )
        counts = [num_tiles(int(h), int(w), geom) for h, w in batch["image_sizes"].tolist()]
        starts = torch.tensor([0, *counts[:-1]]).cumsum(0)
        base = captured[0][starts]  # (images, g*g, D)
        place = F.mse_loss(head(base), targets.expand(base.shape[0], -1, -1))
        loss = out.loss + args.place_weight * place
        dec_place = dec_base = torch.zeros(())
        if args.decoder_place:
            image = batch["input_ids"] == model.config.image_token_id  # (B, T)
            want = torch.full((b, t, 2), float("nan"))
            base_tok = torch.zeros(b, t, dtype=torch.bool)
            for j, (h, w) in enumerate(batch["image_sizes"].tolist()):
                key = (int(h), int(w))
                if key not in places:
                    places[key] = token_places(*key, proc)
                idx = image[j].nonzero()[:, 0]
                want[j, idx] = places[key]
                base_tok[j, idx[: grid * grid]] = True
            ok = ~want[..., 0].isnan()
            err = (dec_head(hidden[args.decoder_place_layer][ok]) - want[ok]).pow(2).mean(-1)  # (tokens,)
            dec_place = err.mean()
            dec_base = err[base_tok[ok]].mean()
            loss = loss + args.decoder_place * dec_place
        queries = None
        if args.answer_query == "kind":
            kinds = [named.kind(i) for i in rows]
            queries = kind_positions(batch["input_ids"], batch["labels"], [kind_token.get(k) for k in kinds])
        ans_place = torch.zeros(())
        if args.answer_place:
            centres = [named.centre(i) for i in rows]
            has = [j for j, c in enumerate(centres) if c is not None and (queries is None or queries[j] is not None)]
            if has:
                at = [
                    int((batch["labels"][j] != -100).nonzero()[0, 0]) - 1 if queries is None else queries[j]
                    for j in has
                ]
                got = ans_head(hidden[args.answer_place_layer][has, at])  # (rows, 2)
                ans_place = F.mse_loss(got, torch.tensor([centres[j] for j in has]))
                loss = loss + args.answer_place * ans_place
        fin_place = fin_mass = torch.zeros(())
        if args.final_place or args.final_ground:
            has = [j for j in range(b) if queries[j] is not None and named.centre(rows[j]) is not None]
            if has and args.final_place:
                at = [int((batch["labels"][j] != -100).nonzero()[0, 0]) - 1 for j in has]
                got = fin_head(hidden[args.final_place_layer % len(layers)][has, at])
                fin_place = F.mse_loss(got, torch.tensor([named.centre(rows[j]) for j in has]))
                loss = loss + args.final_place * fin_place
            if has and args.final_ground:
                word = torch.zeros(b, t, dtype=torch.bool)
                for j in has:
                    word[j, queries[j]] = True
                logm = answer_log_mass(attn_inputs, batch["labels"], word, has)[:, args.final_place_layer]
                loss = loss - args.final_ground * logm.mean()
                fin_mass = logm.exp().mean()
        mass = torch.zeros(())
        if args.answer_ground:
            visible = (batch["input_ids"] == model.config.image_token_id) & mask.bool()
            if views is not None:
                visible = image_flags(batch["input_ids"], model.config.image_token_id, [named(i) for i in rows])
                visible &= mask.bool()  # a target hidden this step (--tile-drop with named-tiles) is no target
            has = visible.any(1).nonzero()[:, 0].tolist()  # rows with a target
            if queries is not None:
                has = [j for j in has if queries[j] is not None]
            if has:
                logm = answer_log_mass(attn_inputs, batch["labels"], visible, has, args.answer_heads == "all", queries)
                if args.answer_layers:
                    logm = logm[:, args.answer_layers]
                loss = loss - args.answer_ground * logm.mean()
                mass = logm.exp().mean()
        if grounding:
            pick = torch.randint(len(grounding), (args.ground_batch,), generator=g_rng).tolist()
            logm = torch.stack([layer0_log_mass(model, grounding[i]).max() for i in pick])
            loss = loss - args.ground_weight * logm.mean()
            mass = logm.exp().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
        opt.step()
        log.append({"step": step, "lm": round(out.loss.item(), 4), "place": round(place.item(), 4)})
        if grounding or args.answer_ground:
            log[-1]["mass"] = round(mass.item(), 4)
        if args.answer_place:
            log[-1]["answer_place"] = round(ans_place.item(), 4)
        if args.final_place or args.final_ground:
            log[-1]["final_place"] = round(fin_place.item(), 4)
            log[-1]["final_mass"] = round(fin_mass.item(), 4)
        if args.decoder_place:
            log[-1]["decoder_place"] = round(dec_place.item(), 4)
            log[-1]["decoder_place_base"] = round(dec_base.item(), 4)
        if step % 50 == 0 or step == steps - 1:
            el = time.perf_counter() - t0
            print(f"step {step}/{steps} lm {out.loss.item():.3f} place {place.item():.3f} mass {mass.item():.3f} "
                  f"decoder place {dec_place.item():.3f} (base {dec_base.item():.3f}) answer place "
                  f"{ans_place.item():.3f} final {fin_place.item():.3f} / {fin_mass.item():.3f} {el:.0f}s",
                  flush=True)  # fmt: skip
    del model.tile_features
    model.eval()
    out_dir = Path(args.out)
    model.save_pretrained(out_dir)
    proc.save_pretrained(out_dir)
    (out_dir / "place_pass.json").write_text(json.dumps({"args": vars(args), "log": log}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
