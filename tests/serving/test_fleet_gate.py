"""Rolling update with Triton on each host: the health gate (roles/triton_models/tasks/update_gate.yml,
model_update's hook) stops the rollout at the canary when its smoke test fails, and gates each batch.

Hosts are local (ansible_connection=local), each with its own Airlock root, Triton repository and
tritonserver on its own ports; the update play is a stand-in with a serial canary batch and a
block/rescue rolling the host back (a failed one-host batch stops the play, as in
playbooks/update.yml, whose own rollout semantics are tested in tests/fleet/test_rollout_local.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from airlock.serving.auth import read_control_key
from airlock.serving.client import TritonClient
from airlock.serving.server import free_port
from tests.serving.play import ROLES
from tests.serving.play import ansible_playbook as _ansible

HOSTS = ("appliance1", "appliance2")

UPDATE_PLAY = {
    "name": "Rolling model update gated by the Triton smoke test",
    "hosts": "appliances", "gather_facts": False, "serial": [1, "100%"], "max_fail_percentage": 0,
    "tasks": [{"block": [
        {"name": "Model update (stand-in for the repository update): activate 1.1.0",
         "ansible.builtin.file": {"src": "1.1.0", "state": "link", "force": True,
                                  "dest": "{{ triton_models_root }}/model_repo/fleet_m/current"}},
        {"name": "What model_update registers (stand-in)", "ansible.builtin.set_fact": {
            "model_update_result": {"models": {"fleet_m": {"from": "1.0.0", "to": "1.1.0"}}},
            "model_update_staged": {"path": "{{ staged_dir }}"}}},
        {"name": "Health gate via model_update's hook file",
         "ansible.builtin.include_tasks": str(ROLES / "triton_models" / "tasks" / "update_gate.yml"),
         "vars": {"triton_models_repo_gate": ""}},
    ], "rescue": [
        {"name": "Roll the host back", "ansible.builtin.file": {
            "src": "1.0.0", "dest": "{{ triton_models_root }}/model_repo/fleet_m/current", "state": "link",
            "force": True}},
        {"name": "Fail the host", "ansible.builtin.fail": {"msg": "health gate failed; rolled back"}},
    ]}],
}


def _current(root: Path) -> str:
    return os.readlink(root / "model_repo" / "fleet_m" / "current")


def test_health_gate_stops_the_rollout_at_the_canary_then_promotes_batch_by_batch(
        tmp_path: Path, airlock_root: Path, goldens: dict) -> None:
    ansible = _ansible()

    hosts: dict[str, dict] = {}
    for host in HOSTS:
        base = tmp_path / host
        model = base / "root" / "model_repo" / "fleet_m"
        for version in ("1.0.0", "1.1.0"):
            shutil.copytree(airlock_root / "store" / version, model / version, copy_function=os.link)
        (model / "current").symlink_to("1.0.0")
        hosts[host] = {
            "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
            "triton_server_supervisor": "process", "triton_server_install_wheels": False,
            "triton_server_install_apt": False, "triton_server_python": sys.executable,
            "triton_server_http_port": free_port(), "triton_server_grpc_port": free_port(),
            "triton_server_metrics_port": free_port(),
            "triton_server_model_repository": str(base / "triton"),
            "triton_server_workdir": str(base / "srv"),
            "triton_models_airlock": str(Path(sys.executable).with_name("airlock")),
            "triton_models_root": str(base / "root"),
            # model control is restricted by default: the role makes this key (0600) and uses it
            "triton_server_control_key_file": str(base / "etc" / "triton-control.key"),
        }
    good, bad = tmp_path / "staged-good", tmp_path / "staged-bad"  # bad: v1.0's answers as golden
    for staged, record in ((good, goldens["1.1.0"]), (bad, goldens["1.0.0"])):
        staged.mkdir()
        (staged / "MANIFEST.json").write_text(json.dumps(
            {"models": [{"name": "fleet_m", "version": "1.1.0", "golden": record}]}))
    clients: dict[str, TritonClient] = {}

    def run(manifests: dict[str, Path], plays: list[dict]) -> subprocess.CompletedProcess[str]:
        for host, path in manifests.items():
            hosts[host]["staged_dir"] = str(path)
        inv = tmp_path / "inventory.yml"
        inv.write_text(yaml.safe_dump({"all": {"children": {"appliances": {"hosts": hosts}}}}))
        play = tmp_path / "play.yml"
        play.write_text(yaml.safe_dump(plays, sort_keys=False))
        env = {**os.environ, "ANSIBLE_ROLES_PATH": str(ROLES), "ANSIBLE_NOCOLOR": "1"}
        return subprocess.run([ansible, "-i", str(inv), str(play)], capture_output=True, text=True, env=env,
                               timeout=600, check=False)

    try:
        setup = run({}, [{"hosts": "appliances", "gather_facts": False,
                          "roles": ["triton_server", "triton_models"]}])
        assert setup.returncode == 0, setup.stdout[-3000:]
        clients.update({h: TritonClient(f"http://127.0.0.1:{v['triton_server_http_port']}",
                                        control_key=read_control_key(Path(v["triton_server_control_key_file"])))
                        for h, v in hosts.items()})
        assert all(c.loaded_versions("fleet_m") == {"1": "READY"} for c in clients.values())

        # canary's signed golden record does not match: the canary stays on v1.0, the rollout stops
        failed = run({"appliance1": bad, "appliance2": good}, [UPDATE_PLAY])
        assert failed.returncode != 0
        assert "smoke test failed" in failed.stdout
        assert "appliance2" not in failed.stdout.split("PLAY RECAP")[0], "rollout must stop at the canary"
        for host, client in clients.items():
            assert client.loaded_versions("fleet_m") == {"1": "READY"}, host
            assert _current(Path(hosts[host]["triton_models_root"])) == "1.0.0", host

        # good records: batch 1 (canary) then batch 2, each gated, all promoted
        passed = run({"appliance1": good, "appliance2": good}, [UPDATE_PLAY])
        assert passed.returncode == 0, passed.stdout[-3000:]
        recap = passed.stdout.split("PLAY RECAP")[0]
        assert recap.index("appliance1") < recap.rindex("appliance2")
        for host, client in clients.items():
            assert client.loaded_versions("fleet_m") == {"2": "READY"}, host
            assert _current(Path(hosts[host]["triton_models_root"])) == "1.1.0", host
    finally:
        for host in HOSTS:
            pidfile = tmp_path / host / "srv" / "tritonserver.pid"
            if pidfile.is_file():
                _stop(int(pidfile.read_text()))


def _stop(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(150):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.killpg(pid, signal.SIGKILL)
