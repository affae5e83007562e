"""Repository test fixtures: three small model versions, the deltas between them, CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from airlock.hashing import sha256_file, tree_files
from airlock.repo import Repository
from tests.repo.models import make_model


@dataclass
class Versions:
    src: dict[str, Path]  # version -> source directory
    deltas: dict[tuple[str, str], Path]  # (from, to) -> .aldelta


@pytest.fixture(scope="session")
def versions(tmp_path_factory: pytest.TempPathFactory) -> Versions:
    from airlock.delta import make_delta

    base = tmp_path_factory.mktemp("models")
    src = {
        "1.0.0": make_model(base / "1.0.0"),
        "1.1.0": make_model(base / "1.1.0", change_layer=1, seed=3),
        "1.2.0": make_model(base / "1.2.0", change_layer=0, seed=4),
    }
    deltas = {}
    for a, b in (("1.0.0", "1.1.0"), ("1.1.0", "1.2.0")):
        deltas[(a, b)] = base / f"m-{a}-{b}.aldelta"
        make_delta(src[a], src[b], deltas[(a, b)], from_version=a, to_version=b)
    return Versions(src, deltas)


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repository]:
    r = Repository(tmp_path / "root", lock_timeout=5)
    yield r
    r.close()


def hashes(d: Path) -> dict[str, str]:
    return {rel: sha256_file(d / rel) for rel in tree_files(d)}


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
