"""Monitoring fixtures: a real appliance repository (real signed bundles, real gpg), its scheduled
integrity check's units, a textfile directory. Helpers are in helpers.py (free_port and promtool are
re-exported here for modules not moved yet)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from airlock.repo import Repository
from tests.fleet.bundles import Bundles, install_host, make_bundles
from tests.monitoring.helpers import AIRLOCK, free_port, promtool
from tests.monitoring.render import render_integrity_check

__all__ = ["free_port", "promtool"]


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


@pytest.fixture
def check_units(appliance: Repository, textfile_dir: Path, mon_bundles: Bundles,
                tmp_path: Path) -> tuple[Path, Path]:
    """roles/integrity_check's service and timer for ``appliance`` (as root, signatures checked
    against ``mon_bundles``' key), rendered into tmp_path/units."""
    return render_integrity_check(
        tmp_path / "units", integrity_check_airlock=AIRLOCK, integrity_check_root=str(appliance.layout.root),
        integrity_check_textfile_dir=str(textfile_dir), integrity_check_user="root",
        integrity_check_group="root", integrity_check_trust=[mon_bundles.fingerprint],
        integrity_check_keyring=str(mon_bundles.keyring))
