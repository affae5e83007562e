"""airlock_runtime installs the engine into a fresh virtualenv from a wheelhouse with no index."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

from tests.support import build_wheelhouse

REPO = Path(__file__).resolve().parents[2]


def test_runtime_role_installs_offline_and_is_idempotent(tmp_path: Path) -> None:
    wheelhouse = build_wheelhouse(tmp_path / "wheelhouse")
    venv = tmp_path / "venv"
    play = tmp_path / "runtime.yml"
    play.write_text(yaml.safe_dump([{
        "name": "Runtime", "hosts": "localhost", "gather_facts": False,
        "vars": {"airlock_runtime_venv": str(venv), "airlock_runtime_wheelhouse": str(wheelhouse),
                 "airlock_runtime_create_user": False, "airlock_runtime_python": "/usr/bin/python3"},
        "roles": ["airlock_runtime"]}]))
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    cmd = [str(REPO / ".venv/bin/ansible-playbook"), "-i", "localhost,", "-c", "local",
           "-e", f"ansible_python_interpreter={REPO / '.venv/bin/python'}", str(play)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "changed=2" in r.stdout  # venv created, package installed
    code = "import airlock, airlock.repo, airlock.bundle; print(airlock.__file__)"
    probe = subprocess.run([str(venv / "bin/python"), "-c", code], capture_output=True, text=True,
                           env={"PATH": "/usr/bin"}, cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr
    assert str(venv) in probe.stdout  # the installed copy, not this checkout
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert again.returncode == 0 and "changed=0" in again.stdout, again.stdout[-3000:]


def test_runtime_role_refuses_a_missing_wheelhouse(tmp_path: Path) -> None:
    play = tmp_path / "runtime.yml"
    play.write_text(yaml.safe_dump([{
        "name": "Runtime", "hosts": "localhost", "gather_facts": False,
        "vars": {"airlock_runtime_venv": str(tmp_path / "venv"),
                 "airlock_runtime_wheelhouse": str(tmp_path / "no"), "airlock_runtime_create_user": False},
        "roles": ["airlock_runtime"]}]))
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    r = subprocess.run([str(REPO / ".venv/bin/ansible-playbook"), "-i", "localhost,", "-c", "local",
                        "-e", "ansible_python_interpreter=/usr/bin/python3", str(play)],
                       env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode != 0 and "no wheelhouse directory" in r.stdout + r.stderr
    assert not (tmp_path / "venv").exists()
