"""Process-level settings for CPU training.

glibc's ``malloc`` serves every block above its mmap threshold (128 KiB, adapting up to 32 MiB) with a fresh
``mmap`` and gives it back with ``munmap`` when freed; it also trims the top of the heap as soon as 128 KiB are free
there. A training step allocates and frees the same activation- and gradient-sized blocks (megabytes each) every
step, so with those defaults every step page-faults its memory in again, and the kernel zeroes each page first.
On the project's 2-core machine that made an elementwise product of two 11 MB tensors take 8 ms instead of 1 ms and
cost ~10% of a GenLIP training step (``BENCHMARKS.md``). jemalloc and tcmalloc avoid it by keeping freed memory;
:func:`retain_freed_memory` gets the same effect from glibc itself: no ``mmap`` for large blocks and no trimming,
so freed blocks are reused by the next step. The price is that the process keeps its peak heap size until it exits,
which is what a training process does anyway.

The trainers apply it on the CPU unless ``train.cpu_allocator=system``; nothing changes on CUDA (the caching
allocator already reuses device memory) or where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

log = logging.getLogger(__name__)

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
# variables with which a user has already chosen glibc malloc behaviour; we then leave it alone
_USER_MALLOC_ENV = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
_applied: str | None = None

ALLOCATOR_MODES = ("retain", "system")


def _glibc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") else None


def retain_freed_memory() -> str:
    """Make glibc keep freed memory in the process (see the module docstring). Idempotent.

    Returns what was done, for the run log: ``"retain"`` when applied, otherwise the reason it was not.
    """
    global _applied
    if _applied is not None:
        return _applied
    preload = os.environ.get("LD_PRELOAD", "")
    if any(name in preload for name in ("jemalloc", "tcmalloc", "mimalloc")):
        _applied = "left alone: a replacement allocator is preloaded"
    elif any(k in os.environ for k in _USER_MALLOC_ENV) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        _applied = "left alone: glibc malloc is configured by the environment"
    elif (libc := _glibc()) is None:
        _applied = "left alone: not glibc"
    else:
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
        _applied = "retain" if ok else "left alone: mallopt refused the settings"
    log.info("CPU allocator: %s", _applied)
    return _applied


def configure_cpu_allocator(mode: str) -> str:
    """Apply a recipe's ``train.cpu_allocator`` (``retain`` or ``system``); returns what was done."""
    if mode not in ALLOCATOR_MODES:
        raise ValueError(f"cpu_allocator must be one of {ALLOCATOR_MODES}, not {mode!r}")
    if mode == "retain":
        return retain_freed_memory()
    # mallopt settings cannot be taken back to glibc's adaptive defaults; say so instead of claiming "system"
    return "retain (set earlier in this process)" if _applied == "retain" else "system"
