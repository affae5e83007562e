"""Rollout semantics of playbooks/update.yml on a local fleet of six hosts (ansible_connection=local,
one repository root per host) and a load balancer host: for every batch shape, a host whose apply
(an injected kill -9 mid-file) or health gate (a site command that exits 1) fails is rolled back,
put back into the load balancer once its rollback verified, and reported ``failed (rolled back)``;
healthy hosts keep the new version; ``airlock_max_fail_percentage`` and ``airlock_any_errors_fatal``
decide, after each batch, whether the rollout goes on.

Each case starts from the same installed fleet (1.0.0 everywhere), restored from a snapshot taken
once per module, so every case runs alone and in any order. What a host serves is read from disk:
the ``current`` link and the catalog's active version."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from airlock.fleet import FleetResult, run_playbook
from airlock.repo import Repository
from tests.fleet.bundles import MODEL, Bundles, make_bundles

pytestmark = pytest.mark.timeout(900)

HOSTS = tuple(f"local-{c}" for c in "abcdef")
OLD, NEW = "1.0.0", "1.1.0"
ROLLED_BACK, CHANGED, NOT_STARTED = "failed (rolled back)", "changed", "not started"
GATE, APPLY = "gate", "apply"  # how a host fails: its health gate command, or a kill -9 mid-apply


@dataclass
class LocalFleet:
    base: Path
    bundles: Bundles
    snapshot: Path
    lb_log: Path

    def root(self, host: str) -> Path:
        return self.base / "fleet" / host

    def inventory(self, failing: dict[str, str], **groupvars: Any) -> Path:
        hosts: dict[str, dict[str, Any]] = {}
        for host in HOSTS:
            hv: dict[str, Any] = {"airlock_root": str(self.root(host))}
            if failing.get(host) == GATE:
                hv["model_update_health_gate_command"] = "false"
            elif failing.get(host) == APPLY:
                hv["airlock_fault"] = "delta.apply.mid-file"
            hosts[host] = hv
        # The LB commands log what the host serves at that moment (drain/enable, current link).
        current = "$(readlink {{ airlock_root }}/model_repo/" + MODEL + "/current)"
        lb = "sh -c 'echo {{ inventory_hostname }} %s " + current + f" >> {self.lb_log}'"
        inv = {"all": {
            "children": {"appliances": {"hosts": hosts}, "loadbalancer": {"hosts": {"lb": {}}}},
            # the control node's audit-head anchors sit in the snapshotted tree: restored with the hosts
            "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                     "airlock_state_dir": str(self.base / "fleet" / "control"),
                     "airlock_lb_drain_command": lb % "drain", "airlock_lb_enable_command": lb % "enable",
                     **groupvars}}}
        path = self.base / "inventory.yml"
        path.write_text(yaml.safe_dump(inv, sort_keys=False))
        return path

    def restore(self) -> None:
        """Every host back to the installed state (same paths: the catalog stores absolute ones)."""
        shutil.rmtree(self.base / "fleet")
        shutil.copytree(self.snapshot, self.base / "fleet", symlinks=True)
        self.lb_log.unlink(missing_ok=True)

    def serving(self, host: str) -> str:
        """The version a host serves: its current link, which must agree with the catalog."""
        link = os.readlink(self.root(host) / "model_repo" / MODEL / "current")
        repo = Repository(self.root(host))
        try:
            state = repo.state()["models"][MODEL]
            assert state["active"] == state["current"] == Path(link).name, (host, state, link)
            assert repo.verify(MODEL)["ok"], host
        finally:
            repo.close()
        return Path(link).name

    def lb_events(self) -> list[tuple[str, str, str]]:
        if not self.lb_log.exists():
            return []
        return [tuple(line.split()) for line in self.lb_log.read_text().splitlines()]  # type: ignore[misc]

    def update(self, inventory: Path, **extravars: Any) -> FleetResult:
        ev = {"airlock_trust": [self.bundles.fingerprint], "airlock_keyring": str(self.bundles.keyring),
              "airlock_bundle": str(self.bundles.delta), **extravars}
        return run_playbook("update", inventory, ev, private_data_dir=self.base / "runner")


@pytest.fixture(scope="module")
def local_fleet(tmp_path_factory: pytest.TempPathFactory) -> LocalFleet:
    base = tmp_path_factory.mktemp("rollout")
    f = LocalFleet(base, make_bundles(base / "bundles"), base / "snapshot", base / "lb.log")
    ev = {"airlock_trust": [f.bundles.fingerprint], "airlock_keyring": str(f.bundles.keyring),
          "airlock_bundle": str(f.bundles.full)}
    r = run_playbook("install", f.inventory({}), ev, private_data_dir=base / "runner")
    assert r.rc == 0, r.as_dict()
    shutil.copytree(base / "fleet", f.snapshot, symlinks=True)
    return f


@pytest.fixture
def fleet6(local_fleet: LocalFleet) -> Iterator[LocalFleet]:
    local_fleet.restore()
    yield local_fleet


@dataclass(frozen=True)
class Case:
    serial: list[Any]
    failing: dict[str, str]  # host -> GATE | APPLY
    max_fail: int
    batches: list[list[str]]  # the batches that ran
    stopped: bool  # the rollout stopped before the last batch
    any_errors_fatal: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def expected(self) -> dict[str, tuple[str, str]]:
        """host -> (version served, result in the summary)."""
        ran = {h for b in self.batches for h in b}
        return {h: (OLD, ROLLED_BACK) if h in self.failing else (NEW, CHANGED) if h in ran
                else (OLD, NOT_STARTED) for h in HOSTS}


A, B, C, D, E, F = HOSTS
# serial [1, "25%", "100%"] of six hosts: [a] [b] [c d e f]; ["100%"]: one batch; [2]: [a b] [c d] [e f].
DEFAULT, ALL, TWO = [1, "25%", "100%"], ["100%"], [2]
CASES = {
    # the canary fails: rolled back, nothing else touched
    "default-canary-mf0": Case(DEFAULT, {A: GATE}, 0, [[A]], True),
    # one host in the middle of the last batch (4 hosts) fails its apply: only it is rolled back
    "default-middle-of-last-batch-apply-mf0": Case(DEFAULT, {D: APPLY}, 0, [[A], [B], [C, D, E, F]], False),
    # first and last of the last batch fail (2 of 4 = 50 %, not above 50): both rolled back, the rest stay
    "default-first-and-last-mf50": Case(DEFAULT, {C: GATE, F: GATE}, 50, [[A], [B], [C, D, E, F]], False),
    # a one-host batch failing is 100 % > 50 %: stop
    "default-second-batch-mf50": Case(DEFAULT, {B: GATE}, 50, [[A], [B]], True),
    # the case: the last host of one batch of six fails its gate
    "all-last-mf0": Case(ALL, {F: GATE}, 0, [list(HOSTS)], False),
    # first, middle and last of one batch of six (a mix of apply and gate failures); healthy hosts stay
    "all-first-middle-last-mf50": Case(ALL, {A: APPLY, C: GATE, F: GATE}, 50, [list(HOSTS)], False),
    # [2]: the first host of batch 2 fails, max 0 %: its batch finishes, later batches never start
    "two-first-of-batch-mf0": Case(TWO, {C: GATE}, 0, [[A, B], [C, D]], True),
    # [2]: the last host of batch 2 fails, 1 of 2 = 50 % is not above 50: the rollout goes on
    "two-last-of-batch-mf50": Case(TWO, {D: APPLY}, 50, [[A, B], [C, D], [E, F]], False),
    # the abort switch: any failure stops the rollout whatever the percentage
    "two-last-of-batch-mf50-any-errors-fatal": Case(TWO, {D: GATE}, 50, [[A, B], [C, D]], True, True),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_rollout_matrix(fleet6: LocalFleet, case: Case) -> None:
    inv = fleet6.inventory(case.failing, airlock_max_fail_percentage=case.max_fail,
                           airlock_any_errors_fatal=case.any_errors_fatal)
    r = fleet6.update(inv, airlock_update_serial=case.serial)  # a play keyword: an extra var
    assert r.rc != 0, r.as_dict()
    assert r.batches == case.batches, r.as_dict()
    expected = case.expected()
    assert {h: fleet6.serving(h) for h in HOSTS} == {h: v for h, (v, _) in expected.items()}
    assert {h.host: h.result for h in r.hosts} == {h: res for h, (_, res) in expected.items()}
    for host, (_, result) in expected.items():
        stats = r.stats.get(host, {})
        if result == ROLLED_BACK:  # the recap: failed, after a rescue
            assert stats.get("failures") == 1 and stats.get("rescued", 0) >= 1, (host, stats)
            assert "rolled back: True" in (r.host(host).message or ""), r.host(host)
        elif result == CHANGED:
            assert not stats.get("failures") and stats.get("changed", 0) > 0, (host, stats)
            assert (r.host(host).from_version, r.host(host).to_version) == (OLD, NEW)
        else:
            assert not stats, (host, stats)
    # Load balancer: every host that started was drained, then enabled again serving what it serves
    # now: the new version, or the old one once its rollback verified.
    lb = fleet6.lb_events()
    for host, (version, result) in expected.items():
        mine = [(what, served) for h, what, served in lb if h == host]
        if result == NOT_STARTED:
            assert mine == [], host
        else:
            assert mine == [("drain", OLD), ("enable", version)], (host, mine)


def test_rerun_after_a_stopped_rollout_resumes(fleet6: LocalFleet) -> None:
    """After the canary stop is fixed, a re-run updates the rest; the rolled-back host is updated too."""
    r = fleet6.update(fleet6.inventory({B: GATE}), airlock_update_serial=TWO)
    assert r.rc != 0 and r.batches == [[A, B]]
    r = fleet6.update(fleet6.inventory({}), airlock_update_serial=TWO)
    assert r.rc == 0, r.as_dict()
    assert r.batches == [[A, B], [C, D], [E, F]]
    assert (r.host(A).from_version, r.host(A).to_version) == (NEW, NEW) and r.host(B).result == CHANGED
    assert all(fleet6.serving(h) == NEW for h in HOSTS)


def test_failed_weight_shift_is_rolled_back(fleet6: LocalFleet) -> None:
    """A host that passed its gate but whose gradual return to the load balancer fails (a weight step
    saw errors: `airlock serve lb shift` exits 50, tests/serving/test_load_balancer.py proves that
    against a real HAProxy; here the command is a logging stand-in) is rolled back like a failed gate
    and put back at full weight on the old version; the healthy hosts of its batch stay updated."""
    current = "$(readlink {{ airlock_root }}/model_repo/" + MODEL + "/current)"
    shift = ("sh -c 'echo {{ inventory_hostname }} shift " + current + f" >> {fleet6.lb_log}; "
             "test {{ inventory_hostname }} != " + D + " || exit 50; "
             'echo "{\\"steps\\": [10, 50, 100]}"\'')
    inv = fleet6.inventory({}, airlock_lb_shift_command=shift, airlock_lb_weight_steps=[10, 50],
                           airlock_max_fail_percentage=50)
    r = fleet6.update(inv, airlock_update_serial=ALL)
    assert r.rc != 0, r.as_dict()
    assert {h: fleet6.serving(h) for h in HOSTS} == {h: OLD if h == D else NEW for h in HOSTS}
    assert {h.host: h.result for h in r.hosts} == {h: ROLLED_BACK if h == D else CHANGED for h in HOSTS}
    lb = fleet6.lb_events()
    for host in HOSTS:
        mine = [(what, served) for h, what, served in lb if h == host]
        expected = [("drain", OLD), ("shift", NEW)] + ([("enable", OLD)] if host == D else [])
        assert mine == expected, (host, mine)
