"""Repository test fixtures: a fresh repository, CLI runner (the ``versions`` fixture, three small model
versions and their deltas, is in tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from airlock.repo import Repository
from tests.repo.models import Versions
from tests.support import file_hashes

__all__ = ["Versions", "assert_same_tree", "cli", "hashes", "leftovers"]


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repository]:
    r = Repository(tmp_path / "root", lock_timeout=5)
    yield r
    r.close()


hashes = file_hashes  # the one content comparison (tests/support.py)


def assert_same_tree(a: Path, b: Path) -> None:
    assert hashes(a) == hashes(b)


def leftovers(root: Path) -> list[str]:
    return sorted(str(p) for p in (root / "model_repo").rglob(".*") if p.name not in (".lock",)
                  and not p.name.startswith(".model_catalog"))


def cli(root: Path, *args: str, fault: str | None = None, env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the real ``airlock`` CLI in a subprocess (so a fault point is a real kill -9)."""
    e = {**os.environ, "AIRLOCK_ROOT": str(root), "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    e.pop("AIRLOCK_FAULT", None)
    if fault:
        e["AIRLOCK_FAULT"] = fault
    e.update(env or {})
    return subprocess.run([sys.executable, "-c", "from airlock.cli import main; main()", *args],
                          env=e, capture_output=True, text=True, timeout=timeout)


def __getattr__(name: str) -> object:
    """Fixtures that moved to tests/conftest.py, under their old import path for modules not moved
    yet (a module that imports one registers it again for itself: drop the import instead)."""
    if name in ("versions",):
        import tests.conftest

        return getattr(tests.conftest, name)
    raise AttributeError(name)
