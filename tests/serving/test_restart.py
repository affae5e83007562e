"""Triton comes back after kill -9 and after a restart of its supervisor (stand-in for a reboot),
serving the verified `current` versions; a tampered version is not loaded, the previous good one
is served and the failure is audited. Real tritonserver, real repository, real supervisor."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from airlock.repo import Repository
from airlock.serving.client import TritonClient
from airlock.serving.errors import ServingError
from airlock.serving.server import free_port
from airlock.serving.triton_repo import TritonModel
from tests.serving.conftest import Pair, _require_triton, ids
from tests.support import flip_byte

TIMINGS = Path(os.environ.get("AIRLOCK_SERVING_TIMINGS", "/tmp/airlock-serving-timings.json"))


class Supervised:
    """``python -m airlock.serving.server supervise`` (what roles/triton_server runs without systemd)."""

    def __init__(self, tmp: Path, root: Path) -> None:
        self.root, self.work, self.repo = root, tmp / "srv", tmp / "triton"
        self.http, self.grpc, self.metrics = free_port(), free_port(), free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = TritonClient(f"http://127.0.0.1:{self.http}", timeout=10)

    def start(self) -> None:
        self.repo.mkdir(exist_ok=True)
        argv = [sys.executable, "-m", "airlock.serving.server", "supervise",
                "--model-repository", str(self.repo), "--workdir", str(self.work),
                "--http-port", str(self.http), "--grpc-port", str(self.grpc),
                "--metrics-port", str(self.metrics), "--airlock-root", str(self.root)]
        self.work.mkdir(exist_ok=True)
        with open(self.work / "supervisor.log", "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def child(self) -> int:
        return int((self.work / "tritonserver.child.pid").read_text())

    def kill_all(self) -> None:
        """Supervisor and server die at once, as in a power cut."""
        pids = []
        with contextlib.suppress(FileNotFoundError, ValueError):
            pids.append(self.child())
        if self.proc is not None:
            pids.append(self.proc.pid)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)
        (self.work / "tritonserver.child.pid").unlink(missing_ok=True)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.kill_all()

    def log(self) -> str:
        return (self.work / "supervisor.log").read_text(errors="replace")[-3000:]


@contextlib.contextmanager
def supervised(tmp: Path, root: Path) -> Iterator[Supervised]:
    sup = Supervised(tmp, root)
    sup.start()
    try:
        yield sup
    finally:
        sup.stop()
        sup.kill_all()


def _first_answer(sup: Supervised, model: str, since: float, timeout: float = 240.0) -> tuple[float, str]:
    """Seconds from ``since`` to the first successful inference, and the Triton version that answered."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ServingError):
            r = sup.client.infer(model, {"INPUT_IDS": ids()})
            return time.monotonic() - since, str(r.model_version)
        time.sleep(0.1)
    raise AssertionError(f"no successful inference within {timeout:.0f}s:\n{sup.log()}")


def _served(sup: Supervised, model: str) -> list[str]:
    entry = TritonModel(sup.repo / model)
    loaded = sup.client.loaded_versions(model)
    return sorted(entry.versions()[int(n)].airlock_version for n, s in loaded.items() if s == "READY")


def _new_child(sup: Supervised, old: int, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError, ValueError):
            pid = sup.child()
            if pid != old:
                return pid
        time.sleep(0.1)
    raise AssertionError(f"supervisor did not restart tritonserver:\n{sup.log()}")


def _wait_served(sup: Supervised, model: str, want: list[str], timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ServingError):
            if _served(sup, model) == want:
                return
        time.sleep(0.2)
    raise AssertionError(f"{model} never served {want}:\n{sup.log()}")


def test_triton_comes_back_serving_the_verified_current_versions(tmp_path: Path, minilm_pair: Pair) -> None:
    _require_triton()
    root = tmp_path / "airlock"
    repo = Repository(root, lock_timeout=30)
    try:
        for version, src in (("1.0.0", minilm_pair.old), ("1.1.0", minilm_pair.new)):
            repo.execute(repo.plan_install("rs_m", version, src))
    finally:
        repo.close()
    timings: dict[str, float] = {}
    with supervised(tmp_path, root) as sup:
        t0 = time.monotonic()
        timings["cold_start_to_first_inference_s"], _ = _first_answer(sup, "rs_m", t0)
        _wait_served(sup, "rs_m", ["1.1.0"])

        # kill -9 tritonserver: the supervisor restarts it and restores the same version
        first = sup.child()
        os.kill(first, signal.SIGKILL)
        t_kill = time.monotonic()
        _new_child(sup, first)
        timings["kill9_to_first_inference_s"], version = _first_answer(sup, "rs_m", t_kill)
        assert _served(sup, "rs_m") == ["1.1.0"]

    # the supervisor and the server die together (power cut), then the supervisor starts again
    with supervised(tmp_path, root) as sup:
        t_boot = time.monotonic()
        timings["supervisor_restart_to_first_inference_s"], _ = _first_answer(sup, "rs_m", t_boot)
        _wait_served(sup, "rs_m", ["1.1.0"])

        # 1.1.0 tampered on disk: after the next crash it is not loaded; 1.0.0 (verified) serves
        weights = root / "model_repo" / "rs_m" / "1.1.0" / "model.safetensors"
        flip_byte(weights, 4096)
        pid = sup.child()
        os.kill(pid, signal.SIGKILL)
        _new_child(sup, pid)
        _wait_served(sup, "rs_m", ["1.0.0"])
        assert (root / "model_repo" / "rs_m" / "current").resolve().name == "1.1.0", "repository untouched"
        log = root / "model_repo" / "update_history.log"
        records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        audited = [r for r in records if r.get("action") == "serve-restore" and r.get("result") == "failed"]
        assert audited, f"the refused version must be audited: {records[-3:]}"
        assert "1.1.0" in json.dumps(audited[-1]) and "hashes do not verify" in json.dumps(audited[-1])
    TIMINGS.write_text(json.dumps(timings, indent=2) + "\n")
    print(json.dumps(timings))


@pytest.mark.parametrize("template", ["airlock-triton.service.j2", "run-process.sh.j2"])
def test_the_role_starts_triton_with_the_restore_hook(template: str) -> None:
    from tests.serving.play import render_template as _render

    text = _render("triton_server", template, triton_models_root="/srv/airlock")
    if template.endswith(".service.j2"):
        assert "Restart=always" in text
        post = next(line for line in text.splitlines() if line.startswith("ExecStartPost="))
        assert post.startswith("ExecStartPost=-/opt/airlock/venv/bin/airlock serve restore "
                               "--root /srv/airlock")
    else:
        assert "airlock.serving.server supervise" in text and "--airlock-root /srv/airlock" in text


def test_restore_cli_serves_current_and_exits_13_on_a_fallback(tmp_path: Path, minilm_pair: Pair) -> None:
    """`airlock serve restore` (systemd's ExecStartPost) against a plain started Triton."""
    _require_triton()
    from airlock.serving.server import ServerConfig, TritonServer

    root = tmp_path / "airlock"
    repo = Repository(root, lock_timeout=30)
    try:
        for version, src in (("1.0.0", minilm_pair.old), ("1.1.0", minilm_pair.new)):
            repo.execute(repo.plan_install("rc_m", version, src))
    finally:
        repo.close()
    (tmp_path / "triton").mkdir()
    stray = tmp_path / "triton" / "rc_m__candidate"  # a reload killed mid-way left its candidate
    stray.mkdir()
    with TritonServer(ServerConfig(tmp_path / "triton", tmp_path / "work")) as server:
        cli = Path(sys.executable).with_name("airlock")
        args = [str(cli), "serve", "restore", "--root", str(root), "--triton-repo", str(tmp_path / "triton"),
                "--url", server.url, "--grpc-url", server.grpc_url, "--json"]
        first = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
        assert first.returncode == 0, first.stdout + first.stderr
        assert json.loads(first.stdout)["models"]["rc_m"]["status"] == "current"
        assert not stray.exists()
        client = server.client()
        assert client.infer("rc_m", {"INPUT_IDS": ids()}).model_version == "1"

        weights = root / "model_repo" / "rc_m" / "1.1.0" / "model.safetensors"
        weights.chmod(0o644)
        with open(weights, "r+b") as fh:
            fh.seek(100)
            fh.write(b"\x00\x01\x02")
        weights.chmod(0o444)
        second = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
        assert second.returncode == 13, second.stdout + second.stderr
        row = json.loads(second.stdout)["models"]["rc_m"]
        assert row["status"] == "fallback" and row["served"] == "1.0.0" and "1.1.0" in row["refused"]
        assert client.infer("rc_m", {"INPUT_IDS": ids()}).model_version == "2"  # 1.0.0 got Triton version 2
