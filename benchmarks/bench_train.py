"""Side-by-side training-step benchmark: llavakit's stage-2 step vs transformers' LlavaNextForConditionalGeneration
on the same random weights and the same batch, gradient checkpointing on in both.

    python benchmarks/bench_train.py                      # "small": CLIP-L/336 + Qwen2-0.5B shape, AnyRes images
    python benchmarks/bench_train.py --geometry tiny      # 2 layers, hidden 64: a quick smoke run
    python benchmarks/bench_train.py --bf16 --steps 3

A step = forward, loss over the answer tokens, backward, grad-norm clipping, AdamW update (stage 2: projector +
decoder train, vision tower frozen). Each implementation runs in its own subprocess so peak RSS is its own; the
first step is a warm-up and is reported apart. Prints samples/s and peak RSS side by side (targets: >= 1.2x the
samples/s, <= 1x the memory of transformers).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_generate import build_checkpoint, image  # noqa: E402  (same random "small" checkpoint)

SIZES = [(480, 640), (640, 400)]  # (h, w) of the batch's images: 3 and 3 AnyRes views
QUESTION = "<image>\nWhat is in the picture? Answer briefly. "
ANSWER = "A few colored shapes on a gray background.</s>"


def batch(ckpt: Path) -> dict:
    """The same collated batch for both implementations (llavakit's processor == transformers' on these files)."""
    from llavakit.model.llava import IGNORE_INDEX
    from llavakit.processing.processor import LlavaProcessor
    from llavakit.train.collate import collate

    proc = LlavaProcessor.from_pretrained(ckpt)
    items = []
    for h, w in SIZES:
        enc = proc(text=QUESTION + ANSWER, images=[image(h, w)])
        ids = enc["input_ids"][0]
        n = len(proc.tokenizer.encode(ANSWER, add_special_tokens=False))
        labels = torch.full_like(ids, IGNORE_INDEX)
        labels[-n:] = ids[-n:]
        items.append(
            {"input_ids": ids, "labels": labels, "pixel_values": enc["pixel_values"], "image_sizes": enc["image_sizes"]}
        )
    return collate(items, pad_id=0, family="llava_next")


def worker(impl: str, ckpt: Path, steps: int, bf16: bool) -> dict:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    b = batch(ckpt)
    inputs = {k: b[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_sizes")}
    labels = b["labels"]
    if impl == "hf":
        from transformers import LlavaNextForConditionalGeneration

        model = LlavaNextForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32)
        for p in model.parameters():  # ordinary memory, as for ours (no mmapped weights)
            p.data = p.data.clone()
        for p in model.model.vision_tower.parameters():
            p.requires_grad_(False)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]

        def loss_fn():  # noqa: ANN202
            return model(**inputs, labels=labels).loss
    else:
        from llavakit.model.llava import LlavaModel
        from llavakit.train.grad_ckpt import enable_gradient_checkpointing
        from llavakit.train.loop import supervised_ce_sum, supervised_positions
        from llavakit.train.stages import StageSpec, apply_stage

        model = LlavaModel.from_pretrained(ckpt, dtype=torch.float32)
        for p in model.parameters():
            p.data = p.data.clone()
        params = [p for g in apply_stage(model, StageSpec(name="stage2", lr=2e-5)) for p in g["params"]]
        enable_gradient_checkpointing(model, vision=False)
        model.train()
        n_sup = int((labels[:, 1:] != -100).sum())
        keep = supervised_positions(labels)  # logits only where the loss reads them

        def loss_fn():  # noqa: ANN202
            return supervised_ce_sum(model(**inputs, logits_mask=keep).logits, labels) / n_sup

    opt = torch.optim.AdamW(params, lr=2e-5)
    times, losses = [], []
    for _ in range(steps + 1):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
        losses.append(float(loss))
    n = labels.shape[0]
    return {
        "impl": impl,
        "tokens": int(b["attention_mask"].sum()),
        "warmup_s": times[0],
        "step_s": statistics.median(times[1:] or times),
        "samples_per_s": n / statistics.median(times[1:] or times),
        "losses": losses,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def _retie(ckpt: Path) -> None:
    """bench_generate's random checkpoint stores lm_head.weight apart from the embeddings although its config ties
    them (transformers then leaves them untied, llavakit ties them): write it again with one shared matrix."""
    from llavakit.model.llava import LlavaModel

    LlavaModel.from_pretrained(ckpt).save_pretrained(ckpt)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--geometry", default="small", choices=["small", "tiny"])
    ap.add_argument("--steps", type=int, default=2, help="measured steps after one warm-up step (0: the warm-up only)")
    ap.add_argument("--bf16", action="store_true", help="bfloat16 autocast in both")
    ap.add_argument("--image", action="append", help="HxW of a batch image (repeatable; default 480x640 640x400)")
    ap.add_argument("--ckpt", help="reuse a checkpoint directory written by an earlier run (skips building one)")
    ap.add_argument("--worker", nargs=2, metavar=("IMPL", "CKPT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.image:
        SIZES[:] = [tuple(int(x) for x in s.split("x")) for s in a.image]
    if a.worker:
        print(json.dumps(worker(a.worker[0], Path(a.worker[1]), a.steps, a.bf16)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(a.ckpt) if a.ckpt else Path(tmp) / "ckpt"
        if not a.ckpt:
            t = time.perf_counter()
            build_checkpoint(ckpt, a.geometry)
            _retie(ckpt)
            print(f"built a random {a.geometry} checkpoint in {time.perf_counter() - t:.0f}s", flush=True)
        for impl in ("hf", "ours"):
            cmd = [sys.executable, __file__, "--worker", impl, str(ckpt), "--steps", str(a.steps)]
            cmd += ["--bf16"] if a.bf16 else []
            cmd += [f"--image={h}x{w}" for h, w in SIZES]
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
            if out.returncode:
                print(out.stderr[-3000:], file=sys.stderr)
                continue
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    prec = "bf16 autocast" if a.bf16 else "float32"
    print(f"\nstage-2 step, batch of {len(SIZES)} AnyRes samples, {prec}, gradient checkpointing, 2 threads")
    print("| impl | tokens | warm-up s | step s | samples/s | peak RSS GiB | step-1 loss |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['impl']} | {r['tokens']} | {r['warmup_s']:.1f} | {r['step_s']:.1f} | {r['samples_per_s']:.3f} | "
            f"{r['peak_rss_gib']:.2f} | {r['losses'][0]:.4f} |"
        )
    if len(rows) == 2:
        h, o = rows
        print(
            f"llavakit: {o['samples_per_s'] / h['samples_per_s']:.2f}x the samples/s of transformers "
            f"(target >= 1.2x), {o['peak_rss_gib'] / h['peak_rss_gib']:.2f}x its peak RSS (target <= 1x)"
        )


if __name__ == "__main__":
    main()
