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

Conversations that start with a reading question ("What number is written in the image?") pull the query of each
answer token onto the glyphs it writes (``llavakit.train.reading``, ``read_mass``, layer 1). With ``attributes``,
conversations that start with a colour or shape question ("What color is the star?", "What shape is the red
object?") gather the named shape at its naming word as position questions do, and its colour and kind are read
there (``kind_attr``) and, with ``final``, at the answer (``final_attr``). The recipe's ``--bind-pass 1`` runs its
first pass on 1-8 shapes this way: on a stage 0 where the plain pass left colour unbound, colour then bound to the
named shape of several (docs/default-model.md, "Binding the named shape's colour on any stage 0").

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

import torch
import torch.nn.functional as F

from ..data.synth import read_scenes
from ..data.synth_scene import COLORS, KINDS
from ..model.llava import LlavaModel, positions_from_mask
from ..processing.anyres import num_tiles
from ..processing.processor import LlavaProcessor
from .attention_pull import answer_queries, attention_cross_entropy, attention_log_mass, kind_positions
from .collate import collate
from .count import KIND_OF_PLURAL, MAX_COUNTED, count_attention
from .foreground import drop_probability, hide_background
from .mixture import build_dataset
from .named import Named
from .reading import answer_spans, box_tokens, glyph_box
from .stages import StageSpec, apply_stage


def grid_places(grid: int) -> torch.Tensor:
    """(grid * grid, 2) the (x, y) of each token of a row-major grid, in [-1, 1]: token 7 of a 5 x 5 grid is row 1,
    column 2 -> (0.0, -0.5)."""
    idx = torch.arange(grid * grid)
    return torch.stack([idx % grid, idx // grid], 1).float() / max(1, grid - 1) * 2 - 1


def by_length(order: list[int], lengths: list[int], batch: int, groups: int, rng: random.Random) -> list[int]:
    """``order`` cut into runs of ``groups`` batches; within each run the items sorted by ``lengths``, cut into
    batches again and the batches shuffled: each batch pads to a length near its own. Worked example: order [0, 1,
    2, 3], lengths [5, 90, 7, 80], batch 2, groups 2 -> batches {0, 2} and {3, 1} in some order."""
    out: list[int] = []
    run = batch * groups
    for k in range(0, len(order), run):
        items = sorted(order[k : k + run], key=lengths.__getitem__)
        batches = [items[b : b + batch] for b in range(0, len(items), batch)]
        full = [x for x in batches if len(x) == batch]
        rng.shuffle(full)
        out += [i for x in full + [x for x in batches if len(x) < batch] for i in x]
    return out


def place_pass(
    init: str | Path,
    data: list[str | Path],
    out: str | Path,
    *,
    final: bool,
    attributes: bool = False,
    read_head: bool = False,
    drop: tuple[float, float] | None = None,
    batch: int = 16,
    lr: float = 1e-3,
    projector_lr: float = 2e-3,
    seed: int = 0,
    length_groups: int = 1,
    log: Callable[[str], None] = print,
) -> list[float]:
    """One place pass from checkpoint ``init`` over the conversations of ``data`` (several directories: their
    mixture; one given twice is seen twice), projector and decoder trained at stage 2's rates (5% linear warm-up,
    then cosine); writes a checkpoint to ``out`` and returns the language loss of every step.

    ``final``: the answer's losses too (the second pass). ``attributes``: colour and shape questions name a shape
    too, and every named shape's colour and kind are read at its naming word (with ``final``, at the answer).
    ``read_head``: reading conversations read each answer token from layer 1's output at its query too. ``drop``:
    background image tokens hidden with a probability going from drop[0] to drop[1] over the pass.
    ``length_groups`` > 1: the shuffled order is cut into runs of that many batches and each run regrouped by length
    (``by_length``), which pads less (1: the shuffled order as it is)."""
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
    ds = build_dataset(spec, proc, proc.template, 1024, foreground=drop is not None)  # the flags serve only drop
    named = Named(proc, dirs, ds, scenes, attributes=attributes)
    if not named.count():
        raise ValueError(
            f"no conversation in {dirs} starts with a position question about a single shape, a count question or "
            "a reading question; the place passes need such data (write_dataset(..., qtypes=('position',)), "
            "qtypes=('count',) or qtypes=('reading',))"
        )
    groups = apply_stage(model, StageSpec(name="stage2", lr=lr, projector_lr=projector_lr))
    d = model.config.text.hidden_size
    heads = {k: torch.nn.Linear(d, 2) for k in ("place", "decoder", "kind_place", "final_place")}
    groups.append({"name": "place_head", "params": list(heads["place"].parameters()), "lr": projector_lr})
    heads |= {k: torch.nn.Linear(d, MAX_COUNTED + 1) for k in ("count_word", "final_count")}  # classes 0..8
    heads |= {k: torch.nn.Linear(d, len(COLORS)) for k in ("color", "final_color")}  # the named shape's colour
    heads |= {k: torch.nn.Linear(d, len(KINDS)) for k in ("kind", "final_kind")}  # and its kind
    heads["read_token"] = torch.nn.Linear(d, model.config.text.vocab_size)  # the answer token, at its query
    for k in [k for k in heads if k != "place"]:
        groups.append({"name": f"{k}_head", "params": list(heads[k].parameters()), "lr": lr})
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    base_lrs = [g["lr"] for g in opt.param_groups]
    order = list(range(len(ds)))
    rng = random.Random(seed)
    rng.shuffle(order)
    if length_groups > 1:  # runs of batches cut from the shuffled order, each run's batches of similar lengths
        order = by_length(order, named.lengths(), batch, length_groups, rng)
    steps = len(order) // batch
    if steps < 1:
        raise ValueError(f"{len(ds)} conversations in {dirs}: fewer than one batch of {batch}")
    warm = max(1, int(0.05 * steps))
    grid = model.config.vision.image_size // model.config.vision.patch_size
    base_targets = grid_places(grid)  # (g*g, 2)
    image_id = model.config.image_token_id
    name_token = {k: proc.tokenizer.encode(" " + k, add_special_tokens=False)[-1] for k in (*KINDS, *COLORS)}
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
        words = kind_positions(b_["input_ids"], b_["labels"], [name_token[x[1]] if x else None for x in info])
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
            if attributes:  # the named shape's colour and kind read at the word (and with final, at the answer)
                col = torch.tensor([list(COLORS).index(info[j][3].color) for j in has])
                kin = torch.tensor([KINDS.index(info[j][3].kind) for j in has])
                hw = hidden[1][has, [words[j] for j in has]]
                losses["kind_attr"] = F.cross_entropy(heads["color"](hw), col) + F.cross_entropy(heads["kind"](hw), kin)
                if final:
                    ha = hidden[last][has, answer_queries(b_["labels"], has)]
                    losses["final_attr"] = F.cross_entropy(heads["final_color"](ha), col) + F.cross_entropy(
                        heads["final_kind"](ha), kin
                    )
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
        # the text a reading question asks for: the query of each answer token pulled onto the glyphs it writes
        rinfo = [named.reading(i) for i in rows]
        rrows = [j for j in range(b) if rinfo[j] is not None]
        pulls, read_at = [], []
        for j in rrows:
            scene, text = rinfo[j]
            at = (b_["labels"][j] != -100).nonzero()[:, 0]
            breaks = (at.diff() != 1).nonzero()[:, 0]
            answer = at[: int(breaks[0]) + 1] if len(breaks) else at  # the first answer's positions
            pieces = [proc.tokenizer.decode([int(x)]) for x in b_["input_ids"][j, answer]]
            places = named.places(scene.height, scene.width)
            at_image = image[j].nonzero()[:, 0]
            for pos, span in zip(answer.tolist(), answer_spans(pieces, text.value)):
                if span is None:
                    continue
                box = glyph_box(text, *span)
                target = torch.zeros(b, t, dtype=torch.bool)
                target[j, at_image[box_tokens(box, scene.width, scene.height, places, grid * grid)]] = True
                target &= mask.bool()
                if target[j].any():
                    pulls.append(attention_log_mass(attn_inputs[1:2], {j: pos - 1}, target, every_head=True)[0, 0])
                    read_at.append((j, pos))
        named_rows += len({j for j, _ in read_at})
        if pulls:
            losses["read_mass"] = -torch.stack(pulls).mean()
            if read_head:  # each answer token read from layer 1's output at its query
                rj, rp = zip(*read_at)
                hq = hidden[1][list(rj), [p_ - 1 for p_ in rp]]
                losses["read_token"] = F.cross_entropy(heads["read_token"](hq), b_["input_ids"][list(rj), list(rp)])
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
            f"the named kinds' and counted plurals' words, and the reading answers' glyphs, were never found in {dirs} "
            f"(tokenizer of {init}: {sorted((name_token | word_token).items())}); nothing but the language and place "
            "losses trained, so nothing is saved"
        )
    del model.tile_features
    model.eval()
    model.save_pretrained(out)
    proc.save_pretrained(out)
    marker = {"init": str(init), "data": dirs, "final": final, "attributes": attributes, "drop": drop}
    marker |= {"read_head": read_head, "length_groups": length_groups}
    marker |= {"steps": steps, "loss": history}
    (Path(out) / "place.json").write_text(json.dumps(marker) + "\n")  # written last: the pass finished
    return history
