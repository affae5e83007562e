"""Process-wide malloc settings for bounded memory on glibc.

glibc raises its mmap threshold to the size of each large block freed (up to 32 MiB), after which
the 4 MiB chunk buffers of a delta come from the heap and its arenas, where small long-lived objects
pin them. A fixed threshold keeps every buffer of 1 MiB or more in its own mapping, returned to the
system when freed: peak RSS then follows the work in flight, not the history of the process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1024 * 1024


@functools.cache
def bound_heap() -> bool:
    """Fix the mmap threshold (glibc only; elsewhere a no-op). Returns whether it was applied."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):
        return False
