"""Scratch experiment: teach the projector to write word embeddings into the image tokens of objects.

    python scripts/align_projector.py runs/s10/X2/stage1 runs/s10/X2/data_easy OUT [--steps 400]

`scripts/probe_attention.py` shows the tiny recipe's models find an object named by its colour (the colour word
attends to that object's image tokens in the first layer) but not one named by its kind. A decoder looks words
up in text easily (`probe_lookup.py`'s fused task: all right within 100 steps); so this gives each image token
that shows an object a projector output pointing along the embeddings of the object's kind, colour and size
words (cosine loss, the tower frozen, the projector alone trained), starting from a stage-1 checkpoint, and
writes the result as a checkpoint for stage 2 (`train_default_model.py --continue` with it as ``stage1``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from llavakit.data.synth_scene import Scene
from llavakit.model.llava import LlavaModel, pack_tiles
from llavakit.processing.anyres import num_tiles
from llavakit.processing.processor import LlavaProcessor
from llavakit.train.data import pixel_values
from llavakit.train.foreground import scene_token_owners


def word_vector(model: LlavaModel, proc: LlavaProcessor, word: str) -> torch.Tensor:
    """(D,) mean embedding of the tokens of `` word`` (as it appears inside a question)."""
    ids = proc.tokenizer.encode(" " + word, add_special_tokens=False)
    return model.model.language_model.embed_tokens.weight[ids].mean(0).detach()


def prepare(model: LlavaModel, proc: LlavaProcessor, data: Path, n: int) -> list[dict]:
    """Per scene: frozen tower features of its views, image size, and per packed token the target direction
    (zero for tokens that show no object or more than one)."""
    out = []
    cfg = model.config
    lines = (data / "scenes.jsonl").read_text().splitlines()[:n]
    for line in lines:
        rec = json.loads(line)
        scene = Scene.from_dict(rec["scene"])
        im = Image.open(data / rec["image"]).convert("RGB")
        h, w = im.height, im.width
        pv = pixel_values([im], proc)[0]  # (views, 3, S, S)
        views = num_tiles(h, w, model.geometry)
        with torch.no_grad():
            feats = model.tower_features(pv[:views])  # (views, L, Dv): the tower is frozen
        owner = scene_token_owners(scene, proc)  # (tokens,)
        target = torch.zeros(owner.shape[0], cfg.text.hidden_size)
        for i, s in enumerate(scene.shapes):
            vec = sum(word_vector(model, proc, x) for x in (s.kind, s.color, s.size))
            target[owner == i] = F.normalize(vec, dim=0)
        out.append({"feats": feats, "h": h, "w": w, "target": target})
    return out


def main(argv: list[str] | None = None) -> list[float]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("init")
    ap.add_argument("data", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--scenes", type=int, default=4000)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = LlavaModel.from_pretrained(a.init)
    proc = LlavaProcessor.from_pretrained(a.init)
    t0 = time.perf_counter()
    scenes = prepare(model, proc, a.data, a.scenes)
    print(f"prepared {len(scenes)} scenes in {time.perf_counter() - t0:.0f}s", flush=True)
    proj = model.model.multi_modal_projector
    newline = model.model.image_newline.detach()
    opt = torch.optim.AdamW(proj.parameters(), lr=a.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    history = []
    for step in range(a.steps):
        idx = torch.randint(len(scenes), (a.batch,), generator=g).tolist()
        losses = []
        for i in idx:
            s = scenes[i]
            packed = pack_tiles(proj(s["feats"]), s["h"], s["w"], model.geometry, newline)  # (tokens, D)
            keep = s["target"].abs().sum(-1) > 0
            if keep.any():
                losses.append(1 - F.cosine_similarity(packed[keep], s["target"][keep], dim=-1).mean())
        loss = torch.stack(losses).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
        if step % 50 == 0 or step == a.steps - 1:
            print(f"step {step + 1}: cosine loss {loss.item():.4f}", flush=True)
    model.save_pretrained(a.out)
    proc.save_pretrained(a.out)
    print(f"wrote {a.out}")
    return history


if __name__ == "__main__":
    main()
    sys.exit(0)
