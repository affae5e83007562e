"""End to end with the real servers: node_exporter (textfile collector), Prometheus and Alertmanager
(configs rendered by roles/monitoring, short intervals, loopback), a real tritonserver and a webhook
receiver run by the test. A byte flipped in a weight file of a real signed repository is found by
the scheduled check (the integrity_check unit's ExecStart), IntegrityDrift fires in Prometheus and
Alertmanager delivers it to the webhook; the time from the flip to delivery is measured. Stopping
Triton fires TritonDown the same way; a Triton serving no model fires ModelNotReady for the model
the inventory expects; a real rollback followed by a metrics refresh fires UpdateRolledBack."""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from airlock.repo import Repository
from tests.fleet.bundles import MODEL
from tests.monitoring.helpers import AIRLOCK, flip_byte, unit
from tests.monitoring.render import render_monitoring
from tests.monitoring.stack import Stack, Webhook, wait_for
from tests.support import require_triton

FAST = {"monitoring_scrape_interval": "1s", "monitoring_evaluation_interval": "1s",
        "monitoring_alert_for": "0s", "monitoring_group_wait": "1s", "monitoring_group_interval": "1s",
        "monitoring_repeat_interval": "1h"}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path / "stack")
    s.base.mkdir()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    w = Webhook().start()
    yield w
    w.stop()


def test_drift_and_triton_down_reach_the_webhook(appliance: Repository, textfile_dir: Path,
                                                 check_units: tuple[Path, Path], stack: Stack,
                                                 webhook: Webhook, tmp_path: Path) -> None:
    require_triton()
    from airlock.serving.server import ServerConfig, TritonServer

    (tmp_path / "models").mkdir()
    triton = TritonServer(ServerConfig(tmp_path / "models", tmp_path / "triton")).start()
    try:
        root = appliance.layout.root
        service, _timer = check_units
        check = shlex.split(unit(service)["Service"]["ExecStart"])
        first = subprocess.run(check, capture_output=True, text=True, timeout=300)
        assert first.returncode == 0, first.stderr

        cfg = render_monitoring(tmp_path / "mon", {"app": {
            "ansible_host": "127.0.0.1", "monitoring_node_exporter_port": stack.node_port,
            "triton_server_metrics_port": triton.cfg.metrics_port}},
            monitoring_alertmanagers=[f"127.0.0.1:{stack.am_port}"], monitoring_webhook_url=webhook.url,
            monitoring_models=[MODEL], **FAST)
        stack.start_node_exporter(textfile_dir)
        stack.start_alertmanager(cfg.alertmanager)
        stack.start_prometheus(cfg.prometheus)
        try:
            wait_for("both targets up", lambda: len(stack.query('up{host="app"} == 1')) == 2, timeout=90)
            wait_for("the clean verify in Prometheus",
                     lambda: stack.query('airlock_verify_ok{host="app"} == 1'))
            assert stack.firing("IntegrityDrift") == [] and stack.firing("TritonDown") == []
            # Triton is up but serves no model: the model the inventory expects is not ready
            wait_for("ModelNotReady at the webhook", lambda: webhook.delivered("ModelNotReady"), timeout=60)
            assert stack.firing("ModelNotReady")[0]["labels"]["model"] == MODEL

            t0 = time.time()
            flip_byte(appliance)
            drift = subprocess.run(check, capture_output=True, text=True, timeout=300)
            assert drift.returncode == 13, drift.stderr  # drift found; metrics written first
            t_check = time.time()
            alerts = wait_for("IntegrityDrift firing", lambda: stack.firing("IntegrityDrift"), timeout=60)
            assert alerts[0]["labels"]["host"] == "app" and alerts[0]["labels"]["severity"] == "critical"
            t_fire = time.time()
            delivered = wait_for("IntegrityDrift at the webhook", lambda: webhook.delivered("IntegrityDrift"),
                                 timeout=60)
            rule = stack.query('airlock_verify_drift_items{host="app"}')
            assert rule and rule[0]["metric"]["rule"] == "sha256"

            t1 = time.time()
            triton.stop()
            wait_for("TritonDown firing", lambda: stack.firing("TritonDown"), timeout=60)
            down = wait_for("TritonDown at the webhook", lambda: webhook.delivered("TritonDown"), timeout=60)
            # a real rollback, then the refresh a play runs after an operation: UpdateRolledBack
            appliance.rollback(MODEL)
            refresh = subprocess.run([AIRLOCK, "metrics", "--root", str(root), "--textfile-dir",
                                      str(textfile_dir)], capture_output=True, text=True, timeout=300)
            assert refresh.returncode == 0, refresh.stderr
            wait_for("UpdateRolledBack at the webhook", lambda: webhook.delivered("UpdateRolledBack"),
                     timeout=60)
            timings = {"drift_to_check_done_s": round(t_check - t0, 2),
                       "drift_to_firing_s": round(t_fire - t0, 2),
                       "drift_to_webhook_s": round(delivered - t0, 2),
                       "triton_stop_to_webhook_s": round(down - t1, 2)}
            (tmp_path / "timings.json").write_text(json.dumps(timings))
            print(f"\nmonitoring end-to-end: {json.dumps(timings)}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{stack.logs()}") from None
    finally:
        triton.stop()
