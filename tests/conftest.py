"""Suite-wide rule: in CI (CI=true) nothing may be skipped; locally a skip names the install command.

Fixtures shared by several test packages live here, where every package sees them (a package's own
conftest.py may still define a fixture of the same name for itself: tests/provision's ``keys`` are
apt signing keys). Their helpers are plain modules: tests/gpg.py, tests/bundle/factory.py,
tests/repo/models.py, tests/repo/verify_fleet.py, tests/crypto/softhsm.py, tests/fleet/bundles.py,
tests/support.py."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from airlock.bundle import Trust
from tests.bundle.factory import BundleFactory
from tests.crypto.softhsm import SoftHsm, make_softhsm
from tests.fleet.bundles import Bundles, make_bundles
from tests.gpg import Keys, kill_agents, make_keys
from tests.repo.models import Versions, make_versions
from tests.repo.verify_fleet import Fleet, make_fleet
from tests.support import IN_CI, require_tool


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not IN_CI:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if skipped:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if reporter:
            reporter.write_line(f"CI=true: {len(skipped)} test(s) skipped; a skip is a failure in CI",
                                red=True)


@pytest.fixture(scope="session", autouse=True)
def control_node_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Playbooks run with a host-list inventory keep the audit-head anchors in $AIRLOCK_STATE_DIR
    (else ~/.local/state/airlock): one directory per test session, so an anchor a previous session
    left for the same repository path (pytest reuses pytest-0 after a clean /tmp) is never read."""
    state = tmp_path_factory.mktemp("control-state")
    before = os.environ.get("AIRLOCK_STATE_DIR")
    os.environ["AIRLOCK_STATE_DIR"] = str(state)
    yield state
    if before is None:
        os.environ.pop("AIRLOCK_STATE_DIR", None)
    else:
        os.environ["AIRLOCK_STATE_DIR"] = before


@pytest.fixture(scope="session")
def gpg_keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    """Real gpg keys (signer, other, revoked, expired), made once per session."""
    require_tool("gpg", "apt-get install gnupg")
    k = make_keys(tmp_path_factory.mktemp("gpg"))
    yield k
    kill_agents(k)


@pytest.fixture(scope="session")
def keys(gpg_keys: Keys) -> Keys:
    """``gpg_keys`` under the name most tests use."""
    return gpg_keys


@pytest.fixture
def factory(keys: Keys, tmp_path: Path) -> BundleFactory:
    return BundleFactory(keys, tmp_path)


@pytest.fixture
def trust(keys: Keys) -> Trust:
    """Trust in the signer only, its public key in a keyring of its own."""
    return keys.trust(["signer"], "signer")


@pytest.fixture(scope="session")
def versions(tmp_path_factory: pytest.TempPathFactory) -> Versions:
    """Three small model versions and the deltas between them, made once per session."""
    return make_versions(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    """Real signed bundles of a tiny model: full 1.0.0 and delta 1.0.0 -> 1.1.0 (and more, see
    tests/fleet/bundles.py), with their own gpg key and keyring."""
    return make_bundles(tmp_path_factory.mktemp("bundles"))


@pytest.fixture
def fleet(tmp_path: Path, bundles: Bundles) -> Fleet:
    """Two local-connection hosts h1 and h2 with ``bundles`` installed (tests/repo/verify_fleet.py).
    tests/fleet has a ``fleet`` of its own: the SSH hosts in network namespaces."""
    return make_fleet(tmp_path, bundles)


@pytest.fixture
def softhsm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SoftHsm:
    """A fresh SoftHSM2 token in a per-test token directory (SOFTHSM2_CONF set for this test)."""
    util = require_tool("softhsm2-util", "apt-get install -y softhsm2")
    hsm = make_softhsm(util, tmp_path)
    monkeypatch.setenv("SOFTHSM2_CONF", str(hsm.conf))
    return hsm
