"""Can a decoder of the stage-0 shape learn to look one object up among several? For recipe developers.

    python scripts/probe_lookup.py [--init-std 0.02 0.07] [--steps 300] [--task fused|pairs|scene] [--reference]
    python scripts/probe_lookup.py --task scene --background 60 [--ramp 400] --steps 600

Binding ("What color is the star?" in a scene of several shapes) asks the decoder to carry the kind named in the
question to the answer position, find the context position that shows that kind and read its colour there. This
probe trains the stage-0 recipe's decoder (its layers, width and heads, from scratch) on exactly that, with no
vision tower and no projector, so that a decoder shape or an initialisation can be judged in a minute instead of a
whole recipe run. Each example is

    <s> USER: ITEM ITEM ... \\n What color is the KIND ? ASSISTANT: COLOUR </s>

with 1-7 items of distinct kinds and random colours, the loss on the answer only (as stage 2 trains). In the
``fused`` task an item is ONE position whose input embedding is the sum of the kind's and the colour's word
embeddings: what an image token of a patch showing a red star offers the decoder. In ``pairs`` it is two words
("red star", as a caption writes it), which needs one more step (the colour must first be copied onto the kind's
position). The vocabulary is these few words, not a trained tokenizer.

It prints held-out accuracy by number of items beside a blind pick among the colours present (what a model that
knows which colours are in the scene, but not which object has which, gets); ``--reference`` trains transformers'
``LlamaForCausalLM`` of the same config from the same weights beside ours. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from llavakit.data.synth_scene import COLORS, KINDS
from llavakit.model.text import CausalLM
from llavakit.train.stage0.lm import LMTrainConfig, init_weights
from llavakit.train.stage0.run import Stage0Recipe, load_stage0_recipe, text_config
from llavakit.train.stage0.steps import run_steps

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "tiny-synth-stage0.yaml"
WORDS = ["<pad>", "<s>", "</s>", "USER:", "ASSISTANT:", "\n", "What", "color", "is", "the", "?", *KINDS, *COLORS]
ID = {w: i for i, w in enumerate(WORDS)}
# ``scene``: an object position's kind and colour and the background come from these rows, not the words' rows
VISUAL_KIND, VISUAL_COLOUR, VISUAL_BACKGROUND = 100, 200, 300


@dataclass
class SceneOptions:
    span: int = 4  # positions per object
    kind_noise: float = 0.15  # chance that a position shows another kind
    background: int = 60  # background positions shuffled in


BUCKETS = {"1": (1, 1), "2-3": (2, 3), "4-7": (4, 7)}


@dataclass
class Example:
    items: list[tuple[int, int]]  # (kind id, colour id) per object, in context order
    asked: int  # the index of the item the question names

    @property
    def answer(self) -> int:
        return self.items[self.asked][1]

    def words(self, task: str, scene: SceneOptions | None = None) -> tuple[list[int], list[int]]:
        """(ids, colour ids added on top): ids are the input tokens; for ``fused`` each item is its kind's id
        with its colour's id returned in the second list at the same position (-1 elsewhere); ``scene`` the same
        over visual rows, ``scene.span`` noisy positions per item and background positions, shuffled (the same
        way for the same example)."""
        head = [ID["<s>"], ID["USER:"]]
        if task == "fused":
            body = [k for k, _ in self.items]
            extra = [-1] * len(head) + [c for _, c in self.items]
        elif task == "scene":
            scene = scene or SceneOptions()
            rng = random.Random(hash((tuple(self.items), self.asked)))  # ints only: the same in every process
            kinds = [ID[k] for k in KINDS]
            spots = [(VISUAL_BACKGROUND, -1)] * scene.background
            for k, c in self.items:
                for _ in range(scene.span):
                    shown = k if rng.random() >= scene.kind_noise else rng.choice([x for x in kinds if x != k])
                    spots.append((shown - ID[KINDS[0]] + VISUAL_KIND, c - ID[next(iter(COLORS))] + VISUAL_COLOUR))
            rng.shuffle(spots)
            body = [k for k, _ in spots]
            extra = [-1] * len(head) + [c for _, c in spots]
        else:
            body = [t for k, c in self.items for t in (c, k)]
            extra = [-1] * (len(head) + len(body))
        q = [ID[w] for w in ("\n", "What", "color", "is", "the")] + [self.items[self.asked][0]]
        q += [ID["?"], ID["ASSISTANT:"]]
        ids = head + body + q
        return ids, extra + [-1] * len(q)


def make_example(rng: random.Random) -> Example:
    n = rng.randint(1, len(KINDS))
    kinds = rng.sample(KINDS, n)
    return Example([(ID[k], ID[rng.choice(list(COLORS))]) for k in kinds], rng.randrange(n))


def blind_pick(ex: Example) -> float:
    """Chance of a pick among the distinct colours of the scene."""
    return 1.0 / len({c for _, c in ex.items})


def batch(
    embed: nn.Embedding, examples: list[Example], task: str, scene: SceneOptions | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, D) input embeddings (right-padded) and (B, T) targets: the answer at the last prompt position, then
    ``</s>``; -100 elsewhere."""
    rows, targets = [], []
    for ex in examples:
        ids, extra = ex.words(task, scene)
        full = ids + [ex.answer]
        x = embed(torch.tensor(full))  # (T, D)
        on = torch.tensor([i for i, e in enumerate(extra) if e >= 0], dtype=torch.long)
        if len(on):
            x = x.index_add(0, on, embed(torch.tensor([e for e in extra if e >= 0])))
        y = torch.full((len(full),), -100)
        y[len(ids) - 1] = ex.answer
        y[len(ids)] = ID["</s>"]
        rows.append(x)
        targets.append(y)
    t = max(len(r) for r in rows)
    x = torch.stack([F.pad(r, (0, 0, 0, t - len(r))) for r in rows])
    y = torch.stack([F.pad(v, (0, t - len(v)), value=-100) for v in targets])
    return x, y


class Ours(nn.Module):
    """Our CausalLM driven by input embeddings."""

    def __init__(self, model: CausalLM) -> None:
        super().__init__()
        self.lm = model

    @property
    def embed(self) -> nn.Embedding:
        return self.lm.model.embed_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        pos = torch.arange(t).expand(b, t)
        return self.lm.lm_head(self.lm.model(x, pos, None, None))  # (B, T, V)


class Reference(nn.Module):
    """transformers' LlamaForCausalLM with our model's weights, driven by input embeddings."""

    def __init__(self, model: CausalLM) -> None:
        super().__init__()
        import transformers

        hf = {k: v for k, v in model.config.to_hf().items() if k != "model_type"}
        self.lm = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf))
        state = {k: v for k, v in model.state_dict().items() if not k.startswith("model.rotary")}
        self.lm.load_state_dict(state, strict=False)

    @property
    def embed(self) -> nn.Embedding:
        return self.lm.model.embed_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm(inputs_embeds=x).logits


def accuracy(
    model: nn.Module, examples: list[Example], task: str, scene: SceneOptions | None = None
) -> dict[str, dict[str, float]]:
    """Per bucket of item counts: right answers, examples, and a blind pick's expected right answers."""
    out = {b: {"right": 0, "n": 0, "blind": 0.0} for b in BUCKETS}
    model.eval()
    with torch.no_grad():
        for i in range(0, len(examples), 128):
            chunk = examples[i : i + 128]
            x, y = batch(model.embed, chunk, task, scene)
            pred = model(x).argmax(-1)  # (B, T)
            for j, ex in enumerate(chunk):
                pos = int((y[j] != -100).nonzero()[0, 0])
                b = next(k for k, (lo, hi) in BUCKETS.items() if lo <= len(ex.items) <= hi)
                out[b]["right"] += int(pred[j, pos] == ex.answer)
                out[b]["n"] += 1
                out[b]["blind"] += blind_pick(ex)
    model.train()
    return out


def train(
    recipe: Stage0Recipe,
    init_std: float,
    task: str,
    steps: int,
    seed: int,
    reference: bool,
    vocab: int = len(WORDS),
    log=print,
    scene: SceneOptions | None = None,
    ramp: int = 0,
) -> dict[str, dict[str, float]]:
    """Trains a fresh decoder of the recipe's shape on ``steps`` batches of 32; returns held-out accuracy (with
    all of ``scene.background``; during the first ``ramp`` steps training scenes have a growing part of it)."""
    rows = VISUAL_BACKGROUND + 1 if task == "scene" else len(WORDS)
    config = text_config(recipe.decoder, max(vocab, rows), ID["<s>"], ID["</s>"], ID["<pad>"])
    torch.manual_seed(seed)
    base = CausalLM(config)
    init_weights(base, init_std)
    model: nn.Module = Reference(base) if reference else Ours(base)
    rng = random.Random(seed)
    held_out = [make_example(random.Random(10_000 + i)) for i in range(600)]
    cfg = LMTrainConfig(steps=steps, batch_size=32, lr=recipe.lm.lr, warmup=recipe.lm.warmup, weight_decay=0.0)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    scene = scene or SceneOptions()
    step = [0]

    def step_loss() -> torch.Tensor:
        now = replace(scene, background=scene.background if step[0] >= ramp else scene.background * step[0] // ramp)
        step[0] += 1
        x, y = batch(model.embed, [make_example(rng) for _ in range(cfg.batch_size)], task, now)
        logits = model(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=-100)

    run_steps(model, opt, cfg, step_loss, "probe", log)
    return accuracy(model, held_out, task, scene)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", default=str(RECIPE), help="stage-0 recipe whose decoder shape is probed")
    ap.add_argument("--init-std", type=float, nargs="+", default=None, help="default: the recipe's lm.init_std")
    ap.add_argument("--task", choices=("fused", "pairs", "scene"), default="fused")
    ap.add_argument("--span", type=int, default=4, help="scene: positions per object")
    ap.add_argument("--kind-noise", type=float, default=0.15, help="scene: chance a position shows another kind")
    ap.add_argument("--background", type=int, default=60, help="scene: background positions")
    ap.add_argument("--ramp", type=int, default=0, help="scene: steps over which the background grows to all of it")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vocab", type=int, default=731, help="embedding rows (the stage-0 tokenizer's 731 by default)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--reference", action="store_true", help="also train transformers' Llama from the same weights")
    ap.add_argument("overrides", nargs="*", help="recipe overrides, e.g. decoder.num_hidden_layers=4")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = load_stage0_recipe(args.recipe, args.overrides)
    stds = args.init_std or [recipe.lm.init_std]
    results = []
    scene = SceneOptions(args.span, args.kind_noise, args.background)
    what = f" ({scene}, ramp {args.ramp})" if args.task == "scene" else ""
    print(f"task {args.task}{what}, {args.steps} steps of 32, decoder {recipe.decoder}")
    print(f"{'model':<13}{'init std':>9}  " + "  ".join(f"{b + ' items':>21}" for b in BUCKETS) + "   seconds")
    for std in stds:
        for ref in (False, True) if args.reference else (False,):
            t = time.perf_counter()
            acc = train(
                recipe, std, args.task, args.steps, args.seed, ref, args.vocab, lambda m: None, scene, args.ramp
            )
            cells = "  ".join(f"{a['right'] / a['n']:.2f} (blind {a['blind'] / a['n']:.2f})" for a in acc.values())
            name = "transformers" if ref else "llavakit"
            print(f"{name:<13}{std:>9.3f}  {cells}   {time.perf_counter() - t:.0f}")
            results.append({"model": name, "init_std": std, **{b: a["right"] / a["n"] for b, a in acc.items()}})
    extra = {"scene": vars(scene), "ramp": args.ramp} if args.task == "scene" else {}
    print(json.dumps({"task": args.task, "steps": args.steps, **extra, "results": results}))


if __name__ == "__main__":
    main()
