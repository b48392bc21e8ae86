"""Keep a decoding worker's freed memory for its next clip instead of handing it back to the kernel.

A clip decoded from JPEG frames allocates a few MB in buffers of 0.1-1 MB (13 decoded X3D-S frames of
182x428 are 3 MB) and frees them when the clip is done. glibc's malloc gives such buffers their own
``mmap`` or returns the top of its heap to the kernel once more than twice its mmap threshold is free,
so every clip touches fresh pages: about 370 page faults an X3D-S clip, 1.7-2.5 ms of a 10-12 ms clip on this
project's machine (a virtual machine, where a page fault costs the most). With the thresholds raised the next clip
reuses the same pages (BENCHMARKS.md, "Frame shards: keeping freed memory"). Shard datasets set it in their
DataLoader workers only: a process-wide setting is the worker's to make, not that of the program that made the loader.
"""
from __future__ import annotations

import ctypes
import functools
import os

# mallopt's parameter numbers (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 16 * 1024 * 1024
TRIM_THRESHOLD = 64 * 1024 * 1024
TOP_PAD = 16 * 1024 * 1024


def is_glibc() -> bool:
    """Whether this process's C library is glibc (whose ``mallopt``, ``malloc_trim`` and ``mallinfo2`` this uses)."""
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (AttributeError, ValueError, OSError):  # no confstr (Windows), or not this name (musl, macOS)
        return False


@functools.cache
def keep_freed_memory() -> bool:
    """Raise glibc's malloc thresholds in this process, once: buffers up to 16 MB come from the heap (not a
    ``mmap`` each), the heap grows 16 MB at a time (not a page at a time: 12 page faults a clip instead of 1),
    and up to 64 MB freed at its top stay with the process.
    A process keeps at most that much memory it does not use; children forked later inherit the setting.

    Returns whether the thresholds are set (False where the C library is not glibc: musl, macOS, Windows).
    """
    if not is_glibc():
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(parameter, value) == 1 for parameter, value in (
        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_TOP_PAD, TOP_PAD)))
