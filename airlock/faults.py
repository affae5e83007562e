"""Fault injection for crash-safety tests: ``AIRLOCK_FAULT=<point>[,<point>...]`` kills the process
with SIGKILL when execution reaches a named write boundary; ``AIRLOCK_PAUSE=<point>:<file>`` makes
it create ``<file>`` the first time it gets there and wait (at most a minute) until the test has
removed it, so the test can pull a stick or press Ctrl-C exactly there. Inert unless set."""

from __future__ import annotations

import os
import signal
import time

from airlock import settings

_parent: int | None = None
_paused: set[str] = set()


def worker_of(parent: int) -> None:
    """Mark this process as a worker of ``parent``: a fault reached here kills the parent too, as a
    kill -9 of the command would (the worker dies with it, see ``PR_SET_PDEATHSIG``)."""
    global _parent
    _parent = parent


def fault_point(name: str) -> None:
    """A named write boundary. Tests set AIRLOCK_FAULT to kill -9 the process exactly here."""
    if name in settings.faults():
        if _parent is not None:
            os.kill(_parent, signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
    pause = settings.pause()
    if pause and pause[0] == name and name not in _paused:
        _paused.add(name)
        flag = pause[1]
        with open(flag, "w") as fh:
            fh.write(str(os.getpid()))
        deadline = time.monotonic() + 60
        while os.path.exists(flag) and time.monotonic() < deadline:
            time.sleep(0.05)
