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
import yaml

from airlock.fleet import run_playbook
from airlock.repo import Repository
from tests.fleet.bundles import Bundles, make_bundles

REPO = Path(__file__).resolve().parents[2]
LOCAL = REPO / "inventories" / "local"


def airlock(*args: str, env: dict[str, str] | None = None,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", **(env or {})}
    full.pop("AIRLOCK_FAULT", None)
    return subprocess.run([str(REPO / ".venv/bin/airlock"), *args], env=full, capture_output=True, text=True,
                          timeout=600, cwd=REPO, input=stdin,
                          stdin=None if stdin is not None else subprocess.DEVNULL)


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
    # staged (and verified) from the copy, installed, then the staged copy removed (issue 16 item 5)
    assert not staged.exists() and staged.parent.is_dir()
    assert json.loads(r.stdout)["hosts"][0]["to"] == "1.0.0"


def _installed(bundles: Bundles, tmp_path: Path, host: str) -> list[str]:
    """Install 1.0.0 on one local host; return the common CLI arguments for that host."""
    common = ["-i", str(LOCAL), "--limit", host, "--trust", bundles.fingerprint, "--keyring",
              str(bundles.keyring), "--runner-dir", str(tmp_path / "runner"),
              "-e", f"airlock_fleet_dir={tmp_path / 'fleet'}"]
    r = airlock("install", "--bundle", str(bundles.full), *common)
    assert r.returncode == 0, r.stdout + r.stderr
    return common


def test_update_check_shows_a_banner_and_the_plan_per_host(bundles: Bundles, tmp_path: Path) -> None:
    common = _installed(bundles, tmp_path, "local-a")
    catalog = tmp_path / "fleet" / "local-a" / "model_repo" / "metadata" / "model_catalog.db"
    before = catalog.read_bytes()
    r = airlock("update", "--bundle", str(bundles.delta), *common, "--check")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stderr.count("CHECK MODE") >= 2  # before the run and after the report
    assert "CHECK MODE" in r.stdout  # the table's title
    plan = r.stdout[r.stdout.index("plan for local-a"):]
    assert "update tiny 1.1.0" in plan and "active: 1.0.0 -> 1.1.0" in plan
    assert "model.safetensors" in plan  # per file, with how it would be produced
    assert catalog.read_bytes() == before


def test_rollback_to_and_repeated_rollback(bundles: Bundles, tmp_path: Path) -> None:
    common = _installed(bundles, tmp_path, "local-c")
    r = airlock("update", "--bundle", str(bundles.delta), *common)
    assert r.returncode == 0, r.stdout + r.stderr
    for _ in range(2):  # the second run has nothing to do: ok, not "no previous version"
        r = airlock("rollback", *common, "--json")
        assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["stats"]["local-c"].get("changed", 0) == 0
    r = airlock("rollback", *common, "--to", "1.0.0", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["hosts"][0]["to"] == "1.0.0"
    r = airlock("verify", *common, "--to", "1.0.0")
    assert r.returncode == 40 and "--to is for airlock rollback" in r.stderr


def test_tags_and_skip_tags(bundles: Bundles, tmp_path: Path) -> None:
    base = ["--bundle", str(bundles.full), "-i", str(LOCAL), "--limit", "local-b", "--trust",
            bundles.fingerprint, "--keyring", str(bundles.keyring), "--runner-dir", str(tmp_path / "runner"),
            "-e", f"airlock_fleet_dir={tmp_path / 'fleet'}"]
    repo = tmp_path / "fleet" / "local-b" / "model_repo"
    r = airlock("install", *base, "--skip-tags", "models")
    assert r.returncode == 0, r.stdout + r.stderr
    assert not repo.exists()  # model_repo and model_update are tagged models: both skipped
    r = airlock("install", *base, "--tags", "model_repo")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (repo / "metadata").is_dir() and not (repo / "tiny").exists()  # the layout, no model


def test_ansible_error_before_any_host_started_is_shown(tmp_path: Path) -> None:
    """A playbook naming a module Ansible cannot resolve (as with a collection that is not installed):
    Ansible stops before any host starts; the report shows Ansible's own error, not just 'not started'."""
    content = tmp_path / "content"
    (content / "playbooks").mkdir(parents=True)
    (content / "ansible.cfg").write_text("[defaults]\n")
    (content / "playbooks" / "verify.yml").write_text(yaml.safe_dump([{
        "name": "Verify", "hosts": "appliances", "gather_facts": False,
        "tasks": [{"name": "Drift check", "airlock.appliance.no_such_module": {}}]}]))
    env = {"AIRLOCK_ANSIBLE_DIR": str(content)}
    args = ["verify", "-i", str(LOCAL), "--runner-dir", str(tmp_path / "runner"),
            "-e", f"airlock_fleet_dir={tmp_path / 'fleet'}"]
    r = airlock(*args, env=env)
    assert r.returncode == 40, r.stdout + r.stderr
    assert "not started" in r.stdout
    assert "Ansible failed before these hosts started" in r.stdout
    assert "couldn't resolve module/action 'airlock.appliance.no_such_module'" in r.stdout
    report = json.loads(airlock(*args, "--json", env=env).stdout)
    assert "couldn't resolve module/action" in report["error"]
    assert all(h["result"] == "not started" and "couldn't resolve" in h["message"] for h in report["hosts"])


def _vault_inventory(tmp_path: Path, password: str) -> Path:
    """A local one-host inventory whose airlock_root is vaulted."""
    pwfile = tmp_path / "vault-pass"
    pwfile.write_text(password + "\n")
    inv = tmp_path / "vault-inv"
    (inv / "group_vars").mkdir(parents=True)
    vaulted = subprocess.run([str(REPO / ".venv/bin/ansible-vault"), "encrypt_string",
                              "--vault-password-file", str(pwfile), str(tmp_path / "root"),
                              "--name", "airlock_root"],
                             capture_output=True, text=True, check=True).stdout
    (inv / "group_vars" / "all.yml").write_text(vaulted)
    (inv / "hosts.yml").write_text(yaml.safe_dump({"all": {
        "children": {"appliances": {"hosts": {"local-v": {}}}},
        "vars": {"ansible_connection": "local",
                 "ansible_python_interpreter": str(REPO / ".venv/bin/python")}}}))
    return inv


def test_vault_password_file_and_ask_vault_pass(tmp_path: Path) -> None:
    inv = _vault_inventory(tmp_path, "s3cret-vault")
    args = ["verify", "-i", str(inv), "--runner-dir", str(tmp_path / "runner"), "--json"]
    r = airlock(*args)
    assert r.returncode == 40
    assert "vault" in json.loads(r.stdout)["hosts"][0]["message"].lower()
    r = airlock(*args, "--vault-password-file", str(tmp_path / "vault-pass"))
    assert r.returncode == 0, r.stdout + r.stderr  # the vaulted root was opened (an empty repository)
    r = airlock(*args, "--ask-vault-pass", stdin="s3cret-vault\n")
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (tmp_path / "runner" / "env" / "passwords").exists()
    assert "s3cret-vault" not in "".join(p.read_text(errors="replace")
                                         for p in (tmp_path / "runner").rglob("*") if p.is_file())
    r = airlock(*args, "--ask-vault-pass", stdin="wrong\n")
    assert r.returncode == 40


def test_confirm_after_the_canary(bundles: Bundles, tmp_path: Path) -> None:
    """--confirm-canary asks once the canary batch is done: "n" stops the rollout there (the second
    host never starts), "y" goes on."""
    common = _installed(bundles, tmp_path, "local-a:local-b")
    update = ["update", "--bundle", str(bundles.delta), *common, "--confirm-canary", "--json",
              "-e", 'airlock_update_serial=[1, "100%"]']
    r = airlock(*update, stdin="n\n")
    assert "Go on with the remaining hosts?" in r.stderr, r.stderr
    hosts = {h["host"]: h["result"] for h in json.loads(r.stdout)["hosts"]}
    assert hosts == {"local-a": "changed", "local-b": "not started"}
    r = airlock(*update, "--canary-pause", "1", stdin="y\n")
    assert r.returncode == 0, r.stdout + r.stderr
    runs = (tmp_path / "runner").glob("artifacts/*/stdout")
    stdout = max(runs, key=lambda p: p.stat().st_mtime).read_text()
    assert "TASK [Pause after the canary batch]" in stdout and "Pausing for 1 seconds" in stdout
    report = json.loads(r.stdout)
    assert report["batches"] == [["local-a"], ["local-b"]]
    assert {h["host"]: h["to"] for h in report["hosts"]} == {"local-a": "1.1.0", "local-b": "1.1.0"}
