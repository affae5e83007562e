"""roles/monitoring renders Prometheus' scrape configs from the inventory (node_exporter and Triton's
metrics port on every appliance, per-host ports honoured) and an Alertmanager routing config; the
files pass ``promtool check config`` and ``amtool check-config``; the role is idempotent."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.monitoring.helpers import promtool
from tests.monitoring.render import render_monitoring
from tests.support import require_tool


def test_scrape_configs_from_inventory(tmp_path: Path) -> None:
    hosts: dict[str, dict[str, Any]] = {
        "gpu-01": {"ansible_host": "10.20.0.11"},
        "gpu-02": {"ansible_host": "10.20.0.12", "triton_server_metrics_port": 9002}}
    r = render_monitoring(tmp_path / "out", hosts, monitoring_critical_webhook_url="http://127.0.0.1:1/page")
    p = subprocess.run([promtool(), "check", "config", str(r.prometheus)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    amtool = require_tool("amtool", "apt-get install prometheus-alertmanager")
    p = subprocess.run([amtool, "check-config", str(r.alertmanager)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    cfg = yaml.safe_load(r.prometheus.read_text())
    jobs = {j["job_name"]: {sc["labels"]["host"]: sc["targets"] for sc in j["static_configs"]}
            for j in cfg["scrape_configs"]}
    assert jobs == {"node": {"gpu-01": ["10.20.0.11:9100"], "gpu-02": ["10.20.0.12:9100"]},
                    "triton": {"gpu-01": ["10.20.0.11:8002"], "gpu-02": ["10.20.0.12:9002"]}}
    assert cfg["rule_files"] == [str(r.rules)]
    am = yaml.safe_load(r.alertmanager.read_text())
    assert am["route"]["routes"][0]["receiver"] == "airlock-critical"
    assert {rc["name"] for rc in am["receivers"]} == {"airlock-default", "airlock-critical"}
    # a second run changes nothing
    before = {p.name: p.read_bytes() for p in (r.prometheus, r.rules, r.alertmanager)}
    render_monitoring(tmp_path / "out", hosts, monitoring_critical_webhook_url="http://127.0.0.1:1/page")
    assert before == {p.name: p.read_bytes() for p in (r.prometheus, r.rules, r.alertmanager)}
