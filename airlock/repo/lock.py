"""An exclusive, process-wide repository lock (fcntl.flock) with a timeout."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from airlock import settings
from airlock.errors import LockBusyError


def _holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "unknown"
    except OSError:
        return "unknown"


@contextlib.contextmanager
def repo_lock(path: Path, timeout: float | None = None, poll: float = 0.05, *,
              shared: bool = False) -> Iterator[None]:
    """Hold the lock for the duration of the block; wait up to ``timeout`` seconds, then raise
    LockBusyError naming the holder (default ``settings.lock_timeout()``). The kernel drops a
    flock when its process dies (kill -9 safe).
    ``shared``: a reader's lock (verify): opened read-only, nothing created or written; readers
    share it and keep writers out. No lock file yet: no writer ever ran, nothing to wait for."""
    wait = settings.lock_timeout() if timeout is None else timeout
    if shared:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            yield
            return
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockBusyError(
                        f"{path}: another operation holds the repository lock ({_holder(path)}); "
                        f"gave up after {wait:g}s", path=str(path)) from None
                time.sleep(poll)
        if not shared:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            if not shared:
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
