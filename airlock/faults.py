"""Fault injection for crash-safety tests: ``AIRLOCK_FAULT=<point>[,<point>...]`` kills the process
with SIGKILL when execution reaches a named write boundary. Inert unless the variable is set."""

from __future__ import annotations

import os
import signal


def fault_point(name: str) -> None:
    """A named write boundary. Tests set AIRLOCK_FAULT to kill -9 the process exactly here."""
    wanted = os.environ.get("AIRLOCK_FAULT")
    if wanted and name in wanted.split(","):
        os.kill(os.getpid(), signal.SIGKILL)
