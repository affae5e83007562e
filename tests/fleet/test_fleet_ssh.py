"""Install, rolling update, injected failure + automatic rollback, a failed health gate in a batch of
three, unreachable host, idempotence, check mode, rollback and drift over real SSH to three
namespaced hosts (through airlock.fleet).

Every test starts from a state it sets up itself: ``blank`` (empty roots) or ``installed`` (1.0.0 on
every host, restored from a snapshot of one install taken once per module; the paths are the same,
so the catalog's absolute paths hold). Tests run alone and in any order (``pytest -k rollback``)."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from airlock.fleet import FleetResult, run_playbook
from airlock.repo import Repository
from tests.fleet.bundles import MODEL, Bundles, make_bundles
from tests.fleet.netns import Fleet
from tests.support import REPO

pytestmark = pytest.mark.timeout(900)


@dataclass
class Env:
    fleet: Fleet
    bundles: Bundles
    tmp: Path
    inventory: Path

    def run(self, name: str, bundle: Path | None = None, *, inventory: Path | None = None,
            control: str = "cp", **kw: Any) -> FleetResult:
        # every inventory of this module (the fault one too) shares the one anchor dir that
        # _wipe/installed reset with the hosts
        ev: dict[str, Any] = {"airlock_trust": [self.bundles.fingerprint],
                              "airlock_keyring": str(self.bundles.keyring),
                              "airlock_state_dir": str(self.tmp / "control")}
        if bundle is not None:
            ev["airlock_bundle"] = str(bundle)
        ev.update(kw.pop("extravars", {}))
        return run_playbook(name, inventory or self.inventory, ev,
                            private_data_dir=self.tmp / f"runner-{name}",
                            envvars={"ANSIBLE_SSH_CONTROL_PATH_DIR": str(self.tmp / control)}, **kw)

    def root(self, host: str) -> Path:
        return next(h.root for h in self.fleet.hosts if h.name == host)

    def active(self, host: str) -> str | None:
        repo = Repository(self.root(host))
        try:
            return repo.state()["models"].get(MODEL, {}).get("active")
        finally:
            repo.close()


@pytest.fixture(scope="module")
def env(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("fleet-run")
    bundles = make_bundles(tmp / "bundles")
    # the control node's audit-head anchors live with the hosts' state: wiped and restored with them
    inv = fleet.inventory(tmp / "inventory.yml", ansible_python_interpreter=str(REPO / ".venv/bin/python"),
                          airlock_state_dir=str(tmp / "control"))
    yield Env(fleet, bundles, tmp, inv)


def _wipe(env: Env) -> None:
    for h in env.fleet.hosts:
        shutil.rmtree(h.root)
        h.root.mkdir()
    shutil.rmtree(env.tmp / "control", ignore_errors=True)  # fresh hosts: no anchor to hold them to


@pytest.fixture(scope="module")
def installed_snapshot(env: Env) -> Path:
    """1.0.0 installed on every host once per module; a copy of each root kept to restore from."""
    _wipe(env)
    r = env.run("install", env.bundles.full)
    assert r.rc == 0, r.as_dict()
    snap = env.tmp / "installed-snapshot"
    shutil.rmtree(snap, ignore_errors=True)
    for h in env.fleet.hosts:
        shutil.copytree(h.root, snap / h.name, symlinks=True)
    shutil.copytree(env.tmp / "control", snap / "control")
    return snap


@pytest.fixture
def blank(env: Env) -> Env:
    _wipe(env)
    return env


@pytest.fixture
def installed(env: Env, installed_snapshot: Path) -> Env:
    for h in env.fleet.hosts:
        shutil.rmtree(h.root)
        shutil.copytree(installed_snapshot / h.name, h.root, symlinks=True)
    shutil.rmtree(env.tmp / "control", ignore_errors=True)  # the anchors as they were at the snapshot
    shutil.copytree(installed_snapshot / "control", env.tmp / "control")
    return env


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes | str]]:
    """Every path under root: mode, size and content (or link target)."""
    out: dict[str, tuple[int, int, bytes | str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[str(p.relative_to(root))] = (st.st_mode, 0, os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                out[str(p.relative_to(root))] = (st.st_mode, st.st_size, p.read_bytes())
            else:
                out[str(p.relative_to(root))] = (st.st_mode, 0, "")
    return out


def changed(r: FleetResult) -> dict[str, int]:
    return {h: s.get("changed", 0) for h, s in r.stats.items()}


def test_install_full_bundle_on_three_hosts(blank: Env) -> None:
    env = blank
    r = env.run("install", env.bundles.full)
    assert r.rc == 0, r.as_dict()
    assert sorted(h.host for h in r.hosts) == ["host1", "host2", "host3"]
    for h in r.hosts:
        assert (h.result, h.to_version) == ("changed", "1.0.0")
        assert env.active(h.host) == "1.0.0"
        weights = env.root(h.host) / "model_repo" / MODEL / "1.0.0" / "model.safetensors"
        assert weights.stat().st_mode & 0o777 == 0o444


def test_install_rerun_changes_nothing(installed: Env) -> None:
    r = installed.run("install", installed.bundles.full)
    assert r.rc == 0
    assert changed(r) == {"host1": 0, "host2": 0, "host3": 0}


def test_update_check_mode_writes_nothing(installed: Env) -> None:
    env = installed
    before = {h.name: snapshot(h.root) for h in env.fleet.hosts}
    r = env.run("update", env.bundles.delta, check=True, diff=True)
    assert r.rc == 0, r.as_dict()
    assert r.check and all(n > 0 for n in changed(r).values())  # it says what would change ...
    assert all(any("1.0.0 -> 1.1.0" in p for p in h.plan) for h in r.hosts)  # ... with the plan per host
    assert {h.name: snapshot(h.root) for h in env.fleet.hosts} == before  # ... and changes nothing


def _fault_inventory(env: Env, hostvars: dict[str, dict[str, object]]) -> Path:
    return env.fleet.inventory(env.tmp / "inventory-fault.yml", hostvars=hostvars,
                               ansible_python_interpreter=str(REPO / ".venv/bin/python"))


def test_failed_apply_rolls_the_host_back_and_stops_the_rollout(installed: Env) -> None:
    env = installed
    inv = _fault_inventory(env, {"host2": {"airlock_fault": "delta.apply.mid-file"}})
    r = env.run("update", env.bundles.delta, inventory=inv)
    assert r.rc != 0
    assert r.batches == [["host1"], ["host2"]]  # canary, then the failing batch; host3 never started
    assert r.host("host1").result == "changed" and env.active("host1") == "1.1.0"
    h2 = r.host("host2")
    assert h2.result == "failed (rolled back)" and h2.failed_task == "Fail this host"
    assert "Install the bundle's model versions" in (h2.message or "")
    assert env.active("host2") == "1.0.0"
    repo = Repository(env.root("host2"))
    try:
        assert repo.verify(MODEL)["ok"]
    finally:
        repo.close()
    assert "host3" not in r.stats and r.host("host3").result == "not started"
    assert env.active("host3") == "1.0.0"
    assert not (env.root("host3") / "model_repo" / "update_packages" / "staged" / "bundle-delta").exists()


def test_failed_gate_in_a_batch_of_three_rolls_back_only_that_host(installed: Env) -> None:
    """serial ["100%"]: the last host of the one batch fails its health gate. It alone is rolled back
    (all of its rescue runs), reported failed (rolled back); the two healthy hosts keep 1.1.0."""
    env = installed
    inv = _fault_inventory(env, {"host3": {"model_update_health_gate_command": "false"}})
    r = env.run("update", env.bundles.delta, inventory=inv, extravars={"airlock_update_serial": ["100%"]})
    assert r.rc != 0
    assert r.batches == [["host1", "host2", "host3"]]
    assert {h.host: h.result for h in r.hosts} == {"host1": "changed", "host2": "changed",
                                                   "host3": "failed (rolled back)"}
    assert r.stats["host3"]["failures"] == 1 and r.stats["host3"]["rescued"] >= 1
    assert [env.active(h) for h in ("host1", "host2", "host3")] == ["1.1.0", "1.1.0", "1.0.0"]
    assert os.readlink(env.root("host3") / "model_repo" / MODEL / "current") == "1.0.0"


def test_rollout_resumes_in_batches_and_a_rerun_changes_nothing(installed: Env) -> None:
    env = installed
    first = env.run("update", env.bundles.delta, limit="host1")  # the canary alone, as after a stop
    assert first.rc == 0 and env.active("host1") == "1.1.0"
    r = env.run("update", env.bundles.delta)
    assert r.rc == 0, r.as_dict()
    assert r.batches == [["host1"], ["host2"], ["host3"]]  # serial [1, 25%, 100%] of three hosts
    assert changed(r)["host1"] == 0  # already updated: skipped as unchanged
    assert changed(r)["host2"] > 0 and changed(r)["host3"] > 0
    assert {h.host: (h.from_version, h.to_version) for h in r.hosts} == {
        "host1": ("1.1.0", "1.1.0"), "host2": ("1.0.0", "1.1.0"), "host3": ("1.0.0", "1.1.0")}
    assert all(env.active(h) == "1.1.0" for h in ("host1", "host2", "host3"))
    again = env.run("update", env.bundles.delta)
    assert again.rc == 0
    assert changed(again) == {"host1": 0, "host2": 0, "host3": 0}


def test_unreachable_host_is_a_clear_failure(installed: Env) -> None:
    env = installed
    host3 = env.fleet.hosts[2]
    env.fleet.stop_sshd(host3)
    try:
        r = env.run("verify", control="cp-fresh")  # no SSH master connection to reuse
    finally:
        env.fleet.start_sshd(host3)
    assert r.rc != 0
    assert r.host("host3").result == "unreachable"
    assert r.host("host3").message
    assert r.host("host1").result == "ok" and r.host("host2").result == "ok"


def test_rollback_playbook(installed: Env) -> None:
    """On its own: update host2, roll it back, roll it back again (ok, unchanged: idempotent), and
    with an explicit target (airlock rollback --to) unchanged too; host1 is never touched."""
    env = installed
    up = env.run("update", env.bundles.delta, limit="host2")
    assert up.rc == 0 and env.active("host2") == "1.1.0"
    r = env.run("rollback", limit="host2")
    assert r.rc == 0, r.as_dict()
    assert (r.host("host2").from_version, r.host("host2").to_version) == ("1.1.0", "1.0.0")
    assert env.active("host2") == "1.0.0" and env.active("host1") == "1.0.0"
    again = env.run("rollback", limit="host2")
    assert again.rc == 0, again.as_dict()
    assert changed(again) == {"host2": 0} and env.active("host2") == "1.0.0"
    to = env.run("rollback", limit="host2", extravars={"airlock_rollback_to": "1.0.0"})
    assert to.rc == 0 and changed(to) == {"host2": 0}


def test_verify_reports_drift_and_fails(installed: Env) -> None:
    env = installed
    clean = env.run("verify", check=True, diff=True)
    assert clean.rc == 0, clean.as_dict()
    target = env.root("host1") / "model_repo" / MODEL / "1.0.0" / "tokenizer.json"
    os.chmod(target, 0o644)
    target.write_bytes(target.read_bytes().replace(b"t", b"x", 1))
    os.chmod(target, 0o444)
    r = env.run("verify", check=True, diff=True)
    assert r.rc != 0
    assert r.host("host1").result == "failed"
    assert "tokenizer.json" in (r.host("host1").message or "")
    assert r.host("host2").result == "ok" and r.host("host3").result == "ok"
