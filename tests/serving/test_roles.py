"""roles/triton_server and roles/triton_models: unit templates rendered, and a real local run:
tritonserver started by the role (wheel method, supervised process), models generated and loaded,
idempotent, check mode. The health gate itself runs in test_fleet_gate.py."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from airlock.repo import Repository
from airlock.serving.auth import read_control_key
from airlock.serving.client import TritonClient
from airlock.serving.errors import ServingError
from airlock.serving.server import free_port
from airlock.serving.triton_repo import TritonModel
from tests.serving.conftest import Pair, add_model
from tests.serving.play import (
    PLAYBOOKS,
    ROLES,
    ansible_playbook,
    render_template,
    run_playbook,
    write_playbook,
)
from tests.support import pids_running, require_tool

# the helpers moved to tests/serving/play.py keep their old names here for modules not moved yet
_ansible, _playbook, _render, _run = ansible_playbook, write_playbook, render_template, run_playbook


def _unit(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out[key] = value
    return out


def test_wheel_unit_runs_tritonserver_in_explicit_mode_on_configured_address() -> None:
    unit = _unit(_render("triton_server", "airlock-triton.service.j2", triton_server_address="10.9.8.7",
                         triton_server_http_port=9000))
    argv = unit["ExecStart"].split()
    assert argv[:3] == ["/opt/airlock/venv/bin/python", "-m", "airlock.serving.server"]
    assert argv[argv.index("--address"):argv.index("--address") + 2] == ["--address", "10.9.8.7"]
    assert "9000" in argv and "--metrics-port" in argv
    assert unit["Restart"] == "always"  # and ExecStartPost restores the verified current versions
    key = ["--control-key-file", "/etc/airlock/triton-control.key"]  # control plane restricted by default
    assert argv[-2:] == key and " ".join(key) in unit["ExecStartPost"]


def test_container_unit_runs_the_image_in_explicit_mode_with_metrics() -> None:
    text = _render("triton_server", "airlock-triton-container.service.j2", triton_server_address="10.9.8.7",
                   triton_server_container_engine="docker", triton_server_extra_args=["--log-verbose=1"])
    unit = _unit(text)
    cmd = unit["ExecStart"]
    assert cmd.startswith("/usr/bin/docker run --rm --name airlock-triton --network host")
    for flag in ("--model-control-mode=explicit", "--http-address=10.9.8.7", "--grpc-address=10.9.8.7",
                 "--metrics-address=10.9.8.7", "--allow-metrics=true", "--gpus all", "--log-verbose=1",
                 "nvcr.io/nvidia/tritonserver:24.10-vllm-python-py3 tritonserver"):
        assert flag in cmd
    assert ":ro" in cmd and unit["ExecStop"] == "/usr/bin/docker stop -t 30 airlock-triton"


def test_triton_runs_as_a_dedicated_user(tmp_path: Path) -> None:
    """A repository owned by 'airlock': Triton runs as 'airlock-triton' with CAP_DAC_READ_SEARCH only,
    the repository read-only for it, the control key handed over by systemd; the restore after start
    runs as the owner. ``systemd-analyze verify`` accepts the unit (test_triton_user.py runs it)."""
    text = _render("triton_server", "airlock-triton.service.j2", airlock_owner="airlock",
                   airlock_group="airlock", triton_server_python=sys.executable,
                   triton_server_airlock=str(Path(sys.executable).parent / "airlock"))
    unit = _unit(text)
    assert (unit["User"], unit["Group"]) == ("airlock-triton", "airlock-triton")
    assert unit["AmbientCapabilities"] == unit["CapabilityBoundingSet"] == "CAP_DAC_READ_SEARCH"
    assert unit["ReadOnlyPaths"].split() == ["/srv/airlock", "/var/lib/airlock/triton/models"]
    assert unit["LoadCredential"] == "airlock-control-key:/etc/airlock/triton-control.key"
    assert unit["ExecStart"].endswith("--control-key-file %d/airlock-control-key")
    assert unit["ExecStartPost"].startswith("-+/usr/sbin/runuser -u airlock -- ")
    assert "--control-key-file /etc/airlock/triton-control.key" in unit["ExecStartPost"]
    path = tmp_path / "airlock-triton.service"
    path.write_text(text)
    tool = require_tool("systemd-analyze", "apt-get install systemd")
    check = subprocess.run([tool, "verify", "--man=no", path.name], cwd=tmp_path, capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    local = _unit(_render("triton_server", "airlock-triton.service.j2"))  # root-owned local fleet
    assert (local["User"], local["Group"]) == ("root", "root") and "AmbientCapabilities" not in local
    script = _render("triton_server", "run-process.sh.j2", airlock_owner="airlock")
    assert "--user airlock-triton" in script  # hosts without systemd: the supervisor drops to it


def test_units_put_grpc_on_tls_when_certificates_are_given() -> None:
    tls = {"triton_server_grpc_tls_cert": "/etc/airlock/tls/triton.pem",
           "triton_server_grpc_tls_key": "/etc/airlock/tls/triton.key",
           "triton_server_grpc_tls_ca": "/etc/airlock/ca.pem"}
    unit = _unit(_render("triton_server", "airlock-triton.service.j2", **tls))
    want = "--grpc-tls /etc/airlock/tls/triton.pem /etc/airlock/tls/triton.key /etc/airlock/ca.pem"
    assert want in unit["ExecStart"]
    assert "--grpc-ca /etc/airlock/ca.pem" in unit["ExecStartPost"]
    container = _unit(_render("triton_server", "airlock-triton-container.service.j2", **tls))["ExecStart"]
    assert "--grpc-use-ssl=true --grpc-server-cert=/etc/airlock/tls/triton.pem" in container
    assert "-v /etc/airlock/tls:/etc/airlock/tls:ro" in container
    script = _render("triton_server", "run-process.sh.j2", **tls)
    assert want in script
    plain = _unit(_render("triton_server", "airlock-triton.service.j2"))
    assert "--grpc-tls" not in plain["ExecStart"] and "--grpc-ca" not in plain["ExecStartPost"]


@dataclass
class RoleTriton:
    extra: dict[str, object]
    """The vars of both roles (and the interpreter) for ``_run``."""
    setup: Path
    """The playbook that applied roles/triton_server and roles/triton_models."""
    client: TritonClient


@contextlib.contextmanager
def _triton_by_roles(tmp_path: Path, root: Path, names: list[str],
                     serving: dict[str, dict[str, object]] | None = None) -> Iterator[RoleTriton]:
    """Apply roles/triton_server (wheel method, supervised process on free ports) and
    roles/triton_models over the Airlock ``root`` (asserting success), with ``serving`` as
    triton_models_serving; the server the roles start is stopped at the end."""
    http, grpc, metrics = free_port(), free_port(), free_port()
    venv_bin = Path(sys.executable).parent
    extra: dict[str, object] = {
        "ansible_python_interpreter": sys.executable,
        "triton_server_supervisor": "process", "triton_server_install_wheels": False,
        "triton_server_install_apt": False, "triton_server_python": sys.executable,
        "triton_server_http_port": http, "triton_server_grpc_port": grpc,
        "triton_server_metrics_port": metrics, "triton_server_model_repository": str(tmp_path / "triton"),
        "triton_server_workdir": str(tmp_path / "srv"),
        "triton_models_airlock": str(venv_bin / "airlock"), "triton_models_root": str(root),
        "triton_models_names": names, "triton_models_serving": serving or {},
        "triton_server_control_key_file": str(tmp_path / "etc" / "triton-control.key"),
    }
    pidfile = tmp_path / "srv" / "tritonserver.pid"
    setup = _playbook(tmp_path, [{"hosts": "all", "gather_facts": False,
                                  "roles": ["triton_server", "triton_models"]}])
    _ansible()
    try:
        first = _run(setup, extra)
        assert first.returncode == 0, first.stdout[-3000:]
        key = read_control_key(tmp_path / "etc" / "triton-control.key")  # the role made it, mode 0600
        with pytest.raises(ServingError, match="needs the credential"):  # model control is restricted
            TritonClient(f"http://127.0.0.1:{http}").index()
        yield RoleTriton(extra, setup, TritonClient(f"http://127.0.0.1:{http}", control_key=key))
    finally:
        started = pidfile.is_file()
        if started:
            pid = int(pidfile.read_text())
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            else:
                for _ in range(100):
                    try:
                        os.kill(pid, 0)
                    except ProcessLookupError:
                        break
                    subprocess.run(["sleep", "0.1"], check=False)
                else:
                    os.killpg(pid, signal.SIGKILL)
        _kill_servers_of(tmp_path / "triton")  # a server a restart left outside the recorded group
        assert started, "the role must record the server's pid"


def _kill_servers_of(model_repository: Path) -> None:
    """SIGKILL every tritonserver serving this test's model repository (no leak into the next test
    or the next CI run)."""
    for pid in pids_running(b"tritonserver", str(model_repository)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_roles_start_triton_and_load_models_idempotently(tmp_path: Path, airlock_root: Path) -> None:
    add_model(airlock_root, "role_m", current="1.0.0")
    with _triton_by_roles(tmp_path, airlock_root, ["role_m"]) as triton:
        extra, setup, client = triton.extra, triton.setup, triton.client
        assert client.loaded_versions("role_m") == {"1": "READY"}
        again = _run(setup, extra)  # idempotent: server running, repository unchanged
        assert again.returncode == 0 and "changed=0" in again.stdout, again.stdout[-3000:]
        add_model(airlock_root, "role_m", current="1.1.0")
        check = _run(setup, extra, check=True)  # check mode reports the pending version, writes nothing
        assert check.returncode == 0 and "changed=1" in check.stdout, check.stdout[-3000:]
        assert not (tmp_path / "triton" / "role_m" / "2").exists()
        sync = _playbook(tmp_path, [{"hosts": "all", "gather_facts": False, "tasks": [
            {"ansible.builtin.include_role": {"name": "triton_models", "tasks_from": "sync"}}]}])
        synced = _run(sync, extra)  # Triton follows `current` (here forward; after a rollback, back)
        assert synced.returncode == 0 and "changed=2" in synced.stdout, synced.stdout[-3000:]
        assert client.loaded_versions("role_m") == {"2": "READY"}


def test_rollback_playbook_makes_triton_serve_the_version_rolled_back_to(tmp_path: Path,
                                                                        minilm_pair: Pair) -> None:
    """playbooks/rollback.yml with airlock_rollback_serve: the repository goes back to 1.0.0 and the
    real tritonserver the roles started serves it (it served 1.1.0 before), with the serving settings
    the install stored (the rollback run is not given them again)."""
    root = tmp_path / "airlock"
    repo = Repository(root, lock_timeout=30)
    try:
        for version, src in (("1.0.0", minilm_pair.old), ("1.1.0", minilm_pair.new)):
            repo.execute(repo.plan_install("rb_m", version, src))
    finally:
        repo.close()
    settings = {"instance_count": 2, "max_batch_size": 4, "dynamic_batching": True}
    with _triton_by_roles(tmp_path, root, ["rb_m"], {"rb_m": settings}) as triton:
        entry = TritonModel(tmp_path / "triton" / "rb_m")

        def served() -> list[str]:
            return [entry.versions()[int(n)].airlock_version
                    for n, state in triton.client.loaded_versions("rb_m").items() if state == "READY"]

        def loaded_settings() -> tuple[int, int, bool]:
            cfg = triton.client.model_config("rb_m")
            return cfg["instance_group"][0]["count"], cfg["max_batch_size"], "dynamic_batching" in cfg

        assert served() == ["1.1.0"]  # the active version
        assert loaded_settings() == (2, 4, True)
        back = {**{k: v for k, v in triton.extra.items() if k != "triton_models_serving"},
                "airlock_hosts": "all", "airlock_root": str(root), "airlock_rollback_serve": True}
        rollback = _run(PLAYBOOKS / "rollback.yml", back)
        assert rollback.returncode == 0, rollback.stdout[-3000:]
        assert (root / "model_repo" / "rb_m" / "current").resolve().name == "1.0.0"
        assert served() == ["1.0.0"]
        assert loaded_settings() == (2, 4, True)


@pytest.mark.parametrize("role", ["triton_server", "triton_models"])
def test_role_yaml_is_well_formed(role: str) -> None:
    for path in (ROLES / role).rglob("*.yml"):
        assert yaml.safe_load(path.read_text()) is not None, path
