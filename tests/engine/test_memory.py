"""engine.memory.keep_freed_memory: freed activations are reused without page faults; opt-outs respected.

Each check runs in a fresh interpreter: the setting is process-wide and cannot be undone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llavakit.engine import memory

SRC = str(Path(__file__).resolve().parents[2] / "src")

# Three MLP blocks over 2885 rows (a 5-tile CLIP-L image's token count) with 47 MB intermediates: glibc maps
# those afresh on every forward by default (over its 32 MiB mmap ceiling); count the faults of 4 warm forwards.
PROBE = """
import json, resource, sys, torch
from llavakit.engine.memory import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
torch.manual_seed(0)
blocks = [(torch.nn.Linear(256, 4096), torch.nn.GELU(), torch.nn.Linear(4096, 256)) for _ in range(3)]
mlp = torch.nn.Sequential(*[m for b in blocks for m in b])
x = torch.randn(2885, 256)
with torch.no_grad():
    for _ in range(3):
        mlp(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        mlp(x)
print(json.dumps({"kept": kept, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""

glibc_linux = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None, reason="glibc on Linux only"
)


def probe(mode: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "LLAVAKIT_KEEP_FREED_MEMORY"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        env={**clean, "PYTHONPATH": SRC, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc_linux
def test_freed_memory_is_reused_without_page_faults() -> None:
    plain, kept = probe("plain"), probe("keep")
    assert kept["kept"] is True
    # per forward, 3 intermediates of 47 MB (+ their GELU outputs) mapped anew: ~69,000 pages of 4 KiB; reused:
    # none, or now and then one 47 MB block placed anew (~11,500 pages)
    assert plain["faults"] > 80000, plain
    assert kept["faults"] < plain["faults"] / 10, (plain, kept)


@glibc_linux
def test_opt_out_and_user_settings_are_respected() -> None:
    assert probe("keep", LLAVAKIT_KEEP_FREED_MEMORY="0")["kept"] is False
    assert probe("keep", MALLOC_TRIM_THRESHOLD_="1000000")["kept"] is False


@pytest.mark.parametrize(
    ("value", "off"),
    [("0", True), ("false", True), (" Off ", True), ("NO", True), ("1", False), ("yes", False), ("", False)],
)
def test_opt_out_spellings(monkeypatch: pytest.MonkeyPatch, value: str, off: bool) -> None:
    monkeypatch.setenv(memory.ENV_OPT_OUT, value)
    assert memory._opted_out() is off
