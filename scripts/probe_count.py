"""Can a decoder of the stage-0 shape learn to count the objects of one kind? For recipe developers.

    python scripts/probe_count.py [--lr 1e-3] [--steps 2000]                      # one position per object
    python scripts/probe_count.py --background 40 --ramp 600 --span 2 6 --mark    # closer to image tokens

"How many stars are there?" asks the decoder to find every context position that shows the named kind and turn
how many there are into a number. This probe trains the stage-0 recipe's decoder (its layers, width and heads,
from scratch, with the recipe's initialisation) on that alone, with no vision tower and no projector:

    <s> USER: ITEM ITEM ... \\n How many KIND ? ASSISTANT: N

with 1-8 objects of seven kinds, N (0-5, uniform) of them of the asked kind, the loss on N only. Each object is
``--span`` positions whose input is the sum of its kind's and its colour's embedding rows (what the image tokens
of a patch showing a red star offer the decoder); with ``--mark`` one of them also adds a mark row (what stage 0's
``clip.centre_labels`` teaches the tower: one marked patch per shape). ``--background`` positions of their own row
are shuffled in among the objects' (most patches of a scene show no shape); ``--ramp`` grows them from none over
that many steps, as ``probe_lookup.py --ramp`` does; ``--kind-noise P`` shows another kind at each object position
with probability P (a patch whose kind the tower misreads; the mark stays on the true kind). AdamW, a 50-step
warm-up then ``--lr``, batches of 32.

It prints held-out accuracy (600 examples; chance 1/6) every ``--every`` steps and by count at the end; the last
line is one JSON object. Worked example: ``--span 1 1`` and no background gives 0.95 after 2000 steps at 1e-3 (stage
2's rate) and 0.36 after 3000 at 2e-3 (stage 0's); see docs/default-model.md, "Counting in isolation, again".
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from llavakit.data.synth_scene import COLORS, KINDS
from llavakit.model.text import CausalLM
from llavakit.train.stage0.lm import init_weights
from llavakit.train.stage0.run import Stage0Recipe, load_stage0_recipe, text_config

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "tiny-synth-stage0.yaml"
WORDS = ["<pad>", "<s>", "</s>", "USER:", "ASSISTANT:", "\n", "How", "many", "?", "BACKGROUND", "MARK"]
WORDS += [*KINDS, *COLORS, *"012345"]
ID = {w: i for i, w in enumerate(WORDS)}
VOCAB = 731  # embedding rows: the stage-0 tokenizer's (unused rows matter to the optimisation, see probe_lookup)


@dataclass
class Layout:
    span: tuple[int, int] = (1, 1)  # positions per object, drawn uniformly in [lo, hi]
    mark: bool = False  # one position of each object adds the MARK row
    background: int = 0  # BACKGROUND positions shuffled in
    kind_noise: float = 0.0  # each object position shows another kind with this probability (a misread patch)


@dataclass
class Example:
    ids: list[int]  # the prompt, ending with "ASSISTANT:"
    extra: list[tuple[int, ...]]  # rows added to each position's own (its colour, the mark), same length as ids
    count: int  # the answer, 0-5


def make_example(rng: random.Random, layout: Layout) -> Example:
    """One question: ``count`` objects of the asked kind among 1-8 objects, each ``layout.span`` positions."""
    kind, count = rng.choice(KINDS), rng.randint(0, 5)
    others = [rng.choice([k for k in KINDS if k != kind]) for _ in range(rng.randint(max(0, 1 - count), 8 - count))]
    spots: list[tuple[int, tuple[int, ...]]] = []
    for k in [kind] * count + others:
        colour = ID[rng.choice(list(COLORS))]
        n = rng.randint(*layout.span)
        spots += [(ID[misread(rng, k, layout.kind_noise)], (colour,)) for _ in range(n)]
        if layout.mark:
            spots[-1] = (ID[k], (colour, ID["MARK"]))
    spots += [(ID["BACKGROUND"], ())] * layout.background
    rng.shuffle(spots)
    head, tail = [ID["<s>"], ID["USER:"]], [ID[w] for w in ("\n", "How", "many", kind, "?", "ASSISTANT:")]
    ids = head + [t for t, _ in spots] + tail
    extra = [()] * len(head) + [e for _, e in spots] + [()] * len(tail)
    return Example(ids, extra, count)


def misread(rng: random.Random, kind: str, p: float) -> str:
    """``kind``, or with probability ``p`` another kind drawn uniformly (no draw at all when ``p`` is 0, so the
    examples of earlier runs stay the same)."""
    if p and rng.random() < p:
        return rng.choice([k for k in KINDS if k != kind])
    return kind


def batch(embed: torch.nn.Embedding, examples: list[Example]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, T, D) input embeddings, right-padded with zeros after each prompt (causal: nothing before the answer
    sees them), (B,) answer ids and (B,) the index of each prompt's last position, where the answer is read."""
    rows = []
    for ex in examples:
        x = embed(torch.tensor(ex.ids))  # (T, D)
        on = [(i, r) for i, rs in enumerate(ex.extra) for r in rs]
        if on:
            x = x.index_add(0, torch.tensor([i for i, _ in on]), embed(torch.tensor([r for _, r in on])))
        rows.append(x)
    t = max(len(r) for r in rows)
    x = torch.stack([F.pad(r, (0, 0, 0, t - len(r))) for r in rows])
    answers = torch.tensor([ID[str(ex.count)] for ex in examples])
    last = torch.tensor([len(ex.ids) - 1 for ex in examples])
    return x, answers, last


def logits_at(model: CausalLM, x: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """(B, V) next-token logits at each row's ``last`` position."""
    b, t, _ = x.shape
    hidden = model.model(x, torch.arange(t).expand(b, t), None, None)  # (B, T, D)
    return model.lm_head(hidden[torch.arange(b), last])


def accuracy(model: CausalLM, examples: list[Example]) -> tuple[float, list[float]]:
    """Held-out accuracy, overall and by true count 0-5."""
    model.eval()
    with torch.no_grad():
        x, answers, last = batch(model.model.embed_tokens, examples)
        right = (logits_at(model, x, last).argmax(-1) == answers).tolist()
    model.train()
    by = [[r for r, ex in zip(right, examples) if ex.count == c] for c in range(6)]
    return sum(right) / len(right), [sum(b) / len(b) if b else float("nan") for b in by]


def fresh_decoder(recipe: Stage0Recipe, seed: int, ids: dict[str, int]) -> tuple[CausalLM, torch.optim.AdamW]:
    """A decoder of the recipe's shape with its initialisation (``VOCAB`` rows; ``ids`` holds the special tokens'
    rows), seeded, and its AdamW (no weight decay)."""
    torch.manual_seed(seed)
    model = CausalLM(text_config(recipe.decoder, VOCAB, ids["<s>"], ids["</s>"], ids["<pad>"]))
    init_weights(model, recipe.lm.init_std)
    return model, torch.optim.AdamW(model.parameters(), lr=0.0, weight_decay=0.0)


def optimise(model: CausalLM, opt: torch.optim.Optimizer, loss: torch.Tensor, lr: float, step: int) -> None:
    """One step on ``loss``: a 50-step linear warm-up to ``lr``, gradients clipped at norm 1."""
    for group in opt.param_groups:
        group["lr"] = lr * min(1.0, (step + 1) / 50)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


def train(
    recipe: Stage0Recipe, layout: Layout, steps: int, lr: float, ramp: int = 0, seed: int = 0, every: int = 0, log=print
) -> dict:
    """A fresh decoder of the recipe's shape trained ``steps`` batches of 32; returns its held-out accuracy (with
    all of ``layout.background``; during the first ``ramp`` steps training examples have a growing part of it)."""
    model, opt = fresh_decoder(recipe, seed, ID)
    rng = random.Random(seed)
    held_out = [make_example(random.Random(10**6 + i), layout) for i in range(600)]
    curve = []
    for step in range(steps):
        grown = layout.background if step >= ramp else layout.background * step // ramp
        now = Layout(layout.span, layout.mark, grown, layout.kind_noise)
        x, answers, last = batch(model.model.embed_tokens, [make_example(rng, now) for _ in range(32)])
        loss = F.cross_entropy(logits_at(model, x, last), answers)
        optimise(model, opt, loss, lr, step)
        if every and (step + 1) % every == 0:
            acc, _ = accuracy(model, held_out)
            curve.append([step + 1, acc])
            log(f"step {step + 1}: loss {loss.item():.3f}, held out {acc:.3f}")
    acc, by_count = accuracy(model, held_out)
    return {"accuracy": acc, "by_count": by_count, "curve": curve}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", default=str(RECIPE), help="stage-0 recipe whose decoder shape is probed")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--lr", type=float, default=1e-3, help="stage 2's rate; stage 0's is 2e-3")
    ap.add_argument("--span", type=int, nargs=2, default=(1, 1), metavar=("LO", "HI"), help="positions per object")
    ap.add_argument("--mark", action="store_true", help="one position of each object adds a mark row")
    ap.add_argument("--background", type=int, default=0, help="background positions shuffled in")
    ap.add_argument("--ramp", type=int, default=0, help="steps over which the background grows from none")
    ap.add_argument("--kind-noise", type=float, default=0.0, help="chance an object's position shows another kind")
    ap.add_argument("--every", type=int, default=250, help="held-out accuracy every N steps (0: at the end only)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("overrides", nargs="*", help="recipe overrides, e.g. decoder.num_hidden_layers=4")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.span[0] < 1 or args.span[1] < args.span[0]:
        ap.error(f"--span LO HI needs 1 <= LO <= HI, got {args.span[0]} {args.span[1]}")
    if not 0.0 <= args.kind_noise < 1.0:
        ap.error(f"--kind-noise is a probability in [0, 1), got {args.kind_noise}")
    recipe = load_stage0_recipe(args.recipe, args.overrides)
    layout = Layout(tuple(args.span), args.mark, args.background, args.kind_noise)
    print(f"{layout}, ramp {args.ramp}, lr {args.lr}, {args.steps} steps of 32, decoder {recipe.decoder}")
    t = time.perf_counter()
    result = train(recipe, layout, args.steps, args.lr, args.ramp, args.seed, args.every)
    by = " ".join(f"{c}: {a:.2f}" for c, a in enumerate(result["by_count"]))
    print(f"held out {result['accuracy']:.3f} (chance 0.17); by count {by}; {time.perf_counter() - t:.0f} s")
    print(json.dumps({"layout": vars(layout), "ramp": args.ramp, "lr": args.lr, "steps": args.steps, **result}))


if __name__ == "__main__":
    main()
