"""Test helpers: tools and privileges a test needs. In CI (CI=true) a missing one fails, never skips."""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_tool(tool: str, install: str) -> str:
    """Return the path of ``tool``; skip locally (with the install command) and fail in CI."""
    path = shutil.which(tool)
    if path:
        return path
    message = f"{tool} not found; install it with: {install}"
    if IN_CI:
        pytest.fail(f"CI must not skip: {message}")
    pytest.skip(message)


def require_root(reason: str) -> None:
    if os.geteuid() == 0:
        return
    message = f"needs root: {reason}; run the suite as root (sudo make test)"
    if IN_CI:
        pytest.fail(f"CI must not skip: {message}")
    pytest.skip(message)


