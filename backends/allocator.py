"""glibc's malloc set for a training loop on CPU: memory a step frees stays with the process.

A training step allocates and frees the same activations every step, and PyTorch's CPU allocator keeps
no cache of its own. With glibc's defaults, blocks above a threshold are mapped fresh from the kernel and
unmapped when freed, and the heap's top is trimmed back, both thresholds moving with what was freed
last. Each step then faults its activations in again, page by page: on the demo's 32-px step 12,300
minor page faults a step and a fifth of the CPU time spent in the kernel (`clipa-run recipes/demo.yaml`
spent 51 of its 271 CPU-s there, 2026-11-30).

Fixing both thresholds (``keep_freed_memory``) keeps those pages: 100 steps of the demo's stages in one
process, one thread, the step tests/test_allocator.py runs (timed in a scratch script, 2026-11-30):
32 px 234 -> 291 samples/s, 64 px 101 -> 120, kernel time 2.6 s and 4.9 s -> 0, page faults per step
12,300 and 23,000 -> 0. Fixing only one of the
two is worse than neither, because it stops glibc adjusting the other (trim only: 166 samples/s, mmap
only: 214). The cost: the process keeps its largest heap, which the next step reuses.

A whole run, `clipa-run` on the demo recipe at a fifth of its samples (6,400 + 1,600), 2026-11-30: 60 s
wall and 64.4 CPU-s (10.8 in the kernel) -> 50 s and 54.3 CPU-s (1.8), the same top-1 to the last
digit, peak RSS 1.12 -> 1.22 GB. The JAX backend, same run: 61.3 s either way (XLA on CPU does not
allocate per step through malloc), so only the torch worker calls this.

A user's own MALLOC_*_ variables (any of them also stops glibc's adjusting) or a preloaded
jemalloc/tcmalloc/mimalloc win: nothing is set then.
"""
from __future__ import annotations

import ctypes
import os
import sys

# <malloc.h>: mallopt's parameters
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
TRIM_BYTES = 2**31 - 1   # mallopt takes a C int: the largest, so the heap is never trimmed
MMAP_BYTES = 32 << 20    # glibc's largest mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
_USER_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


def as_environment() -> dict[str, str]:
    """The same two settings as glibc's environment variables, for a process clipa does not start itself
    (benchmarks/peer_openclip.py runs OpenCLIP's trainer with them, so both trainers get one allocator)."""
    return {"MALLOC_TRIM_THRESHOLD_": str(TRIM_BYTES), "MALLOC_MMAP_THRESHOLD_": str(MMAP_BYTES)}


def keep_freed_memory() -> bool:
    """Set both thresholds for this process; False (and nothing set) without glibc, when the user set
    glibc's malloc variables, or with another allocator preloaded."""
    if (sys.platform != "linux" or any(k in os.environ for k in _USER_SETTINGS)
            or any(a in os.environ.get("LD_PRELOAD", "") for a in ("jemalloc", "tcmalloc", "mimalloc"))):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 -- glibc only (musl's mallopt does nothing)
    except (OSError, AttributeError):
        return False
    return bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_BYTES)) and bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_BYTES))
