"""Serving throughput and latency over loopback: requests/s, p50/p95 latency at 1, 4 and 16 concurrent clients.

    python benchmarks/bench_serve.py                          # the default model (a tiny random one until it ships)
    python benchmarks/bench_serve.py --geometry tiny          # CLIP-336 tiles + a 2-layer Qwen2-shaped decoder
    python benchmarks/bench_serve.py --geometry small --requests 16   # CLIP-L/336 + Qwen2-0.5B shape (slow on CPU)

Starts ``llava serve`` in a subprocess (``--threads`` torch threads, 2 by default), sends chat completions with
one image from N client threads (greedy, the same request every time, so every level does the same work), and
prints one row per concurrency level. Every answer is ``--max-tokens`` long (``ignore_eos``, vLLM's extension,
as vLLM's own serving benchmark fixes output lengths), so the work per request does not depend on when a
particular model happens to stop; ``--natural-length`` lets the model end its answers itself. The target with
batching: throughput at 16 clients >= 3x the throughput at 1 client.

Beside each level: the server's CPU time per request (user + system, all its threads; on a machine shared with
other jobs it moves less than wall time) and the load average. ``--repeat R`` runs the levels R times in turn
(1, 4, 16, 1, 4, 16, ...) and keeps each level's best run, so that a burst of load from other processes does
not decide the ratio.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def model_dir(geometry: str, work: Path) -> tuple[str, str]:
    """(path, description) of the model to serve."""
    if geometry == "default":
        from llavakit.serve.command import resolve_model

        path, name = resolve_model(None)
        return path, f"default model ({name})"
    from bench_generate import build_checkpoint

    out = work / f"random-{geometry}"
    build_checkpoint(out, geometry)
    return str(out), f"random '{geometry}' LLaVA-NeXT (CLIP-336 tiles, Qwen2-shaped decoder)"


def image_url(h: int, w: int) -> str:
    import numpy as np
    from PIL import Image

    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def start_server(path: str, port: int, batch: int, log: Path, threads: int = 2) -> subprocess.Popen:
    import httpx

    cmd = [
        sys.executable,
        "-m",
        "llavakit.cli",
        "serve",
        "--model",
        path,
        "--port",
        str(port),
        "--served-model-name",
        "bench",
        "--max-batch-size",
        str(batch),
        "--max-concurrency",
        "256",
        "--timeout",
        "3600",
        "--threads",
        str(threads),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    end = time.monotonic() + 600
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    raise SystemExit("server did not start")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def worker_counters(url: str) -> dict[str, float]:
    """The model worker's prefill / decode seconds and prefill calls so far, from /metrics."""
    import httpx

    names = {
        "llava_worker_prefill_seconds_total": "prefill_s",
        "llava_worker_decode_seconds_total": "decode_s",
        "llava_prefills_total": "prefills",
    }
    out = {}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        name, _, value = line.partition(" ")
        if name in names:
            out[names[name]] = float(value)
    return out


def run_level(url: str, body: dict, clients: int, requests: int, server_pid: int | None = None) -> dict:
    import httpx

    latencies: list[float] = []
    tokens: list[int] = []
    left = [requests]
    lock = threading.Lock()
    errors: list[str] = []

    # clients connect before the clock starts (creating an HTTP client costs more than a tiny model's answer)
    conns = [httpx.Client(timeout=3600) for _ in range(clients)]
    # the body is serialized once: encoding ~0.5 MB of JSON per request would be client work competing with the
    # server for the same cores, not serving work
    payload = json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    for c in conns:
        c.get(f"{url}/health")
    start = threading.Barrier(clients + 1)

    def client(c: httpx.Client) -> None:
        start.wait()
        while True:
            with lock:
                if left[0] == 0:
                    return
                left[0] -= 1
            t0 = time.perf_counter()
            r = c.post(f"{url}/v1/chat/completions", content=payload, headers=headers)
            dt = time.perf_counter() - t0
            with lock:
                if r.status_code != 200:
                    errors.append(f"{r.status_code}: {r.text[:200]}")
                else:
                    latencies.append(dt)
                    tokens.append(r.json()["usage"]["completion_tokens"])

    threads = [threading.Thread(target=client, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    work0 = worker_counters(url)
    start.wait()
    cpu0 = cpu_seconds(server_pid) if server_pid else 0.0
    me0 = time.process_time()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    cpu = cpu_seconds(server_pid) - cpu0 if server_pid else float("nan")
    clients_cpu = time.process_time() - me0
    work = {k: v - work0.get(k, 0.0) for k, v in worker_counters(url).items()}
    for c in conns:
        c.close()
    if errors:
        raise SystemExit(f"{len(errors)} requests failed, e.g. {errors[0]}")
    q = statistics.quantiles(latencies, n=20, method="inclusive") if len(latencies) > 1 else latencies * 19
    return {
        "clients": clients,
        "requests": requests,
        "wall_s": wall,
        "req_per_s": requests / wall,
        "tok_per_s": sum(tokens) / wall,
        "p50_s": statistics.median(latencies),
        "p95_s": q[18],
        "tokens_per_request": statistics.mean(tokens),
        "server_cpu_ms_per_request": 1000 * cpu / requests,
        "client_cpu_ms_per_request": 1000 * clients_cpu / requests,
        # the model worker's wall time per request: admitting (vision + prefill) and decode steps
        "worker_prefill_ms_per_request": 1000 * work.get("prefill_s", float("nan")) / requests,
        "worker_decode_ms_per_request": 1000 * work.get("decode_s", float("nan")) / requests,
        "requests_per_prefill": requests / max(work.get("prefills", 0.0), 1.0),
        "load_average": load_average(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--geometry", default="default", choices=["default", "tiny", "small"])
    ap.add_argument("--model", help="serve this checkpoint instead (overrides --geometry)")
    ap.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--max-tokens", type=int, default=32, help="tokens per answer")
    ap.add_argument("--natural-length", action="store_true", help="answers end at EOS (no ignore_eos)")
    ap.add_argument("--image-size", default="336x336", help="HxW of the image in every request; 0 = text only")
    ap.add_argument("--max-batch-size", type=int, default=16)
    ap.add_argument("--port", type=int, default=18431)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the server's model worker")
    ap.add_argument("--repeat", type=int, default=1, help="run the levels this many times, keep each level's best")
    a = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    path, what = (a.model, a.model) if a.model else model_dir(a.geometry, work)
    content: list[dict] = []
    if a.image_size != "0":
        h, w = (int(x) for x in a.image_size.lower().split("x"))
        content.append({"type": "image_url", "image_url": {"url": image_url(h, w)}})
    content.append({"type": "text", "text": "Describe the picture in detail."})
    body = {
        "model": "bench",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": a.max_tokens,
        "temperature": 0,
        "ignore_eos": not a.natural_length,
    }
    proc = start_server(path, a.port, a.max_batch_size, work / "server.log", a.threads)
    url = f"http://127.0.0.1:{a.port}"
    try:
        import httpx

        warm = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=3600).json()
        print(
            f"model: {what}\nprompt: {warm['usage']['prompt_tokens']} tokens "
            f"({warm['usage']['prompt_tokens_details']['image_tokens']} image tokens), "
            f"{'up to ' if a.natural_length else ''}{a.max_tokens} new tokens, greedy; server: --max-batch-size "
            f"{a.max_batch_size}, {a.threads} torch threads; "
            f"machine: {os.cpu_count()} CPUs\n",
            flush=True,
        )
        levels = [int(x) for x in a.clients.split(",")]
        best: dict[int, dict] = {}
        for _ in range(a.repeat):
            for c in levels:
                r = run_level(url, body, c, a.requests, proc.pid)
                print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}), flush=True)
                if c not in best or r["req_per_s"] > best[c]["req_per_s"]:
                    best[c] = r
        rows = [best[c] for c in levels]
    finally:
        proc.terminate()
        proc.wait(30)
    best_of = f" (best of {a.repeat})" if a.repeat > 1 else ""
    print(
        f"\n| clients | requests{best_of} | req/s | tokens/s | p50 latency s | p95 latency s | server CPU ms/request "
        "| worker prefill / decode ms/request | load average | vs 1 client |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    base = rows[0]["req_per_s"]
    for r in rows:
        print(
            f"| {r['clients']} | {r['requests']} | {r['req_per_s']:.2f} | {r['tok_per_s']:.1f} | {r['p50_s']:.2f} | "
            f"{r['p95_s']:.2f} | {r['server_cpu_ms_per_request']:.0f} | "
            f"{r['worker_prefill_ms_per_request']:.0f} / {r['worker_decode_ms_per_request']:.0f} | "
            f"{r['load_average']} | "
            f"{r['req_per_s'] / base:.1f}x |"
        )
    last = rows[-1]
    verdict = "met" if last["req_per_s"] >= 3 * base else "NOT met"
    print(
        f"\ntarget: {last['clients']} clients >= 3x the throughput of {rows[0]['clients']}: "
        f"{last['req_per_s'] / base:.1f}x ({verdict})"
    )


if __name__ == "__main__":
    main()
