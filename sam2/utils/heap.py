"""Giving the C heap's free pages back to the OS during long propagations (glibc ``malloc_trim``)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any

#: Propagation gives freed heap memory back to the OS every this many frames (see release_free_heap).
HEAP_RELEASE_EVERY = 64


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Any:
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        trim = None
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_free_heap() -> bool:
    """Return the free pages of the C heap to the OS (glibc ``malloc_trim``; False where unavailable).

    A long propagation keeps thousands of small tensors alive for a while (stored outputs, pathway
    memories) among short-lived per-frame ones; glibc keeps the pages freed between them, so the
    process's resident memory would grow with heap fragmentation although the memory in use does not.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
