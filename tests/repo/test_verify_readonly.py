"""Verify writes nothing on a host: a tree hash of each host's root (content, modes, owners, symlink
targets; the catalog file and update_history.log included) is identical before and after
``verify.yml --check``, ``airlock verify`` (fleet CLI, with and without --check), ``airlock model
verify`` and ``airlock audit verify``, on a clean host and on one with drift. The fleet runs through
a local-connection inventory (one root per host) with real signed bundles installed; the control
node's audit-head anchor and the structured drift output are tested on it too."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import yaml

from airlock.repo import Repository
from tests.fleet.bundles import MODEL
from tests.repo.verify_fleet import HOSTS, Fleet, airlock, cut_last_record, drift_on_h1, playbook
from tests.support import REPO, tree_state

# still importable from here by modules not moved yet (the fleet fixture is in tests/conftest.py)
__all__ = ["Fleet", "airlock", "tree_state"]
_drift_on_h1 = drift_on_h1



def test_verify_changes_no_byte(fleet: Fleet) -> None:
    drift_on_h1(fleet)
    before = fleet.trees()
    assert any(k.endswith("update_history.log") for k in before["h1"])
    assert any(k.endswith("model_catalog.db") for k in before["h1"])
    runs = {
        "verify.yml --check": playbook(fleet, "--check", "--diff"),
        "verify.yml": playbook(fleet, "-e", json.dumps({"airlock_trust": [fleet.bundles.fingerprint],
                                                         "airlock_keyring": str(fleet.bundles.keyring)})),
        "airlock verify --check": airlock("verify", "-i", str(fleet.inventory), "--check", "--json",
                                          "--runner-dir", str(fleet.base / "runner"), *fleet.trust_args()),
        "airlock verify": airlock("verify", "-i", str(fleet.inventory), "--runner-dir",
                                  str(fleet.base / "runner")),
    }
    for h in HOSTS:
        runs[f"airlock model verify ({h})"] = airlock("model", "verify", "--root", str(fleet.root(h)))
        runs[f"airlock model verify {MODEL} ({h})"] = airlock("model", "verify", MODEL, "--root",
                                                               str(fleet.root(h)), *fleet.trust_args())
        runs[f"airlock audit verify ({h})"] = airlock("audit", "verify", "--root", str(fleet.root(h)))
    # each run saw the drift on h1 (so the drift path ran too) and none on h2
    for name, r in runs.items():
        if name.startswith("airlock audit"):
            assert r.returncode == 0, (name, r.stderr)
        elif "(h2)" in name:
            assert r.returncode == 0, (name, r.stdout, r.stderr)
        else:
            assert r.returncode != 0, (name, r.stdout, r.stderr)
    assert fleet.trees() == before


def test_fleet_drift_is_data_whole_and_grouped_by_host(fleet: Fleet) -> None:
    mdir = fleet.root("h1") / "model_repo" / MODEL
    for i in range(20):
        (mdir / f"stray-{i:02d}-{'y' * 30}.bin").write_bytes(b"y")
    f = mdir / "1.1.0" / "tokenizer.json"
    os.chmod(f, 0o644)
    f.write_bytes(f.read_bytes().replace(b"t1", b"x1", 1))
    os.chmod(f, 0o444)
    repo = Repository(fleet.root("h1"))
    want = repo.compliance()["drift"]
    repo.close()
    assert len(want) == 22  # 20 stray files, the tokenizer in 1.1.0 and in 1.0.0 (one hard-linked inode)
    r = airlock("verify", "-i", str(fleet.inventory), "--json", "--runner-dir", str(fleet.base / "runner"),
                *fleet.trust_args())
    assert r.returncode == 40
    report = json.loads(r.stdout)
    assert report["drift"] == [{"host": "h1", **d} for d in want]  # every item, none cut
    assert {d["rule"] for d in report["drift"]} == {"stray-file", "sha256"}
    assert report["warnings"] == []  # trust given: signatures checked
    hosts = {h["host"]: h for h in report["hosts"]}
    assert hosts["h1"]["result"] == "failed" and hosts["h2"]["result"] == "ok" and hosts["h2"]["drift"] == []
    # the human view: a block per host with every item whole; without trust a loud warning
    r = airlock("verify", "-i", str(fleet.inventory), "--runner-dir", str(fleet.base / "runner"))
    assert r.returncode == 40
    assert "drift on h1 (22 item(s)):" in r.stdout and "drift on h2" not in r.stdout
    for d in want:
        assert d["path"] in r.stdout
    assert "WARNING:" in r.stderr and "signatures NOT checked" in r.stderr


def _head(fleet: Fleet, host: str) -> dict[str, Any]:
    heads = json.loads((fleet.state / f"{host}.audit-head.json").read_text())
    return dict(heads[str(fleet.root(host))])


def test_control_node_anchor_catches_a_truncated_log_with_an_edited_catalog(fleet: Fleet) -> None:
    r = playbook(fleet, "--check")
    assert r.returncode == 0, r.stdout
    anchor = _head(fleet, "h2")
    log = fleet.root("h2") / "model_repo" / "update_history.log"
    assert anchor["seq"] == len(log.read_bytes().splitlines())
    cut_last_record(fleet.root("h2"), history=True)  # the forger makes the catalog agree
    r = airlock("model", "verify", "--root", str(fleet.root("h2")))
    assert r.returncode == 0  # on the host alone, nothing shows any more...
    r = airlock("verify", "-i", str(fleet.inventory), "--check", "--json", "--runner-dir",
                str(fleet.base / "runner"))
    assert r.returncode == 40
    drift = json.loads(r.stdout)["drift"]
    assert [(d["host"], d["rule"]) for d in drift] == [("h2", "audit-anchor")]  # ...the control node knows
    assert _head(fleet, "h2") == anchor  # not advanced past a broken log: reported again next run
    r = playbook(fleet, "--check")
    assert r.returncode != 0 and "audit-anchor" in r.stdout


def test_audit_head_tasks_keep_the_anchor_from_any_run(fleet: Fleet) -> None:
    """playbooks/tasks/audit_head.yml, for the end of install/update/rollback runs: log only, writes
    nothing on the host, advances the anchor as the log grows, fails the host once it was cut."""
    pb = fleet.base / "anchor.yml"
    pb.write_text(yaml.safe_dump([{"name": "anchor", "hosts": "appliances", "gather_facts": False, "tasks": [
        {"ansible.builtin.import_tasks": str(REPO / "playbooks" / "tasks" / "audit_head.yml")}]}]))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return playbook(fleet, *args, play=pb)

    before = fleet.trees()
    r = run("--check")
    assert r.returncode == 0, r.stdout
    assert fleet.trees() == before
    first = _head(fleet, "h2")
    repo = Repository(fleet.root("h2"))
    repo.activate(MODEL, "1.0.0")  # a later run appends records: the anchor follows
    repo.close()
    assert run().returncode == 0
    grown = _head(fleet, "h2")
    assert grown["seq"] > first["seq"]
    cut_last_record(fleet.root("h2"))
    r = run()
    assert r.returncode != 0 and "audit-anchor" in r.stdout, r.stdout
    assert "h1" in r.stdout and _head(fleet, "h2") == grown


def test_rollback_run_checks_and_keeps_the_audit_head(fleet: Fleet) -> None:
    """rollback.yml (as install.yml and update.yml) ends with tasks/audit_head.yml: the anchor follows the
    records the run appended, and a log cut since the last run fails that host even if the catalog agrees."""
    def rollback(*args: str) -> subprocess.CompletedProcess[str]:
        return playbook(fleet, *args, play=REPO / "playbooks" / "rollback.yml")

    assert playbook(fleet, "--check").returncode == 0
    before = _head(fleet, "h1")
    r = rollback("--limit", "h1")
    assert r.returncode == 0, r.stdout
    log = fleet.root("h1") / "model_repo" / "update_history.log"
    after = _head(fleet, "h1")
    assert after["seq"] > before["seq"] and after["seq"] == len(log.read_bytes().splitlines())
    # cut h2's log (catalog made to agree), then roll it back: the run itself notices
    cut_last_record(fleet.root("h2"))
    r = rollback("--limit", "h2")
    assert r.returncode != 0 and "audit-anchor" in r.stdout, r.stdout


def test_host_list_inventory_keeps_anchors_in_the_state_dir_env(tmp_path: Any) -> None:
    """An inventory given as a host list has no directory: the anchors go to $AIRLOCK_STATE_DIR, else
    to ~/.local/state/airlock (a test session sets its own, so no run reads another's anchor)."""
    play = tmp_path / "where.yml"
    play.write_text(yaml.safe_dump([{"hosts": "all", "gather_facts": False, "tasks": [
        {"ansible.builtin.include_tasks": str(REPO / "playbooks/tasks/audit_head_read.yml")},
        {"ansible.builtin.debug": {"msg": "STATE={{ airlock_audit_state_dir }}"}}]}]))
    seen = {}
    for name, extra in (("env", {"AIRLOCK_STATE_DIR": str(tmp_path / "state")}), ("home", {})):
        env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "HOME": str(tmp_path / "home"),
               "ANSIBLE_LOCAL_TEMP": str(tmp_path / "atmp"), **extra}
        if name == "home":
            env.pop("AIRLOCK_STATE_DIR", None)
        r = subprocess.run([str(REPO / ".venv/bin/ansible-playbook"), "-i", "localhost,", "-c", "local",
                            str(play)], capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        seen[name] = r.stdout.split("STATE=", 1)[1].split()[0].strip('"')
    assert seen == {"env": str(tmp_path / "state"), "home": str(tmp_path / "home/.local/state/airlock")}
