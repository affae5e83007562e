"""Two real tritonservers behind a real HAProxy (roles/load_balancer, process supervisor), a client
sending requests through HAProxy the whole time: a drain-swap update with a gradual weight shift
drops no request; a failed gate leaves the host rolled back and re-enabled on the old version."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from airlock.serving.client import TritonClient
from airlock.serving.errors import ServingError
from airlock.serving.haproxy import drain_swap
from airlock.serving.reload import Reloader
from airlock.serving.server import ServerConfig, TritonServer, free_port
from airlock.serving.triton_repo import generate
from tests.serving.conftest import _require_triton, add_model, ids
from tests.serving.play import haproxy_by_role as _haproxy_by_role
from tests.serving.play import run_playbook as _run
from tests.serving.play import write_playbook as _playbook
from tests.support import require_tool


def _airlock(*args: str) -> subprocess.CompletedProcess[str]:
    cli = Path(sys.executable).with_name("airlock")
    return subprocess.run([str(cli), *args], capture_output=True, text=True, check=False,
                          env={**os.environ, "NO_COLOR": "1"}, timeout=120)


TIMINGS = Path(os.environ.get("AIRLOCK_LB_TIMINGS", "/tmp/airlock-lb-timings.json"))


@dataclass
class Traffic:
    """Unversioned requests through HAProxy, one after another, until stopped."""

    url: str
    samples: list[tuple[float, float, str | None]] = field(default_factory=list)  # (t, seconds, version)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        client = TritonClient(self.url, timeout=30)
        while not self.stop.is_set():
            t = time.monotonic()
            try:
                r = client.infer("lb_m", {"INPUT_IDS": ids()})
                self.samples.append((t, time.monotonic() - t, r.model_version))
            except ServingError as exc:
                self.errors.append(str(exc))

    def window(self, t0: float, t1: float) -> dict[str, float]:
        lat = np.asarray([d for t, d, _ in self.samples if t0 <= t <= t1]) * 1000
        return {"requests": int(lat.size), "p50_ms": round(float(np.percentile(lat, 50)), 1),
                "p99_ms": round(float(np.percentile(lat, 99)), 1)} if lat.size else {"requests": 0}


def test_drain_swap_through_haproxy_drops_no_request(tmp_path: Path, airlock_root: Path,
                                                      goldens: dict) -> None:
    _require_triton()
    require_tool("haproxy", "apt-get install haproxy (scripts/apt-packages.txt)")
    model = add_model(airlock_root, "lb_m", current="1.0.0")
    hosts: dict[str, TritonServer] = {}
    with contextlib.ExitStack() as stack:
        for name in ("t1", "t2"):
            (tmp_path / name / "models").mkdir(parents=True)
            generate(airlock_root, tmp_path / name / "models", models=["lb_m"])
            cfg = ServerConfig(tmp_path / name / "models", tmp_path / name / "w")
            srv = stack.enter_context(TritonServer(cfg))
            c = srv.client()
            c.load("lb_m")
            c.wait_ready("lb_m", 1)
            hosts[name] = srv
        servers = [{"name": n, "address": "127.0.0.1", "port": s.cfg.http_port} for n, s in hosts.items()]
        # t3: nothing listens there (HAProxy's health check sees it DOWN); weight 0: no traffic
        servers.append({"name": "t3", "address": "127.0.0.1", "port": free_port(), "weight": 0})
        lb, url = stack.enter_context(_haproxy_by_role(tmp_path, servers))
        assert {s.admin for s in lb.states("triton").values()} == {"ready"}
        traffic = Traffic(url)
        thread = threading.Thread(target=traffic.run, daemon=True)
        thread.start()
        time.sleep(3.0)
        steady = (time.monotonic() - 3.0, time.monotonic())

        def reloader(name: str) -> Reloader:
            return Reloader(hosts[name].client(), hosts[name].cfg.model_repository)

        (model / "current").unlink()
        (model / "current").symlink_to("1.1.0")
        results, windows = [], []
        def to(name: str, version: str, golden: str) -> bool:
            return reloader(name).reload("lb_m", version, model / version, goldens[golden]).ok

        for name, weights in (("t1", (10, 50)), ("t2", ())):
            t0 = time.monotonic()
            res = drain_swap(lb, "triton", name, swap=lambda n=name: to(n, "1.1.0", "1.1.0"),
                             rollback=lambda n=name: to(n, "1.0.0", "1.0.0"),
                             weights=weights, settle_s=1.5)
            windows.append((t0, time.monotonic()))
            results.append(res.as_dict())
            assert res.ok, res.detail
            assert [s["weight"] for s in res.steps] == [*weights, 100]
        time.sleep(1.0)

        # a failed gate: t1 offered a version whose golden record does not match (1.0.0 checked
        # against 1.1.0's answers): the candidate is refused while t1 is drained, the rollback runs
        # (Triton never left 1.1.0), and t1 is re-enabled at full weight on the version it had
        rolled_back = []
        failed = drain_swap(lb, "triton", "t1", swap=lambda: to("t1", "1.0.0", "1.1.0"),
                            rollback=lambda: rolled_back.append(lb.state("triton", "t1").admin), settle_s=0.5)
        assert rolled_back == ["drain"], "the rollback runs while the host is drained"
        assert not failed.ok and "gate failed" in failed.detail
        st = lb.state("triton", "t1")
        assert (st.admin, st.weight) == ("ready", 100)
        assert hosts["t1"].client().loaded_versions("lb_m") == {"2": "READY"}  # still 1.1.0

        # the CLI update.yml's airlock_lb_drain_command / airlock_lb_enable_command run on the LB host
        sock = ["--socket", str(tmp_path / "lb" / "admin.sock"), "--json"]
        drained = _airlock("serve", "lb", "drain", "t2", "--wait", "60", *sock)
        assert drained.returncode == 0 and json.loads(drained.stdout)["admin"] == "drain", drained.stderr
        status = json.loads(_airlock("serve", "lb", "status", *sock).stdout)
        assert (status["t1"]["admin"], status["t2"]["admin"]) == ("ready", "drain")
        enabled = _airlock("serve", "lb", "enable", "t2", "--weight", "100", *sock)
        assert enabled.returncode == 0 and json.loads(enabled.stdout)["admin"] == "ready"
        unknown = _airlock("serve", "lb", "drain", "nope", *sock[:2])
        assert unknown.returncode == 50 and "has no server 'nope'" in unknown.stderr

        # update.yml's weight steps (playbooks/tasks/lb_enable.yml, airlock_lb_weight_steps): t2,
        # drained, comes back at 10, then 50, then 100, HAProxy's health check UP and no error between
        assert _airlock("serve", "lb", "drain", "t2", *sock).returncode == 0
        shift_cmd = f"{Path(sys.executable).with_name('airlock')} serve lb shift t2 {' '.join(sock[:2])}"
        lb_vars = {"ansible_python_interpreter": sys.executable, "airlock_update_lb": True,
                   "airlock_update_lb_host": "localhost", "airlock_lb_shift_command": shift_cmd,
                   "airlock_lb_enable_command": "false",  # not used when steps are given
                   "airlock_lb_weight_steps": [10, 50], "airlock_lb_settle_seconds": 1}
        play = _playbook(tmp_path, [{"hosts": "all", "gather_facts": False, "tasks": [
            {"ansible.builtin.import_tasks": str(Path(__file__).resolve().parents[2] / "playbooks" / "tasks"
                                                 / "lb_enable.yml")}]}])
        shifted = _run(play, lb_vars)
        assert shifted.returncode == 0, shifted.stdout[-3000:]
        weights = [int(w) for w in re.findall(r"weight'?: (\d+)", shifted.stdout)]
        assert weights == [10, 50, 100], shifted.stdout[-3000:]
        st = lb.state("triton", "t2")
        assert (st.admin, st.weight) == ("ready", 100)
        time.sleep(1.0)
        traffic.stop.set()
        thread.join(60)

        # a step whose health check fails: t3 (DOWN) is drained again, exit 50, nothing else changes
        down = _airlock("serve", "lb", "shift", "t3", "--step", "10", "--settle", "2", *sock[:2])
        assert down.returncode == 50 and "health check" in down.stderr, down.stderr
        assert lb.state("triton", "t3").admin == "drain"
        others = {n: s.admin for n, s in lb.states("triton").items() if n != "t3"}
        assert others == {"t1": "ready", "t2": "ready"}

    assert traffic.errors == [], traffic.errors[:5]
    versions = [v for _, _, v in traffic.samples]
    assert versions[0] == "1" and versions[-1] == "2" and len(versions) > 50
    report = {"failed_requests": len(traffic.errors), "steady": traffic.window(*steady),
              "during_swaps": traffic.window(windows[0][0], windows[-1][1]), "swaps": results}
    TIMINGS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))


@pytest.mark.parametrize("bad", [{"load_balancer_servers": []}, {"load_balancer_supervisor": "upstart"}])
def test_role_refuses_bad_settings(tmp_path: Path, bad: dict[str, object]) -> None:
    extra = {"ansible_python_interpreter": sys.executable, "load_balancer_install_apt": False,
             "load_balancer_servers": [{"name": "a", "address": "127.0.0.1", "port": 1}], **bad}
    play = _playbook(tmp_path, [{"hosts": "all", "gather_facts": False, "roles": ["load_balancer"]}])
    result = _run(play, extra)
    assert result.returncode != 0 and "load_balancer_supervisor must be systemd|process" in result.stdout
