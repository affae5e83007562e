"""airlock.fleet and the `airlock install|update|rollback|verify` CLI on the embedded local fleet
(inventories/local, ansible_connection: local): private data dir hygiene, the health gate's
automatic rollback, clear errors."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from airlock.fleet import run_playbook
from airlock.repo import Repository
from tests.fleet.bundles import Bundles, make_bundles

REPO = Path(__file__).resolve().parents[2]
LOCAL = REPO / "inventories" / "local"


def airlock(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("AIRLOCK_FAULT", None)
    return subprocess.run([str(REPO / ".venv/bin/airlock"), *args], env=env, capture_output=True, text=True,
                          timeout=600, cwd=REPO)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    return make_bundles(tmp_path_factory.mktemp("bundles"))


def test_verify_cli_keeps_secrets_off_the_command_line(tmp_path: Path) -> None:
    rd = tmp_path / "runner"
    secret = "s3cret-token-value"
    r = airlock("verify", "-i", str(LOCAL), "--json", "--runner-dir", str(rd),
                "-e", f"airlock_fleet_dir={tmp_path / 'fleet'}", "-e", f"airlock_site_token={secret}")
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert [h["host"] for h in report["hosts"]] == ["local-a", "local-b", "local-c"]
    assert all(h["result"] == "ok" for h in report["hosts"]) and report["batches"]
    extravars = rd / "env" / "extravars"
    assert stat.S_IMODE(extravars.stat().st_mode) == 0o600
    assert secret in extravars.read_text()
    commands = list(rd.glob("artifacts/*/command"))
    assert commands and all(secret not in json.loads(c.read_text())["command"] for c in commands)
    assert "@" + str(extravars) in json.loads(commands[0].read_text())["command"]


def test_check_run_does_not_leak_into_the_next_run(tmp_path: Path) -> None:
    rd = tmp_path / "runner"
    ev = {"airlock_fleet_dir": str(tmp_path / "fleet")}
    run_playbook("verify", LOCAL, ev, limit="local-a", check=True, private_data_dir=rd)
    assert (rd / "env" / "cmdline").read_text() == "--check"
    run_playbook("verify", LOCAL, ev, limit="local-a", private_data_dir=rd)
    assert not (rd / "env" / "cmdline").exists()


def test_missing_inventory_and_bundle_are_clear_errors(tmp_path: Path) -> None:
    r = airlock("verify", "-i", str(tmp_path / "nope"))
    assert r.returncode == 40 and "no such inventory" in r.stderr
    r = airlock("update", "-i", str(LOCAL))
    assert r.returncode == 40 and "needs --bundle" in r.stderr


def test_failed_health_gate_rolls_the_host_back(bundles: Bundles, tmp_path: Path) -> None:
    fleet = tmp_path / "fleet"
    common = ["-i", str(LOCAL), "--limit", "local-a", "--trust", bundles.fingerprint,
              "--keyring", str(bundles.keyring), "--runner-dir", str(tmp_path / "runner"),
              "-e", f"airlock_fleet_dir={fleet}"]
    r = airlock("install", "--bundle", str(bundles.full), *common)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "local-a" in r.stdout and "1.0.0" in r.stdout
    r = airlock("update", "--bundle", str(bundles.delta), *common, "--json",
                "-e", "model_update_health_gate_command=false")
    assert r.returncode == 40
    host = json.loads(r.stdout)["hosts"][0]
    assert host["result"] == "failed (rolled back)"
    repo = Repository(fleet / "local-a")
    try:
        state = repo.state()["models"]["tiny"]
        assert state["active"] == "1.0.0" and state["current"] == "1.0.0"
        assert state["versions"]["1.1.0"] == "failed"  # applied, failed the gate, rolled back from
        assert repo.verify("tiny")["ok"]
    finally:
        repo.close()


def test_install_copies_the_bundle_from_the_control_node(bundles: Bundles, tmp_path: Path) -> None:
    fleet = tmp_path / "fleet"
    r = airlock("install", "--bundle", str(bundles.full), "-i", str(LOCAL), "--limit", "local-b",
                "--trust", bundles.fingerprint, "--keyring", str(bundles.keyring), "--json",
                "--runner-dir", str(tmp_path / "runner"), "-e", f"airlock_fleet_dir={fleet}",
                "-e", "airlock_bundle_copy=true")
    assert r.returncode == 0, r.stdout + r.stderr
    copied = fleet / "local-b" / "incoming" / bundles.full.name
    assert (copied / "MANIFEST.json").read_bytes() == (bundles.full / "MANIFEST.json").read_bytes()
    staged = fleet / "local-b" / "model_repo" / "update_packages" / "staged" / bundles.full.name
    assert (staged / "MANIFEST.json").exists()  # staged (and verified) from the copy
    assert json.loads(r.stdout)["hosts"][0]["to"] == "1.0.0"
