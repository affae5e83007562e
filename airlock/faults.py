"""Fault injection for crash-safety tests: ``AIRLOCK_FAULT=<point>[,<point>...]`` kills the process
with SIGKILL when execution reaches a named write boundary. Inert unless the variable is set."""

from __future__ import annotations

import os
import signal

_parent: int | None = None


def worker_of(parent: int) -> None:
    """Mark this process as a worker of ``parent``: a fault reached here kills the parent too, as a
    kill -9 of the command would (the worker dies with it, see ``PR_SET_PDEATHSIG``)."""
    global _parent
    _parent = parent


def fault_point(name: str) -> None:
    """A named write boundary. Tests set AIRLOCK_FAULT to kill -9 the process exactly here."""
    wanted = os.environ.get("AIRLOCK_FAULT")
    if wanted and name in wanted.split(","):
        if _parent is not None:
            os.kill(_parent, signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
