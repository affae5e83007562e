"""Install, rolling update, injected failure + automatic rollback, unreachable host, idempotence,
check mode, rollback and drift over real SSH to three namespaced hosts (through airlock.fleet).

The tests run in file order and share the fleet's repositories: each starts from the state the
previous one left (install -> failed rollout -> resumed rollout -> ...)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from airlock.fleet import FleetResult, run_playbook
from airlock.repo import Repository
from tests.fleet.bundles import MODEL, Bundles, make_bundles
from tests.fleet.conftest import REPO
from tests.fleet.netns import Fleet

pytestmark = pytest.mark.timeout(900)


@dataclass
class Env:
    fleet: Fleet
    bundles: Bundles
    tmp: Path
    inventory: Path

    def run(self, name: str, bundle: Path | None = None, *, inventory: Path | None = None,
            control: str = "cp", **kw: Any) -> FleetResult:
        ev: dict[str, Any] = {"airlock_trust": [self.bundles.fingerprint],
                              "airlock_keyring": str(self.bundles.keyring)}
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
    inv = fleet.inventory(tmp / "inventory.yml", ansible_python_interpreter=str(REPO / ".venv/bin/python"))
    yield Env(fleet, bundles, tmp, inv)


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


def test_install_full_bundle_on_three_hosts(env: Env) -> None:
    r = env.run("install", env.bundles.full)
    assert r.rc == 0, r.as_dict()
    assert sorted(h.host for h in r.hosts) == ["host1", "host2", "host3"]
    for h in r.hosts:
        assert (h.result, h.to_version) == ("changed", "1.0.0")
        assert env.active(h.host) == "1.0.0"
        weights = env.root(h.host) / "model_repo" / MODEL / "1.0.0" / "model.safetensors"
        assert weights.stat().st_mode & 0o777 == 0o444


def test_install_rerun_changes_nothing(env: Env) -> None:
    r = env.run("install", env.bundles.full)
    assert r.rc == 0
    assert changed(r) == {"host1": 0, "host2": 0, "host3": 0}


def test_update_check_mode_writes_nothing(env: Env) -> None:
    before = {h.name: snapshot(h.root) for h in env.fleet.hosts}
    r = env.run("update", env.bundles.delta, check=True, diff=True)
    assert r.rc == 0, r.as_dict()
    assert all(n > 0 for n in changed(r).values())  # it says what would change ...
    assert {h.name: snapshot(h.root) for h in env.fleet.hosts} == before  # ... and changes nothing


def test_failed_apply_rolls_the_host_back_and_stops_the_rollout(env: Env) -> None:
    inv = env.fleet.inventory(env.tmp / "inventory-fault.yml",
                              hostvars={"host2": {"airlock_fault": "delta.apply.mid-file"}},
                              ansible_python_interpreter=str(REPO / ".venv/bin/python"))
    r = env.run("update", env.bundles.delta, inventory=inv)
    assert r.rc != 0
    assert r.batches == [["host1"], ["host2"]]  # canary, then the failing batch; host3 never started
    assert r.host("host1").result == "changed" and env.active("host1") == "1.1.0"
    h2 = r.host("host2")
    assert h2.result == "failed (rolled back)" and h2.failed_task == "Stop this host"
    assert env.active("host2") == "1.0.0"
    repo = Repository(env.root("host2"))
    try:
        assert repo.verify(MODEL)["ok"]
    finally:
        repo.close()
    assert "host3" not in r.stats and r.host("host3").result == "not started"
    assert env.active("host3") == "1.0.0"
    assert not (env.root("host3") / "model_repo" / "update_packages" / "staged" / "bundle-delta").exists()


def test_rerun_resumes_in_batches(env: Env) -> None:
    r = env.run("update", env.bundles.delta)
    assert r.rc == 0, r.as_dict()
    assert r.batches == [["host1"], ["host2"], ["host3"]]  # serial [1, 25%, 100%] of three hosts
    assert changed(r)["host1"] == 0  # already updated: skipped as unchanged
    assert changed(r)["host2"] > 0 and changed(r)["host3"] > 0
    assert {h.host: (h.from_version, h.to_version) for h in r.hosts} == {
        "host1": ("1.1.0", "1.1.0"), "host2": ("1.0.0", "1.1.0"), "host3": ("1.0.0", "1.1.0")}
    assert all(env.active(h) == "1.1.0" for h in ("host1", "host2", "host3"))


def test_update_rerun_changes_nothing(env: Env) -> None:
    r = env.run("update", env.bundles.delta)
    assert r.rc == 0
    assert changed(r) == {"host1": 0, "host2": 0, "host3": 0}


def test_unreachable_host_is_a_clear_failure(env: Env) -> None:
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


def test_rollback_playbook(env: Env) -> None:
    r = env.run("rollback", limit="host2")
    assert r.rc == 0, r.as_dict()
    assert (r.host("host2").from_version, r.host("host2").to_version) == ("1.1.0", "1.0.0")
    assert env.active("host2") == "1.0.0" and env.active("host1") == "1.1.0"
    again = env.run("rollback", limit="host2", extravars={"airlock_rollback_to": "1.0.0"})
    assert again.rc == 0 and changed(again) == {"host2": 0}


def test_verify_reports_drift_and_fails(env: Env) -> None:
    clean = env.run("verify", check=True, diff=True)
    assert clean.rc == 0, clean.as_dict()
    target = env.root("host1") / "model_repo" / MODEL / "1.1.0" / "tokenizer.json"
    os.chmod(target, 0o644)
    target.write_bytes(target.read_bytes().replace(b"t1", b"x1", 1))
    os.chmod(target, 0o444)
    r = env.run("verify", check=True, diff=True)
    assert r.rc != 0
    assert r.host("host1").result == "failed"
    assert "tokenizer.json" in (r.host("host1").message or "")
    assert r.host("host2").result == "ok" and r.host("host3").result == "ok"
