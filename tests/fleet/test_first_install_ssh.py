"""A first install over real SSH with an inventory shaped like inventories/example: the interpreter
of the Airlock modules is the runtime venv (which does not exist yet on a fresh host), the system
Python is the bootstrap interpreter for the provisioning steps and the runtime install, and the
health gate is the example's command (``airlock model verify`` of the installed runtime)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from airlock.fleet import run_playbook
from airlock.repo import Repository
from tests.fleet.bundles import MODEL, make_bundles
from tests.fleet.netns import Fleet
from tests.support import build_wheelhouse

pytestmark = pytest.mark.timeout(1800)

EXAMPLE = Path(__file__).resolve().parents[2] / "inventories" / "example" / "group_vars" / "appliances.yml"


def test_first_install_on_a_fresh_host_with_the_example_inventory_shape(
        fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> None:
    tmp = tmp_path_factory.mktemp("first-install")
    bundles = make_bundles(tmp / "bundles")
    wheelhouse = build_wheelhouse(tmp / "wheelhouse")
    host = fleet.hosts[0]
    shutil.rmtree(host.root)
    host.root.mkdir()
    venv = tmp / "opt-airlock-venv"  # the hosts share this file system: a path of its own
    example = yaml.safe_load(EXAMPLE.read_text())
    # the example's interpreters and gate, as written there (only the paths differ)
    assert example["ansible_python_interpreter"] == example["airlock_runtime_venv"] + "/bin/python"
    assert example["airlock_bootstrap_interpreter"] == "/usr/bin/python3"
    gate = example["model_update_health_gate_command"].replace(
        " --owner {{ airlock_owner }} --group {{ airlock_group }}", "")
    inv = fleet.inventory(
        tmp / "inventory.yml",
        ansible_python_interpreter="{{ airlock_runtime_venv }}/bin/python",
        airlock_bootstrap_interpreter="/usr/bin/python3", airlock_runtime_venv=str(venv),
        airlock_install_runtime=True, airlock_runtime_create_user=False,
        airlock_runtime_wheelhouse=str(wheelhouse), model_update_health_gate_command=gate)
    assert not venv.exists()
    ev = {"airlock_trust": [bundles.fingerprint], "airlock_keyring": str(bundles.keyring)}
    env = {"ANSIBLE_SSH_CONTROL_PATH_DIR": str(tmp / "cp")}
    r = run_playbook("install", inv, {**ev, "airlock_bundle": str(bundles.full)}, limit=host.name,
                     private_data_dir=tmp / "runner", envvars=env)
    assert r.rc == 0, (r.as_dict(), r.error)
    assert (r.host(host.name).result, r.host(host.name).to_version) == ("changed", "1.0.0")
    probe = subprocess.run([str(venv / "bin/python"), "-c", "import airlock; print(airlock.__file__)"],
                           capture_output=True, text=True, env={"PATH": "/usr/bin"}, cwd=tmp)
    assert probe.returncode == 0 and str(venv) in probe.stdout, probe.stderr
    # after the first play, the runtime venv runs the modules: an update through it, gated by the
    # example's command (it exists now, and exits 0 on a clean repository)
    up = run_playbook("update", inv, {**ev, "airlock_bundle": str(bundles.delta)}, limit=host.name,
                      private_data_dir=tmp / "runner", envvars=env)
    assert up.rc == 0, up.as_dict()
    repo = Repository(host.root)
    try:
        assert repo.state()["models"][MODEL]["active"] == "1.1.0"
    finally:
        repo.close()
