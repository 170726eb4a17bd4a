"""Keep freed memory in the process (glibc), so large activations do not page-fault afresh on every forward.

By default glibc hands large allocations to ``mmap`` and returns freed space at the top of the heap to the
kernel (``M_MMAP_THRESHOLD`` adapts up to 32 MiB, ``M_TRIM_THRESHOLD`` follows it). A CPU forward of LLaVA
allocates and frees tensors of tens of MB in every layer, so the kernel maps, zeroes and unmaps the same
gigabytes again and again: one CLIP-L/336 forward over the 5 tiles of a 1024x768 image took ~500,000 minor
page faults (~2 GB of fresh pages) and 1.6-2.1 s on a 2-core Xeon; with both thresholds raised, 0 faults and
1.3-1.4 s (``benchmarks/bench_generate.py``; README "Speed on a CPU"). The price: memory freed by the process is
kept for reuse instead of going back to the system, so the resident size stays at its high-water mark.

``keep_freed_memory()`` raises both thresholds once per process (``llavakit.load`` calls it for CPU models).
It does nothing where libc is not glibc, and it leaves alone a process whose ``MALLOC_TRIM_THRESHOLD_``,
``MALLOC_MMAP_THRESHOLD_`` or ``GLIBC_TUNABLES`` are set (the user chose), or when ``LLAVAKIT_KEEP_FREED_MEMORY``
is ``0``, ``false``, ``no`` or ``off``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from functools import cache

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD = 2**31 - 1  # bytes: never give the top of the heap back
MMAP_THRESHOLD = 2**30  # bytes: allocations below 1 GiB come from the heap (freed ones are reused)
FALLBACK_MMAP_THRESHOLD = 2**25  # if this glibc refuses 1 GiB: 32 MiB, the ceiling of its dynamic threshold
ENV_OPT_OUT = "LLAVAKIT_KEEP_FREED_MEMORY"
GLIBC_ENV = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")
OFF_VALUES = ("0", "false", "no", "off")


def _opted_out() -> bool:
    """``LLAVAKIT_KEEP_FREED_MEMORY`` says off; any other value (or none) leaves the setting on."""
    return os.environ.get(ENV_OPT_OUT, "").strip().lower() in OFF_VALUES


@cache
def keep_freed_memory() -> bool:
    """Raise glibc's trim and mmap thresholds for this process; True when they were set (once, cached)."""
    if not sys.platform.startswith("linux") or _opted_out():
        return False
    if any(k in os.environ for k in GLIBC_ENV):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 (present in glibc only)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # the mmap threshold first: a trim threshold set alone freezes the mmap threshold at 128 KiB (worse)
    if not (mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) or mallopt(M_MMAP_THRESHOLD, FALLBACK_MMAP_THRESHOLD)):
        return False
    return bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
