"""Monitoring fixtures: a real appliance repository (real signed bundles, real gpg) and free ports."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from airlock.repo import Repository
from tests.fleet.bundles import Bundles, make_bundles
from tests.repo.test_anchors import install_host
from tests.support import require_tool


@pytest.fixture(scope="session")
def mon_bundles(tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    return make_bundles(tmp_path_factory.mktemp("mon-bundles"))


@pytest.fixture
def appliance(tmp_path: Path, mon_bundles: Bundles) -> Iterator[Repository]:
    """A host that installed the full bundle (1.0.0) then the delta bundle (1.1.0)."""
    repo = install_host(tmp_path / "root", mon_bundles, tmp_path)
    yield repo
    repo.close()


@pytest.fixture
def textfile_dir(tmp_path: Path) -> Path:
    d = tmp_path / "textfile"
    d.mkdir()
    return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def promtool() -> str:
    return require_tool("promtool", "apt-get install prometheus")
