"""Side-by-side generation benchmark: llavakit vs transformers on the same random weights, plus machine limits.

    python benchmarks/bench_generate.py                       # "small": CLIP-L/336 + Qwen2-0.5B shape, 1024x768
    python benchmarks/bench_generate.py --geometry tiny       # 2 layers, hidden 64: per-token overhead
    python benchmarks/bench_generate.py --dtypes bfloat16 --new-tokens 32

Each (implementation, dtype) runs in its own subprocess so peak RSS is its own; weights are read into ordinary
memory (no mmap) before timing. Prints one table: preprocessing, vision, time to first token, decode tok/s, peak
RSS, the batch-of-4 throughput, and our decode as a fraction of the measured memory-bandwidth limit.
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

PINS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
BATCH_SIZES = [(768, 1024), (600, 500), (336, 1000), (1000, 700)]  # (h, w)


def geometry(name: str) -> tuple[dict, dict]:
    if name == "small":
        vision = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                      image_size=336, patch_size=14, projection_dim=768)
        text = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                    num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                    tie_word_embeddings=True, rope_theta=1e6)
    else:
        vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      image_size=336, patch_size=14, projection_dim=64)
        text = dict(vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32768,
                    tie_word_embeddings=True)
    return vision, text


def build_checkpoint(out: Path, geom: str) -> None:
    from transformers import CLIPVisionConfig, LlavaNextConfig, LlavaNextForConditionalGeneration, Qwen2Config

    from llavakit.tiny import char_tokenizer

    v, t = geometry(geom)
    cfg = LlavaNextConfig(vision_config=CLIPVisionConfig(**v), text_config=Qwen2Config(**t), image_token_index=120,
                          image_grid_pinpoints=PINS, tie_word_embeddings=True)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = LlavaNextForConditionalGeneration(cfg)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02) if p.dim() > 1 else p.fill_(1.0)
    model.save_pretrained(out)
    from llavakit.config import LlavaConfig
    from llavakit.processing.processor import LlavaProcessor

    ours_cfg = LlavaConfig.from_hf(json.loads((out / "config.json").read_text()))
    LlavaProcessor.from_parts(char_tokenizer(), ours_cfg, template="qwen_1_5").save_pretrained(out)


def image(h: int, w: int):
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8))


PROMPT = "USER: <image>\nDescribe it. A:"  # ~20 text tokens with the character tokenizer


def worker(impl: str, ckpt: Path, dtype: str, new_tokens: int, batch: bool) -> dict:
    torch.set_num_threads(2)
    dt = getattr(torch, dtype if dtype != "int8" else "bfloat16")
    res: dict = {"impl": impl, "dtype": dtype}
    if impl == "hf":
        from transformers import AutoProcessor, LlavaNextForConditionalGeneration, LogitsProcessor

        model = LlavaNextForConditionalGeneration.from_pretrained(ckpt, dtype=dt).eval()
        proc = AutoProcessor.from_pretrained(ckpt)
        for p in model.parameters():  # hold weights in ordinary memory (the VM pages out mmapped files)
            p.data = p.data.clone()

        stamps: list[float] = []

        class Stamp(LogitsProcessor):
            def __call__(self, input_ids, scores):  # noqa: ANN001, ANN204
                stamps.append(time.perf_counter())
                return scores

        def prep(images, texts):
            return proc(text=texts, images=images, return_tensors="pt", padding=True)

        def vision(inputs):
            return model.model.get_image_features(inputs["pixel_values"].to(dt), inputs["image_sizes"])

        def gen(inputs):
            stamps.clear()
            t0 = time.perf_counter()
            with torch.no_grad():
                model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                               logits_processor=[Stamp()], eos_token_id=None, pad_token_id=0)
            return t0, list(stamps)
    else:
        from llavakit.checkpoint.api import load_model
        from llavakit.engine.generate import stream_tokens
        from llavakit.engine.linear import pack_linears
        from llavakit.processing.processor import LlavaProcessor

        model = load_model(ckpt, dtype=dt)
        if dtype == "int8":
            from llavakit.engine.quantize import quantize_model

            quantize_model(model.model.language_model, "int8")
        pack_linears(model, include_tied=True)
        proc = LlavaProcessor.from_pretrained(ckpt)

        def prep(images, texts):
            return proc(text=texts, images=images)

        def vision(inputs):
            with torch.no_grad():
                return model.image_features(inputs["pixel_values"].to(dt), inputs["image_sizes"])

        def gen(inputs):
            t0, st = time.perf_counter(), []
            for _ in stream_tokens(model, inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                   max_new_tokens=new_tokens, eos_token_id=[], pixel_values=inputs["pixel_values"],
                                   image_sizes=inputs["image_sizes"]):
                st.append(time.perf_counter())
            return t0, st

    img = image(768, 1024)
    t = time.perf_counter()
    inputs = prep([img], [PROMPT])
    res["preprocess_s"] = time.perf_counter() - t
    res["prompt_tokens"] = int(inputs["input_ids"].shape[1])
    vision(inputs)  # warm-up
    t = time.perf_counter()
    vision(inputs)
    res["vision_s"] = time.perf_counter() - t
    t0, st = gen(inputs)
    res["ttft_s"] = st[0] - t0
    res["decode_tok_s"] = (len(st) - 1) / (st[-1] - st[0])
    if batch:
        inputs = prep([image(h, w) for h, w in BATCH_SIZES], [PROMPT] * 4)
        t0, st = gen(inputs)
        res["batch4_ttft_s"] = st[0] - t0
        res["batch4_decode_tok_s"] = 4 * (len(st) - 1) / (st[-1] - st[0])
    res["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return res


def machine_limits() -> dict:
    torch.set_num_threads(2)
    x = torch.empty(2**28, dtype=torch.float32)  # 1 GiB
    x.fill_(1.0)
    reads = []
    for _ in range(5):
        t = time.perf_counter()
        x.sum()
        reads.append(x.numel() * 4 / (time.perf_counter() - t) / 1e9)
    a = torch.randn(2048, 2048, dtype=torch.bfloat16)
    flops = []
    for _ in range(5):
        t = time.perf_counter()
        a @ a
        flops.append(2 * 2048**3 / (time.perf_counter() - t) / 1e9)
    return {"read_GBps": statistics.median(reads), "bf16_gemm_GFLOPs": statistics.median(flops)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--geometry", default="small", choices=["small", "tiny"])
    ap.add_argument("--dtypes", default="float32,bfloat16,int8")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--no-batch", action="store_true")
    ap.add_argument("--worker", nargs=4, metavar=("IMPL", "CKPT", "DTYPE", "NEW"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        impl, ckpt, dtype, new = a.worker
        print(json.dumps(worker(impl, Path(ckpt), dtype, int(new), not a.no_batch)))
        return
    limits = machine_limits()
    print(f"machine: memory read {limits['read_GBps']:.1f} GB/s, bf16 GEMM {limits['bf16_gemm_GFLOPs']:.0f} GFLOP/s "
          f"(2 threads)", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "ckpt"
        t = time.perf_counter()
        build_checkpoint(ckpt, a.geometry)
        print(f"built a random {a.geometry} checkpoint in {time.perf_counter() - t:.0f}s", flush=True)
        for dtype in a.dtypes.split(","):
            for impl in ("hf", "ours"):
                if impl == "hf" and dtype == "int8":
                    continue
                cmd = [sys.executable, __file__, "--worker", impl, str(ckpt), dtype, str(a.new_tokens)]
                cmd += ["--no-batch"] if a.no_batch else []
                out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
                if out.returncode:
                    print(out.stderr[-2000:], file=sys.stderr)
                    continue
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(json.dumps(rows[-1]), flush=True)
    weights_gb = None
    if a.geometry == "small":
        weights_gb = 0.99  # bf16 decoder weights read per token (tied head counted once)
    print("\n| impl | dtype | prompt tok | preprocess s | vision s | TTFT s | decode tok/s | batch4 tok/s | RSS GiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['impl']} | {r['dtype']} | {r['prompt_tokens']} | {r['preprocess_s']:.2f} | {r['vision_s']:.2f} | "
              f"{r['ttft_s']:.2f} | {r['decode_tok_s']:.1f} | {r.get('batch4_decode_tok_s', float('nan')):.1f} | "
              f"{r['peak_rss_gib']:.2f} |")
    by = {(r["impl"], r["dtype"]): r for r in rows}
    for dtype in a.dtypes.split(","):
        if ("hf", dtype) in by and ("ours", dtype) in by:
            h, o = by[("hf", dtype)], by[("ours", dtype)]
            print(f"{dtype}: decode {o['decode_tok_s'] / h['decode_tok_s']:.2f}x transformers, "
                  f"TTFT {o['ttft_s'] / h['ttft_s']:.2f}x, RSS {o['peak_rss_gib'] / h['peak_rss_gib']:.2f}x")
    if weights_gb and ("ours", "bfloat16") in by:
        limit = limits["read_GBps"] / weights_gb
        d = by[("ours", "bfloat16")]["decode_tok_s"]
        print(f"bf16 decode bandwidth limit ~{limit:.0f} tok/s; ours {d:.1f} tok/s = {d / limit:.0%} of it")
    if ("ours", "int8") in by and ("ours", "bfloat16") in by:
        print(f"int8 decode {by[('ours', 'int8')]['decode_tok_s'] / by[('ours', 'bfloat16')]['decode_tok_s']:.2f}x "
              "our bf16")


if __name__ == "__main__":
    main()
