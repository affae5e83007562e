"""The Grafana dashboard (roles/monitoring/files/grafana): valid JSON with unique panel ids, every
panel's query parses as PromQL on a real Prometheus (``/api/v1/query``, Grafana's ``$host`` and
``$__rate_interval`` substituted), the provisioning file points where the role puts it."""

from __future__ import annotations

import json
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.monitoring.stack import Stack, get_json, wait_for

GRAFANA = Path(__file__).resolve().parents[2] / "roles" / "monitoring" / "files" / "grafana"


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path / "stack")
    s.base.mkdir()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text("global: {scrape_interval: 1s}\nscrape_configs: []\n")
    s.start_prometheus(cfg)
    try:
        wait_for("Prometheus ready", lambda: get_json(f"{s.prometheus}/api/v1/status/buildinfo"), timeout=90)
        yield s
    finally:
        s.stop()


def exprs() -> list[tuple[str, str]]:
    dash = json.loads((GRAFANA / "airlock-fleet.json").read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p["targets"]]


def test_every_panel_query_parses(prometheus: Stack) -> None:
    found = exprs()
    assert len(found) >= 15
    for title, expr in found:
        q = expr.replace("$__rate_interval", "1m").replace("$host", ".*")
        try:
            prometheus.query(q)
        except urllib.error.HTTPError as exc:
            pytest.fail(f"{title}: {q}: {exc.read().decode(errors='replace')}")
    # the check can fail: a broken query is refused by the same server
    with pytest.raises(urllib.error.HTTPError):
        prometheus.query("sum by (host (airlock_verify_ok)")


def test_provisioning_points_at_the_dashboard() -> None:
    prov = yaml.safe_load((GRAFANA / "airlock-dashboards.yml").read_text())
    assert prov["apiVersion"] == 1 and prov["providers"][0]["type"] == "file"
