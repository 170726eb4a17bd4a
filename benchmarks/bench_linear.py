"""Speed of the Linear variants on this CPU: one decode token (matrix-vector, memory-bound) and prefill.

Shapes are those of a Qwen2-0.5B decoder (hidden 896, 14 heads / 2 KV heads of 64, intermediate 4864, vocab
151936). Candidates run alternately in one process, rounds x calls, and the median round is reported beside
the best one; the CPU time other processes used meanwhile is printed, since the machine may be shared.

Sections:
- shapes:  one call per shape; weights cycle through copies worth >= 192 MB, so they come from memory, not
           from the cache.
- stack:   every Linear of one decode token (24 layers + LM head), as the engine runs them; also with QKV and
           gate/up fused into one matrix each (what fusing would buy; our model code keeps them separate).
- prefill: many rows (compute-bound): our modules must not be slower than F.linear in bf16.
- compile (--compile): torch.compile variants (a matrix-vector product written as a reduction, and inductor's
           freezing + oneDNN weight prepacking), per shape and for the whole stack.

    python benchmarks/bench_linear.py [--sections shapes,stack,prefill] [--compile] [--threads 2] [--rounds 5]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from llavakit.engine.linear import (  # noqa: E402
    BF16DecodeLinear,
    PackedLinear,
    fp16_decode_available,
    packing_available,
)
from llavakit.engine.quantize import Int4Linear, Int8Linear  # noqa: E402

BANDWIDTH = 39.5e9  # memory read bytes/s; main() replaces it by this machine's best of 3 reads of 512 MiB
D, KV, FF, V, LAYERS = 896, 128, 4864, 151936, 24
SHAPES = {"q/o": (D, D), "k/v": (D, KV), "gate/up": (D, FF), "down": (FF, D), "lm_head": (D, V)}
FUSED = {"qkv fused": (D, D + 2 * KV), "gate+up fused": (D, 2 * FF)}
POOL_BYTES = 192 * 2**20


def others_cpu() -> Callable[[], float]:
    """A stopwatch of the CPU time (in cores) that processes other than this one used since it was started."""

    def read() -> tuple[int, float]:
        f = Path("/proc/stat").read_text().split("\n")[0].split()[1:]
        me = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        busy = sum(int(v) for v in f[:3]) + sum(int(v) for v in f[5:8])
        return busy - int(me[11]) - int(me[12]), time.time()

    try:
        t0 = read()
    except OSError:
        return lambda: float("nan")
    return lambda: (read()[0] - t0[0]) / 100 / max(time.time() - t0[1], 1e-3)


def bench(cands: dict[str, Callable[[int], object]], pools: dict[str, int], rounds: int, min_s: float) -> dict:
    """Median and best seconds per call of each candidate; rounds alternate between candidates."""
    times: dict[str, list[float]] = {k: [] for k in cands}
    with torch.no_grad():
        for k, fn in cands.items():  # warm-up (and compilation)
            for i in range(max(2, pools[k])):
                fn(i % pools[k])
        for _ in range(rounds):
            for k, fn in cands.items():
                n, t0 = 0, time.perf_counter()
                while n < pools[k] or time.perf_counter() - t0 < min_s:
                    fn(n % pools[k])
                    n += 1
                times[k].append((time.perf_counter() - t0) / n)
    return {k: (statistics.median(v), min(v)) for k, v in times.items()}


def row(shape: str, method: str, sec: float, best: float, nbytes: float) -> None:
    gbs = nbytes / sec / 1e9
    frac, best_gbs = gbs * 1e9 / BANDWIDTH, nbytes / best / 1e9
    print(f"| {shape} | {method} | {sec * 1e3:.3f} | {gbs:.1f} | {frac:.0%} | {best_gbs:.1f} |")


def header(title: str, noise: float) -> None:
    print(f"\n### {title}  (other processes used {noise:.2f} CPU cores meanwhile)\n")
    print(f"| shape | method | ms per call | GB/s | of {BANDWIDTH / 1e9:.1f} GB/s | best round GB/s |")
    print("|---|---|---|---|---|---|")


def variants(compile_: bool) -> dict[str, tuple[Callable[[nn.Linear], Callable], float]]:
    """method -> (build from a bf16 nn.Linear, bytes read per weight element on the decode path)."""
    out = {
        "F.linear bf16": (lambda lin: lin, 2.0),
        "F.linear fp32": (_fp32, 4.0),
        "PackedLinear (oneDNN bf16)": (PackedLinear, 2.0),
        "BF16DecodeLinear (fbgemm fp16)": (BF16DecodeLinear, 2.0),
        "Int8Linear (_weight_int8pack_mm)": (Int8Linear.from_linear, 1.0),
        "Int4Linear g32": (lambda lin: Int4Linear.from_linear(lin, 32), 0.5 + 4 / 32),
        "Int4Linear g128": (lambda lin: Int4Linear.from_linear(lin, 128), 0.5 + 4 / 128),
    }
    if not fp16_decode_available():
        del out["BF16DecodeLinear (fbgemm fp16)"]
    if not packing_available(torch.bfloat16):  # oneDNN bf16 packing needs AVX-512 / AVX-NE-CONVERT
        del out["PackedLinear (oneDNN bf16)"]
    if compile_:
        mv = torch.compile(matvec_as_reduction, dynamic=False)
        out["torch.compile: matvec as a reduction"] = (
            lambda lin: (lambda w: lambda x: mv(x, w))(lin.weight),
            2.0,
        )
    return out


def _fp32(lin: nn.Linear) -> Callable:
    m = nn.Linear(lin.in_features, lin.out_features, bias=lin.bias is not None).requires_grad_(False)
    m.load_state_dict({k: v.float() for k, v in lin.state_dict().items()})
    return lambda x: m(x.float())


def matvec_as_reduction(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(M, K) x (N, K) -> (M, N) written so that inductor emits a vectorized row reduction (no GEMM call)."""
    return (w[:, None, :].float() * x[None].float()).sum(-1).t().to(x.dtype)


def call_pool(mods: list[Callable], x: torch.Tensor, i: int) -> object:
    return mods[i](x)


def bf16_linear(k: int, n: int, bias: bool = False) -> nn.Linear:
    lin = nn.Linear(k, n, bias=bias, dtype=torch.bfloat16).requires_grad_(False)
    with torch.no_grad():
        lin.weight.normal_(0, 0.02)
    return lin


def section_shapes(args: argparse.Namespace) -> None:
    builds = variants(args.compile)
    for name, (k, n) in {**SHAPES, **FUSED}.items():
        x = torch.randn(1, k, dtype=torch.bfloat16)
        cands, pools, nbytes = {}, {}, {}
        for method, (build, per_weight) in builds.items():
            count = max(1, -(-POOL_BYTES // int(per_weight * n * k)))
            mods = [build(bf16_linear(k, n)) for _ in range(count)]
            cands[method] = partial(call_pool, mods, x)
            pools[method], nbytes[method] = len(mods), per_weight * n * k
        watch = others_cpu()
        res = bench(cands, pools, args.rounds, 0.1)
        header(f"decode, M=1: {name} {k} -> {n}", watch())
        for method, (med, best) in res.items():
            row(f"{k}->{n}", method, med, best, nbytes[method])
        del cands
        gc.collect()


def decoder_stack(build: Callable[[nn.Linear], Callable], fused: bool, seed: int = 0) -> list[tuple]:
    """[(module, input kind)] for every Linear call of one decode token."""
    torch.manual_seed(seed)
    parts = [("qkv", D, D + 2 * KV), ("o", D, D), ("gateup", D, 2 * FF), ("down", FF, D)]
    if not fused:
        parts = [
            ("q", D, D),
            ("k", D, KV),
            ("v", D, KV),
            ("o", D, D),
            ("gate", D, FF),
            ("up", D, FF),
            ("down", FF, D),
        ]
    out = []
    for _ in range(LAYERS):
        out += [(build(bf16_linear(k, n, bias=name in "qkv")), k) for name, k, n in parts]
    return out + [(build(bf16_linear(D, V)), D)]


def section_stack(args: argparse.Namespace) -> None:
    builds = variants(False)
    del builds["F.linear fp32"]
    elems = LAYERS * (2 * D * D + 2 * D * KV + 3 * D * FF) + D * V
    xs = {D: torch.randn(1, D, dtype=torch.bfloat16), FF: torch.randn(1, FF, dtype=torch.bfloat16)}
    groups = [list(builds), [m for m in builds if "fbgemm" in m or "int8" in m or "g128" in m]]
    for fused_group, methods in zip((False, True), groups):
        cands, pools, nbytes = {}, {}, {}
        for method in methods:
            build, per_weight = builds[method]
            for fused in {False, fused_group}:
                key = method + (" [fused qkv, gate+up]" if fused else "")
                stack = decoder_stack(build, fused)
                cands[key] = (lambda st: lambda _: [m(xs[k]) for m, k in st])(stack)
                pools[key], nbytes[key] = 1, per_weight * elems
        watch = others_cpu()
        res = bench(cands, pools, args.rounds, 0.3)
        title = "fused vs not" if fused_group else "all methods"
        header(f"decode stack: {LAYERS} layers + LM head, one token, ms per token ({title})", watch())
        for key, (med, best) in res.items():
            row("decoder", key, med, best, nbytes[key])
        del cands
        gc.collect()


def section_prefill(args: argparse.Namespace) -> None:
    builds = variants(False)
    del builds["F.linear fp32"]
    for m in (int(r) for r in args.rows.split(",")):
        for k, n in ((D, FF), (FF, D)):
            x = torch.randn(m, k, dtype=torch.bfloat16)
            lin = bf16_linear(k, n)
            mods = {method: build(lin) for method, (build, _) in builds.items()}
            cands = {method: partial(call_pool, [mod], x) for method, mod in mods.items()}
            watch = others_cpu()
            res = bench(cands, dict.fromkeys(cands, 1), args.rounds, 0.1)
            print(f"\n### rows M={m}: {k} -> {n}  (other processes used {watch():.2f} CPU cores meanwhile)\n")
            print("| method | ms per call | GFLOP/s | vs F.linear bf16 |\n|---|---|---|---|")
            base = res["F.linear bf16"][0]
            for method, (med, _) in res.items():
                print(f"| {method} | {med * 1e3:.3f} | {2 * m * k * n / med / 1e9:.0f} | {base / med:.2f}x |")


def section_compile(args: argparse.Namespace) -> None:
    """Whole-stack torch.compile: the matvec as a reduction, inductor freezing (oneDNN prepack), and our
    BF16DecodeLinear (its fbgemm call is a custom op, so the graph keeps it)."""
    import torch._inductor.config as inductor_config

    elems = LAYERS * (2 * D * D + 2 * D * KV + 3 * D * FF) + D * V
    xs = {D: torch.randn(1, D, dtype=torch.bfloat16), FF: torch.randn(1, FF, dtype=torch.bfloat16)}
    eager = decoder_stack(lambda lin: lin, False)
    kinds = [k for _, k in eager]

    class Stack(nn.Module):
        def __init__(self, stack: list[tuple], reduce: bool) -> None:
            super().__init__()
            self.mods, self.reduce = nn.ModuleList(m for m, _ in stack), reduce

        def forward(self, xh: torch.Tensor, xi: torch.Tensor) -> list[torch.Tensor]:
            xs = {D: xh, FF: xi}
            if self.reduce:
                return [matvec_as_reduction(xs[k], m.weight) for m, k in zip(self.mods, kinds)]
            return [m(xs[k]) for m, k in zip(self.mods, kinds)]

    cands = {"eager nn.Linear bf16": lambda _: [m(xs[k]) for m, k in eager]}
    with torch.no_grad():
        t0 = time.time()
        graphs = {"compiled stack: matvec as reduction": torch.compile(Stack(eager, True), dynamic=False)}
        if fp16_decode_available():
            fast = decoder_stack(BF16DecodeLinear, False)
            cands["eager BF16DecodeLinear"] = lambda _: [m(xs[k]) for m, k in fast]
            graphs["compiled stack: BF16DecodeLinear"] = torch.compile(Stack(fast, False), dynamic=False)
        for g in graphs.values():
            g(xs[D], xs[FF])
        inductor_config.freezing = True
        frozen = torch.compile(Stack(eager, False).eval(), dynamic=False)
        frozen(xs[D], xs[FF])
        inductor_config.freezing = False
        graphs["compiled stack: freezing + oneDNN prepack"] = frozen
        print(f"\n(compiling took {time.time() - t0:.0f} s)")
    for name, g in graphs.items():
        cands[name] = partial(lambda g, _: g(xs[D], xs[FF]), g)
    watch = others_cpu()
    res = bench(cands, dict.fromkeys(cands, 1), args.rounds, 0.3)
    header(f"decode stack, torch.compile: {LAYERS} layers + LM head, ms per token", watch())
    for key, (med, best) in res.items():
        row("decoder", key, med, best, 2 * elems)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sections", default="shapes,stack,prefill")
    p.add_argument("--compile", action="store_true", help="also measure torch.compile variants")
    p.add_argument("--rows", default="1,4,16,64,512,2340", help="prefill section: rows per call")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    global BANDWIDTH
    x = torch.ones(2**27)  # 512 MiB
    for _ in range(3):
        t = time.perf_counter()
        x.sum()
        BANDWIDTH = max(BANDWIDTH if _ else 0.0, x.numel() * 4 / (time.perf_counter() - t))
    del x
    print(
        f"torch {torch.__version__}, {args.threads} threads, fbgemm fp16: {fp16_decode_available()}, "
        f"memory read {BANDWIDTH / 1e9:.1f} GB/s"
    )
    for name in args.sections.split(","):
        {"shapes": section_shapes, "stack": section_stack, "prefill": section_prefill}[name](args)
    if args.compile:
        section_compile(args)


if __name__ == "__main__":
    main()
