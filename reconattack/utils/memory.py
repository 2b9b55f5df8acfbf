"""Returning freed memory to the operating system.

A long loop that allocates and frees large buffers (an evaluation pass: dense SIFT maps, images,
feature batches every step) can leave glibc's heaps holding what it freed: the resident size of
the process then grows with the number of steps although the live tensors do not (glibc raises
its mmap threshold after each freed large block, so later blocks of that size come from heaps
that fragment). :func:`release_freed_memory` asks glibc to hand the free pages of all its heaps
back (``malloc_trim(0)``); elsewhere (macOS, musl, Windows) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_freed_memory() -> bool:
    """Give the C heap's free pages back to the OS; True when glibc did release some."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
