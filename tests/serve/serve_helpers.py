"""Shared by the serve tests: images as bytes / data: URLs, free ports, servers on 127.0.0.1."""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "test-key-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def image_bytes(w: int, h: int, seed: int = 0, fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def user(text: str, *images: bytes) -> dict:
    return {
        "role": "user",
        "content": [{"type": "image_url", "image_url": {"url": data_url(b)}} for b in images]
        + [{"type": "text", "text": text}],
    }


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "2"}


@dataclass
class Server:
    url: str  # http://127.0.0.1:PORT
    model: str
    key: str | None
    log: Path | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    def post(self, body: dict | bytes, **kw) -> httpx.Response:  # noqa: ANN003
        kw.setdefault("timeout", 60)
        headers = {**self.headers, **kw.pop("headers", {})}
        if isinstance(body, bytes):
            headers.setdefault("Content-Type", "application/json")
            return httpx.post(f"{self.url}/v1/chat/completions", content=body, headers=headers, **kw)
        return httpx.post(f"{self.url}/v1/chat/completions", json=body, headers=headers, **kw)

    def metric(self, name: str) -> float:
        for line in httpx.get(f"{self.url}/metrics", timeout=10).text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise KeyError(name)


def wait_healthy(url: str, proc: subprocess.Popen | None = None, timeout: float = 90) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server at {url} did not come up in {timeout} s")


@contextmanager
def cli_server(model_dir: Path, log: Path, *args: str) -> Iterator[subprocess.Popen]:
    """``llava serve`` in a subprocess (the real CLI path); stopped and reaped on exit."""
    port = free_port()
    cmd = [sys.executable, "-m", "llavakit.cli", "serve", "--model", str(model_dir), "--port", str(port), *args]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env(), stdout=out, stderr=subprocess.STDOUT)
    try:
        try:
            wait_healthy(f"http://127.0.0.1:{port}", proc)
        except RuntimeError as e:
            raise RuntimeError(f"{e}; log:\n{log.read_text()[-3000:]}") from None
        proc.port = port  # type: ignore[attr-defined]
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextmanager
def app_server(app) -> Iterator[str]:  # noqa: ANN001
    """An app on uvicorn in a thread of this process (for configurations the tests poke at)."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    try:
        wait_healthy(f"http://127.0.0.1:{port}", timeout=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        th.join(20)
