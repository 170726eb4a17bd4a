"""Can a decoder of the stage-0 shape say where a named object is? For recipe developers.

    python scripts/probe_place.py                      # the place from RoPE alone: tokens in grid order
    python scripts/probe_place.py --feat               # each token also carries its column's and row's rows
    python scripts/probe_place.py --feat --ramp 600    # ... and the empty cells grow from none over 600 steps
    python scripts/probe_place.py --feat --ramp 600 --tiles 2 [--tile-ramp 1200]   # the AnyRes layout

"Is the star on the left or the right?" asks the decoder to find the named object's token and read out its place.
This probe trains the stage-0 recipe's decoder (from scratch, with the recipe's initialisation, as
``probe_count.py`` does) on that alone:

    <s> USER: CELL CELL CELL CELL CELL NL CELL ... NL \\n Is the KIND on the left or right ? ASSISTANT: left

``--rows`` x ``--cols`` cells in row-major order with a newline token after each row, as the AnyRes grid's image
tokens are packed; 1-8 cells hold an object (its kind's row plus its colour's), the others the background row. The
object asked about is alone of its kind and not in the middle row or column; left/right and top/bottom questions
come half and half. Without ``--feat`` the place is only in the token's position in the sequence (RoPE); with it
every cell adds a row naming its column and one naming its row (the ideal of tower features that keep the place).
``--tiles 2`` lays the scene out as AnyRes does: the base view (the place in the scene), then 2 x 2 tiles (the
place within a tile), see ``make_question``; ``--tile-ramp N`` leaves out each tile cell with a probability
falling from 1 to 0 over the first N steps (the base view alone at first). ``--ramp N`` leaves out each empty cell
with a probability falling from 1 to 0 over the first N steps (with
``--feat`` only: without, leaving cells out would move the others). AdamW, a 50-step warm-up then ``--lr``,
batches of 32, 600 held-out questions scored per axis; the last line is one JSON object. See
docs/default-model.md, "Where an object is, in isolation".
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from llavakit.data.synth_scene import COLORS, KINDS
from llavakit.model.text import CausalLM
from llavakit.train.stage0.run import Stage0Recipe, load_stage0_recipe

sys.path.insert(0, str(Path(__file__).resolve().parent))  # probe_count.py, beside this file
from probe_count import RECIPE, Example, batch, fresh_decoder, logits_at, optimise  # noqa: E402

MAX_SIDE = 12  # rows and columns, up to
WORDS = ["<pad>", "<s>", "</s>", "USER:", "ASSISTANT:", "\n", "BACKGROUND", "NL", "Is", "the", "on", "or", "?"]
WORDS += ["left", "right", "top", "bottom", *KINDS, *COLORS]
WORDS += [f"C{i}" for i in range(MAX_SIDE)] + [f"R{i}" for i in range(MAX_SIDE)]
ID = {w: i for i, w in enumerate(WORDS)}
AXES = {"lr": ("left", "right"), "tb": ("top", "bottom")}


@dataclass
class Grid:
    rows: int = 5
    cols: int = 5
    feat: bool = False  # each cell adds its column's and its row's embedding rows
    tiles: int = 1  # 2: a base view, then 2 x 2 tiles of rows x cols cells (the AnyRes layout)
    base_noise: float = 0.0  # with tiles = 2: each base cell with an object shows another kind with this probability


@dataclass
class Question:
    example: Example  # the prompt (its ``count`` unused)
    answer: str  # left / right / top / bottom
    axis: str  # "lr" or "tb"


def make_question(rng: random.Random, grid: Grid, drop: float = 0.0, tile_drop: float = 0.0) -> Question:
    """One question about a scene of 1-8 objects; each empty cell is left out with probability ``drop``.

    With ``grid.tiles`` = 2 the objects lie on a grid of 2 x 2 tiles of ``rows`` x ``cols`` cells (rows of
    2 * ``cols`` cells, a newline after each), preceded by the base view: ``rows`` x ``cols`` cells, no newlines,
    cell (r // 2, c // 2) showing an object of its block of 2 x 2 (the last drawn). With ``grid.feat`` a base cell
    names its place in the scene and a tile cell its place within its tile (the same C/R rows, as the tower's
    position embeddings are shared by the base view and the tiles). The object asked about is not in the base
    view's middle column (row), as the synthetic questions skip shapes within 10% of the centre. Each tile cell,
    object or not, is left out with probability ``tile_drop``; a base cell with an object shows another kind with
    probability ``grid.base_noise`` (the tower names a kind less well in the squashed whole view). When two
    objects share a block, the one asked about may be missing from the base view (~5% of questions on 5 x 5).
    Worked example, ``Grid(5, 5, feat=True, tiles=2)``: an object at row 7, column 3 of the 10 x 10 grid is on the
    left, shows in base cell (3, 1) with rows C1 R3, and in its tile with C3 R2.
    """
    t = grid.tiles
    while True:
        n = rng.randint(1, 8)
        cells = rng.sample([(r, c) for r in range(grid.rows * t) for c in range(grid.cols * t)], n)
        kinds = [rng.choice(KINDS) for _ in range(n)]
        axis = rng.choice(list(AXES))
        side, mid = (grid.cols, 1) if axis == "lr" else (grid.rows, 0)  # in base cells (= tiles' cells)
        fit = [i for i in range(n) if kinds.count(kinds[i]) == 1 and not (side % 2 and cells[i][mid] // t == side // 2)]
        if fit:
            break
    i = rng.choice(fit)
    answer = AXES[axis][0] if cells[i][mid] < side * t / 2 else AXES[axis][1]
    colours: dict[int, str] = {}  # drawn at each showing, the first kept (tiles = 1: the draws as they were)
    ids, extra = [ID["<s>"], ID["USER:"]], [(), ()]

    def cell(j: int | None, place: tuple[int, ...], p: float, noise: float = 0.0) -> None:
        if j is not None:
            misread = noise and rng.random() < noise
            ids.append(ID[rng.choice([k for k in KINDS if k != kinds[j]]) if misread else kinds[j]])
            extra.append((ID[colours.setdefault(j, rng.choice(list(COLORS)))], *place))
        elif not (drop and rng.random() < drop) and not (p and rng.random() < p):
            ids.append(ID["BACKGROUND"])
            extra.append(place)

    def named(r: int, c: int) -> tuple[int, ...]:
        return (ID[f"C{c}"], ID[f"R{r}"]) if grid.feat else ()

    if t > 1:  # the base view: the whole scene at one tile's resolution
        base = {(r // t, c // t): j for j, (r, c) in enumerate(cells)}
        for r in range(grid.rows):
            for c in range(grid.cols):
                cell(base.get((r, c)), named(r, c), 0.0, grid.base_noise)
    at = {where: j for j, where in enumerate(cells)}
    for r in range(grid.rows * t):
        for c in range(grid.cols * t):
            j = at.get((r, c))
            if j is not None and tile_drop and rng.random() < tile_drop:
                continue
            cell(j, named(r % grid.rows, c % grid.cols), tile_drop)
        ids.append(ID["NL"])
        extra.append(())
    tail = ["\n", "Is", "the", kinds[i], "on", "the", AXES[axis][0], "or", AXES[axis][1], "?", "ASSISTANT:"]
    ids += [ID[w] for w in tail]
    extra += [()] * len(tail)
    return Question(Example(ids, extra, 0), answer, axis)


def accuracy(model: CausalLM, held_out: list[Question]) -> dict[str, float]:
    """Held-out accuracy per axis."""
    model.eval()
    with torch.no_grad():
        x, _, last = batch(model.model.embed_tokens, [q.example for q in held_out])
        pred = logits_at(model, x, last).argmax(-1).tolist()
    model.train()
    out = {}
    for axis in AXES:
        mine = [(p, q) for p, q in zip(pred, held_out) if q.axis == axis]
        out[axis] = sum(p == ID[q.answer] for p, q in mine) / len(mine)
    return out


def train(
    recipe: Stage0Recipe,
    grid: Grid,
    steps: int,
    lr: float,
    ramp: int = 0,
    seed: int = 0,
    every: int = 250,
    log=print,
    tile_ramp: int = 0,
) -> dict:
    """A fresh decoder of the recipe's shape trained ``steps`` batches of 32; its held-out accuracy per axis."""
    model, opt = fresh_decoder(recipe, seed, ID)
    rng = random.Random(seed)
    held_out = [make_question(random.Random(10**6 + i), grid) for i in range(600)]
    curve = []
    for step in range(steps):
        drop = max(0.0, 1 - step / ramp) if ramp else 0.0
        tile_drop = max(0.0, 1 - step / tile_ramp) if tile_ramp else 0.0
        qs = [make_question(rng, grid, drop, tile_drop) for _ in range(32)]
        x, _, last = batch(model.model.embed_tokens, [q.example for q in qs])
        loss = F.cross_entropy(logits_at(model, x, last), torch.tensor([ID[q.answer] for q in qs]))
        optimise(model, opt, loss, lr, step)
        if every and (step + 1) % every == 0:
            acc = accuracy(model, held_out)
            curve.append([step + 1, acc])
            log(f"step {step + 1}: loss {loss.item():.3f}, held out {acc}")
    return {"accuracy": accuracy(model, held_out), "curve": curve}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", default=str(RECIPE), help="stage-0 recipe whose decoder shape is probed")
    ap.add_argument("--rows", type=int, default=5)
    ap.add_argument("--cols", type=int, default=5)
    ap.add_argument("--feat", action="store_true", help="each cell also carries its column's and row's rows")
    ap.add_argument("--ramp", type=int, default=0, help="steps over which the empty cells grow from none (--feat)")
    ap.add_argument("--tiles", type=int, choices=(1, 2), default=1, help="2: a base view, then 2 x 2 tiles")
    ap.add_argument("--base-noise", type=float, default=0.0, help="--tiles 2: base cells misread their kind")
    ap.add_argument("--tile-ramp", type=int, default=0, help="steps over which the tile cells grow from none")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--every", type=int, default=250, help="held-out accuracy every N steps (0: at the end only)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("overrides", nargs="*", help="recipe overrides, e.g. decoder.num_hidden_layers=4")
    args = ap.parse_args()
    if not (2 <= args.rows <= MAX_SIDE and 2 <= args.cols <= MAX_SIDE and args.rows * args.cols >= 8):
        ap.error(f"--rows and --cols must be in 2..{MAX_SIDE} with room for 8 objects, got {args.rows} x {args.cols}")
    if args.ramp and not args.feat:
        ap.error("--ramp needs --feat: without it the place is the position in the sequence, which dropped cells move")
    if args.base_noise and args.tiles == 1:
        ap.error("--base-noise needs --tiles 2: it misreads the base view's cells")
    if args.tile_ramp and (args.tiles == 1 or not args.feat):
        ap.error("--tile-ramp needs --tiles 2 and --feat: the place must be in the base view's cells")
    if args.threads:
        torch.set_num_threads(args.threads)
    grid = Grid(args.rows, args.cols, args.feat, args.tiles, args.base_noise)
    recipe = load_stage0_recipe(args.recipe, args.overrides)
    print(f"{grid}, ramp {args.ramp}, tile ramp {args.tile_ramp}, lr {args.lr}, {args.steps} steps of 32")
    print(f"decoder {recipe.decoder}")
    t = time.perf_counter()
    result = train(recipe, grid, args.steps, args.lr, args.ramp, args.seed, args.every, tile_ramp=args.tile_ramp)
    print(f"held out {result['accuracy']} (chance 0.5); {time.perf_counter() - t:.0f} s")
    setup = {"grid": vars(grid), "ramp": args.ramp, "tile_ramp": args.tile_ramp, "lr": args.lr, "steps": args.steps}
    print(json.dumps({**setup, **result}))


if __name__ == "__main__":
    main()
