"""Does a vision tower see shape? A linear probe on its patch features, for recipe developers.

    python scripts/probe_tower.py runs/tiny-synth/stage0/vision_tower [--scenes 1500] [--steps 500]

Renders one-shape synthetic scenes (seeded, of the sizes the stage-0 recipe trains on), cuts them into the AnyRes
tiles the LLaVA model sees (the recipe's pinpoints), keeps each tile that holds the shape's centre, and fits a
linear classifier of the shape's kind (7 kinds, chance 14%) on the tower's layer -2 patch features (what the
projector reads): mean-pooled, max-pooled and all patches flattened, beside one on the raw pixels. It prints train /
held-out accuracy of each; only the held-out figure says anything. A tower whose held-out accuracy sits near chance
gives stage 2 nothing to answer shape questions (or the position, count and existence questions that name a shape)
from.

With ``--per-patch`` it also probes single patches of scenes with 1-8 shapes and text (whole views, AnyRes tiles,
text crops, labelled by ``patch_labels``): the kind, the colour and the text (word or digit) of each patch that
shows one, which is what a question naming one object among several needs. ``--full-view`` probes the whole
views alone: the only view in which a patch's place is the object's place in the scene. Its scenes carry no
text (a text crop would be a view of its own), so they are drawn otherwise than the default run's.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from llavakit.data.synth import render_scene
from llavakit.data.synth_scene import KINDS, Scene, generate_scene, scene_seed
from llavakit.train.stage0.clip import load_vision_tower
from llavakit.train.stage0.patch_labels import NO_COLOUR, NO_KIND, NO_TEXT
from llavakit.train.stage0.run import Stage0Recipe, load_stage0_recipe
from llavakit.train.stage0.views import build_pairs, tile_views

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "tiny-synth-stage0.yaml"


def one_shape_scene(seed: int, i: int, recipe: Stage0Recipe) -> Scene:
    """Scene ``i`` of the probe's set ``seed``: one shape, no text, sized as ``recipe`` trains."""
    s = recipe.scenes
    return generate_scene(scene_seed(seed, i), text_prob=0.0, min_side=s.min_side, max_side=s.max_side, max_shapes=1)


def tiles(n: int, seed: int, recipe: Stage0Recipe, tile: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, S, S) tiles holding the centre of their scene's only shape, and that shape's kind index (N,)."""
    views, kinds = [], []
    for i in range(n):
        scene = one_shape_scene(seed, i, recipe)
        for view in tile_views(render_scene(scene), scene, tile, recipe.vision.image_grid_pinpoints):
            if view.text.startswith("a "):  # the tile that holds the shape (the others are "an empty background")
                views.append(view.pixels)
                kinds.append(KINDS.index(scene.shapes[0].kind))
    return torch.stack(views), torch.tensor(kinds)


def probe(
    train: torch.Tensor,
    y_train: torch.Tensor,
    test: torch.Tensor,
    y_test: torch.Tensor,
    steps: int,
    classes: int = len(KINDS),
) -> tuple[float, float]:
    """Train / held-out accuracy of an L2-regularised linear classifier on standardised features (N, F)."""
    mu, sd = train.mean(0), train.std(0) + 1e-5
    train, test = (train - mu) / sd, (test - mu) / sd
    w = torch.zeros(train.shape[1], classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=1e-2)
    for _ in range(steps):
        loss = F.cross_entropy(train @ w + b, y_train) + 1e-3 * (w**2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc_train, acc_test = (
            ((x @ w + b).argmax(1) == y).float().mean().item() for x, y in ((train, y_train), (test, y_test))
        )
    return acc_train, acc_test


def patch_probes(
    tower: torch.nn.Module, n: int, recipe: Stage0Recipe, steps: int, full_only: bool = False
) -> dict[str, tuple[float, float, int]]:
    """Per-patch linear probes on scenes of 1-8 shapes: for "kind", "colour" and "text", the train / held-out
    accuracy on the patches that show one (``patch_labels``) and how many held-out patches that was. With
    ``full_only`` the scenes carry no text and only their whole view is probed (the one view that places an object
    in the scene; the text probe then has no patches)."""
    s, v = recipe.scenes, recipe.vision
    sets = []
    text = {"text_prob": 0.0} if full_only else {}
    for seed, count in ((1, n), (2, max(1, n // 4))):
        scenes = [
            generate_scene(scene_seed(seed, i), min_side=s.min_side, max_side=s.max_side, **text) for i in range(count)
        ]
        views, _, labels = build_pairs(scenes, v.image_size, v.patch_size, v.image_grid_pinpoints, seed, not full_only)
        with torch.no_grad():
            feats = torch.cat([tower(x, [-2])[:, 1:] for x in views.split(256)])  # (N, g*g, D)
        sets.append((feats.flatten(0, 1), labels.transpose(1, 2).flatten(0, 1)))  # (N*g*g, D), (N*g*g, 3)
    (f_train, l_train), (f_test, l_test) = sets
    out = {}
    for row, (name, none) in enumerate((("kind", NO_KIND), ("colour", NO_COLOUR), ("text", NO_TEXT))):
        on_train, on_test = l_train[:, row] != none, l_test[:, row] != none
        if not on_test.any() or not on_train.any():
            continue
        y_train, y_test = l_train[on_train, row], l_test[on_test, row]
        acc = probe(f_train[on_train], y_train, f_test[on_test], y_test, steps, classes=none)
        out[name] = (*acc, int(on_test.sum()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tower", help="a CLIPVisionModel directory (stage 0 writes OUTPUT_DIR/vision_tower)")
    ap.add_argument("--scenes", type=int, default=1500, help="training scenes (held out: a quarter as many)")
    ap.add_argument("--steps", type=int, default=500, help="probe optimisation steps")
    ap.add_argument("--recipe", default=str(RECIPE), help="stage-0 recipe: scene sizes and AnyRes pinpoints")
    ap.add_argument("--per-patch", action="store_true", help="also probe single patches of multi-shape scenes")
    ap.add_argument("--full-view", action="store_true", help="with --per-patch: the whole views only, no text")
    a = ap.parse_args()
    if a.full_view and not a.per_patch:
        ap.error("--full-view selects the views of the --per-patch probes: pass --per-patch too")
    torch.manual_seed(0)
    if not (Path(a.tower) / "config.json").is_file():
        ap.exit(2, f"error: {a.tower} is not a vision tower directory (no config.json); pass OUTPUT_DIR/vision_tower\n")
    try:
        tower = load_vision_tower(a.tower)
        recipe = load_stage0_recipe(a.recipe)
    except (OSError, ValueError) as e:
        ap.exit(2, f"error: {e}\n")
    tile = tower.config.image_size
    t0 = time.perf_counter()
    x_train, y_train = tiles(a.scenes, 1, recipe, tile)
    x_test, y_test = tiles(max(1, a.scenes // 4), 2, recipe, tile)
    with torch.no_grad():
        f_train = torch.cat([tower(x, [-2])[:, 1:] for x in x_train.split(256)])  # (N, g*g, D)
        f_test = torch.cat([tower(x, [-2])[:, 1:] for x in x_test.split(256)])
    print(f"{len(x_train)} / {len(x_test)} one-shape tiles of {tile} px; chance {1 / len(KINDS):.2f}")
    for name, tr, te in (
        ("patch features, mean", f_train.mean(1), f_test.mean(1)),
        ("patch features, max", f_train.amax(1), f_test.amax(1)),
        ("patch features, all", f_train.flatten(1), f_test.flatten(1)),
        ("raw pixels", x_train.flatten(1), x_test.flatten(1)),
    ):
        acc_train, acc_test = probe(tr, y_train, te, y_test, a.steps)
        print(f"{name:22s} train {acc_train:.2f}  held out {acc_test:.2f}")
    if a.per_patch:
        for name, (acc_train, acc_test, n) in patch_probes(tower, a.scenes // 3, recipe, a.steps, a.full_view).items():
            print(f"per patch, {name:11s} train {acc_train:.2f}  held out {acc_test:.2f}  ({n} held-out patches)")
    print(f"({time.perf_counter() - t0:.0f}s)")


if __name__ == "__main__":
    main()
