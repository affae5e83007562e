"""Reused, page-aligned buffers for blocks and frames (bundle staging, coded payloads).

A fresh 64 MiB allocation is mapped, and zeroed by the kernel, on first touch: on every block that
was a fifth of staging's CPU in a profile (and on a VM that gives freed memory back to its host, up
to ten times more). Reusing buffers keeps only the bytes; starting them on a page lets
``fsutil.BlockWriter`` hand them to O_DIRECT as they are."""

from __future__ import annotations

import threading
from typing import Protocol

import numpy as np

from airlock.fsutil import DIRECT_ALIGN


class Buffers:
    """Pools of buffers by capacity: at most ``keep`` idle buffers per capacity are held; requests
    under ``SMALL`` are plain (unaligned) allocations."""

    SMALL = 1 << 20

    def __init__(self, keep: int = 12) -> None:
        self.keep = keep
        self._free: dict[int, list[np.ndarray]] = {}
        self._lock = threading.Lock()

    def get(self, n: int, capacity: int) -> np.ndarray:
        """A buffer of ``n`` bytes (uninitialised, starting on a page: O_DIRECT writes it as it is),
        from the pool of ``capacity``-byte buffers."""
        if n < self.SMALL or n > capacity:
            return np.empty(n, dtype=np.uint8)
        with self._lock:
            free = self._free.get(capacity)
            owner = free.pop() if free else None
        if owner is None:
            owner = np.empty(capacity + DIRECT_ALIGN, dtype=np.uint8)
        skip = -owner.ctypes.data % DIRECT_ALIGN
        return owner[skip:skip + n]

    def put(self, buf: np.ndarray | None) -> None:
        """Give back a buffer from ``get`` (a view of a pooled buffer returns the whole buffer)."""
        owner = buf.base if buf is not None and isinstance(buf.base, np.ndarray) else None
        if owner is None or owner.nbytes < self.SMALL + DIRECT_ALIGN:
            return
        with self._lock:
            free = self._free.setdefault(owner.nbytes - DIRECT_ALIGN, [])
            if len(free) < self.keep and not any(b is owner for b in free):
                free.append(owner)


class Reader(Protocol):
    def readinto(self, buf: memoryview, /) -> int | None: ...


def fill(fh: Reader, view: memoryview) -> int:
    """Read into all of ``view`` (``readinto`` until full); fewer bytes only at the end of ``fh``."""
    got = 0
    while got < len(view):
        k = fh.readinto(view[got:])
        if not k:
            break
        got += k
    return got


def extent(buf: np.ndarray) -> memoryview:
    """``buf``'s memory up to the end of its allocation (a pooled block buffer has room past a short
    last block: ``BlockWriter`` pads into it)."""
    owner = buf.base if isinstance(buf.base, np.ndarray) else None
    if owner is None or not owner.flags.c_contiguous:
        return buf.data
    return owner[buf.ctypes.data - owner.ctypes.data:].data


BUFFERS = Buffers()
