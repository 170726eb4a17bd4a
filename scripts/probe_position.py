"""Where is an object's place lost? Left / right probed along the path of "Is the KIND on the left or the right side
of the image?", for recipe developers.

    python scripts/probe_position.py MODEL --train TRAIN_DATA --test TEST_DATA [--scenes 700] [--test-scenes 250]
    python scripts/probe_position.py MODEL --train TRAIN_DATA --test TEST_DATA --readout-steps 300
    python scripts/probe_position.py MODEL --train TRAIN --test TEST --skip-probes --base-only --ridge-steps 300

TRAIN_DATA / TEST_DATA are synthetic sets with their ``scenes.jsonl`` (``llava data synth``, or a recipe's data
directory; test on scenes the model was not trained on). Every shape off-centre horizontally (``side``) is labelled
left (0) or right (1), and an L2-regularised linear classifier (``probe_tower.probe``) is fitted on one feature at
a time and scored on the test scenes (chance 0.5):

    tower base        mean of the tower's layer -2 features over the shape's base-view patches (25 of the image
                      tokens: the whole image squashed to one tile, where the patch's place is the image's)
    tower all         the same over all of the shape's image tokens, AnyRes tiles included (a tile's features
                      place the shape within the tile, not the image)
    projector base / all   the same after the projector: what the decoder reads
    layer L word / last    the decoder's residual stream after layer L at the shape's name in the question and at
                      the prompt's last position (one question per scene, about its first shape of a unique kind)

With ``--readout-steps S`` it then asks whether layer 0 can be trained to bring the place to the word at all:
from MODEL, the projector and all of layer 0's attention train for S steps (batch 16) on the grounding pass's
attention loss (``train.grounding``) plus the squared error of a linear read-out of the object's centre (x, y in
[-1, 1]) from layer 0's output at the word; printed: the attention mass on the object, the training error and the
held-out accuracy of the read-out's signs (left/right, top/bottom). ``--frozen-projector`` keeps the projector.
``--base-only``: the attention's target is the object's base-view tokens alone (the first 25 image tokens, where a
token's place is the scene's). ``--ridge-steps S``: closed-form ridge read-outs instead of a trained head, along
the path (``ridge_path``): from the mean of the projector's output over the target tokens, from layer 0's output at
the word, and from it again after S steps training layer 0's query / key projections to look at the target tokens.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from PIL import Image

from llavakit.data.synth_questions import side
from llavakit.data.synth_scene import Scene
from llavakit.model.llava import LlavaModel, pack_tiles
from llavakit.processing.processor import LlavaProcessor
from llavakit.train.grounding import TEXT, layer0_log_mass, question_inputs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from probe_tower import probe  # noqa: E402


def question(kind: str) -> str:
    return f"Is the {kind} on the left or the right side of the image?"


def scenes(data: Path, n: int) -> list[tuple[Scene, Image.Image]]:
    """The first ``n`` scenes of ``data`` with at least one shape, and their images."""
    path = data / "scenes.jsonl"
    if not path.is_file():
        raise SystemExit(f"{path} not found: pass a synthetic data directory (llava data synth writes scenes.jsonl)")
    out = []
    for line in path.read_text().splitlines():
        if len(out) >= n:
            break
        rec = json.loads(line)
        scene = Scene.from_dict(rec["scene"])
        if scene.shapes:
            out.append((scene, Image.open(data / rec["image"]).convert("RGB")))
    return out


def named_shape(scene: Scene) -> int | None:
    """The first shape whose kind no other shape has (the one a question can name by kind alone)."""
    kinds = [s.kind for s in scene.shapes]
    return next((i for i, k in enumerate(kinds) if kinds.count(k) == 1), None)


def features(model: LlavaModel, proc: LlavaProcessor, scene: Scene, img: Image.Image) -> tuple[dict, list]:
    """Per probe name, one feature row per labelled shape of ``scene``; the labels: (shape index, whether the
    question names it (only those have rows in the decoder's probes), whether it is on the right)."""
    named = named_shape(scene)
    kind = scene.shapes[named if named is not None else 0].kind
    q = question_inputs(proc, scene, img, question(kind), kind)
    lm = model.model.language_model
    tower: list[torch.Tensor] = []
    inputs: list[torch.Tensor] = []  # the decoder's input embeddings (image features written in), layer 0's input
    layers: list[torch.Tensor] = []
    hooks = [model.model.multi_modal_projector.register_forward_hook(lambda m, i, o: tower.append(i[0]))]
    hooks.append(lm.layers[0].register_forward_pre_hook(lambda m, a: inputs.append(a[0][0])))
    hooks += [layer.register_forward_hook(lambda m, i, o: layers.append(o[0])) for layer in lm.layers]
    try:
        with torch.no_grad():
            model(input_ids=q["ids"], pixel_values=q["pv"], image_sizes=q["sizes"])
    finally:
        for h in hooks:
            h.remove()
    embeds = inputs[0]  # (T, D)
    slots = (q["owner"] != TEXT).nonzero()[:, 0]  # the image tokens' positions
    owner = q["owner"][slots]  # (N,) what each image token shows
    per_view = tower[0].shape[1]  # patches of one view: the base view's tokens come first
    h, w = (int(v) for v in q["sizes"][0])
    packed = pack_tiles(tower[0], h, w, model.geometry, torch.zeros(tower[0].shape[-1]))  # (N, Dv)
    rows: dict[str, list[torch.Tensor]] = {}
    labels = []
    for i, s in enumerate(scene.shapes):
        answer = side(scene, s, "x")
        mine = owner == i
        base = mine.clone()
        base[per_view:] = False
        if answer is None or not base.any():
            continue
        rows.setdefault("tower base", []).append(tower[0][0][base[:per_view]].mean(0))
        rows.setdefault("tower all", []).append(packed[mine].mean(0))
        rows.setdefault("projector base", []).append(embeds[slots[base]].mean(0))
        rows.setdefault("projector all", []).append(embeds[slots[mine]].mean(0))
        if i == named:
            for n, out in enumerate(layers):
                rows.setdefault(f"layer {n} word", []).append(out[q["pos"]])
                rows.setdefault(f"layer {n} last", []).append(out[-1])
        labels.append((i, i == named, answer == "right"))
    return rows, labels


def collect(model: LlavaModel, proc: LlavaProcessor, data: list) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per probe name: (features (M, F), labels (M,))."""
    xs: dict[str, list[torch.Tensor]] = {}
    ys: dict[str, list[int]] = {}
    for scene, img in data:
        rows, labels = features(model, proc, scene, img)
        for name, feats in rows.items():
            xs.setdefault(name, []).extend(feats)
            named_only = name.startswith("layer")
            ys.setdefault(name, []).extend(int(right) for _, is_named, right in labels if is_named or not named_only)
    return {k: (torch.stack(v), torch.tensor(ys[k])) for k, v in xs.items()}


def readout_examples(proc: LlavaProcessor, data: list, base_only: int = 0) -> list[dict]:
    """Grounding-pass inputs for one question per scene, with the named object's centre in [-1, 1]. ``base_only``
    (the tokens of one view, > 0): the attention's target is the object's base-view tokens only (the first
    ``base_only`` image tokens: the whole image squashed to one tile, where a token's place is the scene's)."""
    out = []
    for scene, img in data:
        i = named_shape(scene)
        if i is None:
            continue
        s = scene.shapes[i]
        q = question_inputs(proc, scene, img, question(s.kind), s.kind)
        target = q["owner"] == i
        if base_only:
            target[(q["owner"] != TEXT).nonzero()[base_only:, 0]] = False  # tile tokens (and newlines) left out
        if target.any():
            xy = torch.tensor([s.cx / scene.width * 2 - 1, s.cy / scene.height * 2 - 1])
            out.append({**q, "target": target, "xy": xy})
    return out


def layer0_at_word(model: LlavaModel, ex: dict) -> torch.Tensor:
    """(D,) the residual stream after decoder layer 0 at the naming word."""
    lm = model.model.language_model
    x = model.embed(ex["ids"], ex["pv"], ex["sizes"])  # (1, T, D)
    cos, sin = lm.rotary(torch.arange(x.shape[1])[None], x.dtype, None)
    return lm.layers[0](x, cos, sin, None, None, 0)[0, ex["pos"]]


def readout(
    model: LlavaModel, train: list[dict], test: list[dict], steps: int, seed: int = 0, projector: bool = True
) -> list[dict]:
    """Train the projector (unless ``projector`` is False) + layer 0's attention (grounding loss + centre
    read-out); one record per 50 steps."""
    torch.manual_seed(seed)
    for p in model.parameters():
        p.requires_grad_(False)
    params = [
        *(model.model.multi_modal_projector.parameters() if projector else []),
        *model.model.language_model.layers[0].self_attn.parameters(),
    ]
    for p in params:
        p.requires_grad_(True)
    head = torch.nn.Linear(model.config.text.hidden_size, 2)
    opt = torch.optim.AdamW([*params, *head.parameters()], lr=1e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    log = []
    for step in range(steps):
        batch = [train[i] for i in torch.randint(len(train), (16,), generator=g).tolist()]
        mass = torch.stack([layer0_log_mass(model, ex).max() for ex in batch])
        centres = torch.stack([ex["xy"] for ex in batch])  # (16, 2)
        err = ((head(torch.stack([layer0_at_word(model, ex) for ex in batch])) - centres) ** 2).mean()
        loss = -mass.mean() + err
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % 50 == 0 or step == steps - 1:
            with torch.no_grad():
                pred = head(torch.stack([layer0_at_word(model, ex) for ex in test]))
                acc = ((pred > 0) == (torch.stack([ex["xy"] for ex in test]) > 0)).float().mean(0)
            log.append({"step": step + 1, "mass": mass.exp().mean().item(), "train_error": err.item(),
                        "held_out_x": acc[0].item(), "held_out_y": acc[1].item()})  # fmt: skip
            print(f"step {step + 1}: mass on the object {log[-1]['mass']:.2f}, read-out error {err.item():.3f}, "
                  f"held-out sign accuracy left/right {acc[0]:.2f} top/bottom {acc[1]:.2f}", flush=True)  # fmt: skip
    return log


def ridge_signs(xtr: torch.Tensor, ytr: torch.Tensor, xte: torch.Tensor, yte: torch.Tensor, lam: float = 1.0) -> list:
    """Closed-form ridge regression of (x, y) centres from features (with a bias); the held-out sign accuracy per
    axis [left/right, top/bottom]."""
    x1 = torch.cat([xtr, torch.ones(len(xtr), 1)], 1)
    w = torch.linalg.solve(x1.T @ x1 + lam * torch.eye(x1.shape[1]), x1.T @ ytr)  # (F + 1, 2)
    pred = torch.cat([xte, torch.ones(len(xte), 1)], 1) @ w
    return ((pred > 0) == (yte > 0)).float().mean(0).tolist()


def ridge_path(model: LlavaModel, train: list[dict], test: list[dict], steps: int, seed: int = 0) -> dict:
    """Where the place of the named object stops (targets: ``readout_examples(..., base_only)``): ridge read-outs
    from the mean of the projector's output over the target tokens (what an attention on them would gather), from
    layer 0's output at the name, and from that output again after ``steps`` steps training layer 0's query / key
    projections to look at the target tokens (the grounding loss; nothing else changes)."""
    ytr, yte = torch.stack([e["xy"] for e in train]), torch.stack([e["xy"] for e in test])

    def gathered(ex: dict) -> torch.Tensor:
        return model.embed(ex["ids"], ex["pv"], ex["sizes"])[0][ex["target"]].mean(0)

    def fit(f) -> list:  # noqa: ANN001
        with torch.no_grad():
            return ridge_signs(torch.stack([f(e) for e in train]), ytr, torch.stack([f(e) for e in test]), yte)

    out = {"gathered": fit(gathered), "layer0_word": fit(lambda e: layer0_at_word(model, e))}
    torch.manual_seed(seed)
    att = model.model.language_model.layers[0].self_attn
    for p in model.parameters():
        p.requires_grad_(False)
    params = [*att.q_proj.parameters(), *att.k_proj.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = [train[i] for i in torch.randint(len(train), (16,), generator=g).tolist()]
        loss = -torch.stack([layer0_log_mass(model, ex).max() for ex in batch]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        out["mass"] = torch.stack([layer0_log_mass(model, ex).max().exp() for ex in test]).mean().item()
    out["layer0_word_grounded"] = fit(lambda e: layer0_at_word(model, e))
    for k, v in out.items():
        print(f"{k}: {v:.2f}" if k == "mass" else f"{k}: left/right {v[0]:.2f} top/bottom {v[1]:.2f}", flush=True)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--train", type=Path, required=True, help="synthetic data the probes are fitted on")
    ap.add_argument("--test", type=Path, required=True, help="synthetic data they are scored on (held out)")
    ap.add_argument("--scenes", type=int, default=700, help="training scenes")
    ap.add_argument("--test-scenes", type=int, default=250)
    ap.add_argument("--steps", type=int, default=500, help="optimizer steps of each linear probe")
    ap.add_argument("--readout-steps", type=int, default=0, help="then train layer 0 to read the place (0: no)")
    ap.add_argument("--base-only", action="store_true", help="the read-out's attention target: base-view tokens only")
    ap.add_argument("--frozen-projector", action="store_true", help="the read-out trains layer 0's attention only")
    ap.add_argument("--ridge-steps", type=int, help="ridge read-outs along the path (ridge_path)")
    ap.add_argument("--skip-probes", action="store_true", help="only the read-outs (--readout-steps, --ridge-steps)")
    a = ap.parse_args(argv)
    if a.readout_steps and a.ridge_steps is not None:
        ap.error("--readout-steps trains the model in place: run --ridge-steps separately, on the model as saved")
    model = LlavaModel.from_pretrained(a.model).eval()
    proc = LlavaProcessor.from_pretrained(a.model)
    if model.geometry.pinpoints is None or model.geometry.extra != 0:
        raise SystemExit("probe_position needs a llava_next model with one token per patch (AnyRes, CLIP 'default')")
    train_data, test_data = scenes(a.train, a.scenes), scenes(a.test, a.test_scenes)
    fit, held = ({}, {}) if a.skip_probes else (collect(model, proc, train_data), collect(model, proc, test_data))
    result: dict = {"probes": {}}
    if fit:
        print("| features | shapes (train / test) | right (train) | train | held out |\n|---|---|---|---|---|")
    for name, (x, y) in fit.items():
        if name not in held or len(set(y.tolist())) < 2:
            continue
        acc_train, acc_test = probe(x, y, *held[name], a.steps, classes=2)
        result["probes"][name] = {"train": acc_train, "held_out": acc_test, "n": [len(y), len(held[name][1])]}
        n_test = len(held[name][1])
        print(f"| {name} | {len(y)} / {n_test} | {y.float().mean():.2f} | {acc_train:.2f} | {acc_test:.2f} |")
    per_view = (model.config.vision.image_size // model.config.vision.patch_size) ** 2 if a.base_only else 0
    if a.readout_steps or a.ridge_steps is not None:
        train_ex, test_ex = readout_examples(proc, train_data, per_view), readout_examples(proc, test_data, per_view)
    if a.readout_steps:
        result["readout"] = readout(model, train_ex, test_ex, a.readout_steps, projector=not a.frozen_projector)
    if a.ridge_steps is not None:
        result["ridge"] = ridge_path(model, train_ex, test_ex, a.ridge_steps)
    return result


if __name__ == "__main__":
    main()
