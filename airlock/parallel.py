"""Ordered, bounded parallel map: both cores work, memory stays at ``window`` chunks in flight.
Shared by the delta codec and the encrypted-file stream (zstd, numpy and AES-GCM release the GIL)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

WORKERS = 2
WINDOW = 4


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int = WORKERS,
                window: int = WINDOW) -> Iterator[R]:
    """Like ``map`` but on a thread pool (zstd and numpy release the GIL); results in input order."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="airlock-worker") as ex:
        pending: deque[Future[R]] = deque()
        try:
            for item in items:
                pending.append(ex.submit(fn, item))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for fut in pending:
                fut.cancel()
