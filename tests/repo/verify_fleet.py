"""Two local-connection hosts with real signed bundles installed, for the tests that run the fleet's
verify (tests/repo/test_verify_readonly.py, tests/monitoring/test_report.py), and the ways to drive
and tamper with them."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from airlock.repo.audit import line_hash
from tests.fleet.bundles import MODEL, Bundles, install_host
from tests.support import REPO, ansible_env, run_ansible_tool, tree_state

HOSTS = ("h1", "h2")


@dataclass
class Fleet:
    base: Path
    inventory: Path
    state: Path
    bundles: Bundles

    def root(self, host: str) -> Path:
        return self.base / host

    def trees(self) -> dict[str, dict[str, tuple[Any, ...]]]:
        return {h: tree_state(self.root(h)) for h in HOSTS}

    def trust_args(self) -> list[str]:
        return ["--trust", self.bundles.fingerprint, "--keyring", str(self.bundles.keyring)]


def airlock(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(REPO / ".venv/bin/airlock"), *args], env=ansible_env(), capture_output=True,
                          text=True, timeout=600, cwd=REPO)


def playbook(fleet: Fleet, *args: str, play: Path = REPO / "playbooks" / "verify.yml"
             ) -> subprocess.CompletedProcess[str]:
    return run_ansible_tool("ansible-playbook", "-i", str(fleet.inventory), str(play), *args)


def cut_last_record(root: Path, *, history: bool = False) -> None:
    """The forger's edit: drop the last audit record and make the catalog agree (its head, and with
    ``history`` its last history row too)."""
    log = root / "model_repo" / "update_history.log"
    lines = log.read_bytes().splitlines()[:-1]
    os.chmod(log, 0o644)
    log.write_bytes(b"".join(ln + b"\n" for ln in lines))
    os.chmod(log, 0o640)
    db = sqlite3.connect(root / "model_repo" / "metadata" / "model_catalog.db")
    db.execute("UPDATE meta SET value=? WHERE key='audit_head'", (f"{len(lines)}:{line_hash(lines[-1])}",))
    if history:
        db.execute("DELETE FROM history WHERE id=(SELECT max(id) FROM history)")
    db.commit()
    db.close()


def make_fleet(tmp_path: Path, bundles: Bundles) -> Fleet:
    """Hosts h1 and h2 (roots under ``tmp_path``), each with the full then the delta bundle installed,
    and a local-connection inventory for them (the ``fleet`` fixture in tests/conftest.py)."""
    for h in HOSTS:
        install_host(tmp_path / h, bundles, tmp_path).close()
    inv = tmp_path / "inventory.yml"
    inv.write_text(yaml.safe_dump({"all": {"children": {"appliances": {
        "hosts": {h: {"airlock_root": str(tmp_path / h)} for h in HOSTS},
        "vars": {"ansible_connection": "local", "ansible_python_interpreter": "{{ ansible_playbook_python }}",
                 "airlock_state_dir": str(tmp_path / "control")}}}}}))
    return Fleet(tmp_path, inv, tmp_path / "control", bundles)


def drift_on_h1(fleet: Fleet) -> None:
    """Drift on h1: a version file's mode, a stray version directory."""
    vdir = fleet.root("h1") / "model_repo" / MODEL / "1.1.0"
    os.chmod(vdir / "config.json", 0o644)
    (vdir.parent / "9.9.9").mkdir(mode=0o700)
