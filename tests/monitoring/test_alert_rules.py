"""Every alert rule of roles/monitoring has a promtool unit test: the rules are rendered by the real
role (ansible-playbook, promtool validating), ``promtool check rules`` passes, and ``promtool test
rules`` runs one firing and one quiet case per alert (exact labels and annotations)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.monitoring.helpers import promtool
from tests.monitoring.render import Rendered, render_monitoring


def L(host: str, job: str = "node", **extra: str) -> dict[str, str]:
    port = {"node": "9100", "triton": "8002", "dcgm": "9400"}[job]
    return {"job": job, "instance": f"{host}:{port}", "host": host, **extra}


def series(name: str, labels: dict[str, str]) -> str:
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


# (alert, interval, input series, eval_time of the firing case, firing label sets, quiet eval_time, $value)
CASES: list[dict[str, Any]] = [
    {"alert": "IntegrityDrift", "series": [("airlock_verify_ok", L("a"), "1 1 0 0"),
                                            ("airlock_verify_ok", L("b"), "1 1 1 1")],
     "fire": "3m", "quiet": "1m", "firing": [L("a")]},
    {"alert": "AuditChainBroken", "series": [("airlock_audit_chain_ok", L("a"), "1 0 0"),
                                              ("airlock_audit_chain_ok", L("b"), "1 1 1")],
     "fire": "2m", "quiet": "0m", "firing": [L("a")]},
    {"alert": "VerifyStale", "series": [("airlock_verify_last_run_timestamp_seconds", L("a"), "0+0x200"),
                                         ("airlock_verify_last_run_timestamp_seconds", L("b"), "0+60x200")],
     "fire": "181m", "quiet": "179m", "firing": [L("a")]},
    {"alert": "VerifyNeverRan", "series": [("airlock_metrics_last_write_timestamp_seconds", L("a"), "1x10"),
                                            ("airlock_metrics_last_write_timestamp_seconds", L("b"), "1x10"),
                                            ("airlock_verify_last_run_timestamp_seconds", L("b"), "1x10")],
     "fire": "3m", "quiet": "0m", "firing": [L("a")]},
    {"alert": "UpdateFailed",
     "series": [("airlock_operation_last_success", L("a", action="update"), "1 0 0"),
                ("airlock_operation_last_success", L("b", action="update"), "1 1 1"),
                ("airlock_operation_last_success", L("b", action="prune"), "0 0 0")],
     "fire": "2m", "quiet": "0m", "firing": [L("a", action="update")]},
    {"alert": "UpdateRolledBack",
     "series": [("airlock_operation_last_timestamp_seconds", L("a", action="update"), "100 100 100"),
                ("airlock_operation_last_timestamp_seconds", L("a", action="rollback"), "50 50 200"),
                ("airlock_operation_last_timestamp_seconds", L("b", action="update"), "300 300 300"),
                ("airlock_operation_last_timestamp_seconds", L("b", action="rollback"), "200 200 200")],
     "fire": "2m", "quiet": "0m", "firing": [L("a")]},
    {"alert": "KeyRotationOverdue", "interval": "1d",
     "series": [("airlock_kek_last_rotation_timestamp_seconds", L("a"), "0x400"),
                ("airlock_kek_last_rotation_timestamp_seconds", L("b"), "0+86400x400"),
                # never rotated: the key's creation time (c old, d new); e: rotated since, old key
                ("airlock_kek_created_timestamp_seconds", L("c", key="hsm:k", source="provider"), "0x400"),
                ("airlock_kek_created_timestamp_seconds", L("d", key="hsm:k", source="provider"),
                 "0+86400x400"),
                ("airlock_kek_created_timestamp_seconds", L("e", key="hsm:k", source="first-use"), "0x400"),
                ("airlock_kek_last_rotation_timestamp_seconds", L("e"), "0+86400x400")],
     "fire": "366d", "quiet": "364d", "firing": [L("a"), L("c")]},
    {"alert": "TLSCertificateExpiring", "interval": "1d",
     "series": [("airlock_tls_cert_not_after_timestamp_seconds", L("a", path="/etc/airlock/tls.crt"),
                 f"{30 * 86400}x40"),
                ("airlock_tls_cert_not_after_timestamp_seconds", L("b", path="/etc/airlock/tls.crt"),
                 f"{90 * 86400}x40")],
     "fire": "20d", "quiet": "10d", "firing": [L("a", path="/etc/airlock/tls.crt")]},
    {"alert": "TierDiskFull", "value": "90%",
     "series": [("airlock_tier_filesystem_avail_bytes", L("a", tier="hot"), "50 10 10 10 10"),
                ("airlock_tier_filesystem_size_bytes", L("a", tier="hot"), "100x5"),
                ("airlock_tier_filesystem_avail_bytes", L("a", tier="warm"), "80x5"),
                ("airlock_tier_filesystem_size_bytes", L("a", tier="warm"), "100x5")],
     "fire": "4m", "quiet": "1m", "firing": [L("a", tier="hot")]},
    {"alert": "ApplianceDown", "series": [("up", L("a"), "1 0 0 0 0"), ("up", L("b"), "1 1 1 1 1")],
     "fire": "4m", "quiet": "1m", "firing": [L("a")]},
    {"alert": "TritonDown",
     "series": [("up", L("a", "triton"), "1 0 0 0 0"), ("up", L("b", "triton"), "1x5")],
     "fire": "4m", "quiet": "1m", "firing": [L("a", "triton")]},
    {"alert": "ModelNotReady",
     "series": [("up", L("a", "triton"), "1x10"), ("up", L("b", "triton"), "1x10"),
                ("nv_inference_count", L("a", "triton", model="tiny", version="1"), "0x10"),
                ("nv_inference_count", L("b", "triton", model="other", version="1"), "0x10")],
     "fire": "4m", "quiet": None, "firing": [L("b", "triton", model="tiny")]},
    {"alert": "InferenceErrorRate", "value": "2%",
     "series": [("nv_inference_request_success", L("a", "triton", model="tiny"), "0+98x20"),
                ("nv_inference_request_failure", L("a", "triton", model="tiny"), "0+2x20"),
                ("nv_inference_request_success", L("b", "triton", model="tiny"), "0+999x20"),
                ("nv_inference_request_failure", L("b", "triton", model="tiny"), "0+1x20")],
     "fire": "10m", "quiet": None, "firing": [L("a", "triton", model="tiny")]},
    {"alert": "InferenceLatencyP99", "value": "600",
     "series": [("nv_inference_request_summary_us", L("a", "triton", model="tiny", quantile="0.99"),
                 "100000 600000 600000 600000 600000"),
                ("nv_inference_request_summary_us", L("b", "triton", model="tiny", quantile="0.99"),
                 "100000x5")],
     "fire": "4m", "quiet": "1m", "firing": [L("a", "triton", model="tiny")]},
    {"alert": "GPUUtilisationHigh",
     "series": [("DCGM_FI_DEV_GPU_UTIL", L("a", "dcgm", gpu="0"), "95x12"),
                ("DCGM_FI_DEV_GPU_UTIL", L("b", "dcgm", gpu="0"), "80x12")],
     "fire": "10m", "quiet": "3m", "firing": [L("a", "dcgm", gpu="0")]},
    {"alert": "GPUMemoryNearFull", "value": "96%",
     "series": [("DCGM_FI_DEV_FB_USED", L("a", "dcgm", gpu="0"), "96x12"),
                ("DCGM_FI_DEV_FB_FREE", L("a", "dcgm", gpu="0"), "4x12"),
                ("DCGM_FI_DEV_FB_USED", L("b", "dcgm", gpu="0"), "50x12"),
                ("DCGM_FI_DEV_FB_FREE", L("b", "dcgm", gpu="0"), "50x12")],
     "fire": "10m", "quiet": "3m", "firing": [L("a", "dcgm", gpu="0")]},
]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    return render_monitoring(tmp_path_factory.mktemp("mon-role"),
                             {"a": {"ansible_host": "a"}, "b": {"ansible_host": "b"}},
                             monitoring_models=["tiny"], monitoring_dcgm_exporter_group="appliances")


def rules_by_name(rendered: Rendered) -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(rendered.rules.read_text())
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"]}


def expand(text: str, labels: dict[str, str], value: str | None) -> str:
    text = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m.group(1), ""), text)
    return re.sub(r"\{\{ \$value( \| humanizePercentage)? \}\}", lambda m: value or "", text)


def test_check_rules(rendered: Rendered) -> None:
    p = subprocess.run([promtool(), "check", "rules", str(rendered.rules)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"SUCCESS: {len(rules_by_name(rendered))} rules found" in p.stdout


def test_every_rule_has_a_unit_test(rendered: Rendered) -> None:
    assert sorted(rules_by_name(rendered)) == sorted(c["alert"] for c in CASES)


def unit_tests(rendered: Rendered, interval: str = "1m") -> dict[str, Any]:
    """The cases on one evaluation interval (promtool evaluates every rule at each step up to the
    last eval_time: the key-age and certificate cases run on a one-day interval)."""
    rules = rules_by_name(rendered)
    tests = []
    for c in (c for c in CASES if c.get("interval", "1m") == interval):
        rule = rules[c["alert"]]
        labels = rule.get("labels", {})
        checks: list[dict[str, Any]] = [{
            "eval_time": c["fire"], "alertname": c["alert"],
            "exp_alerts": [{"exp_labels": {**lab, **labels},
                            "exp_annotations": {k: expand(v, {**lab, **labels}, c.get("value"))
                                                for k, v in rule.get("annotations", {}).items()}}
                           for lab in c["firing"]]}]
        if c["quiet"] is not None:
            checks.append({"eval_time": c["quiet"], "alertname": c["alert"], "exp_alerts": []})
        tests.append({"interval": c.get("interval", "1m"),
                      "input_series": [{"series": series(n, lab), "values": v} for n, lab, v in c["series"]],
                      "alert_rule_test": checks})
    return {"rule_files": [str(rendered.rules)], "evaluation_interval": interval, "tests": tests}


@pytest.mark.parametrize("interval", ["1m", "1d"])
def test_promtool_unit_tests(rendered: Rendered, tmp_path: Path, interval: str) -> None:
    spec = tmp_path / "alerts.test.yml"
    spec.write_text(yaml.safe_dump(unit_tests(rendered, interval), sort_keys=False))
    p = subprocess.run([promtool(), "test", "rules", str(spec)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "SUCCESS" in p.stdout
    assert {c["alert"] for c in CASES if c.get("interval", "1m") == interval}


def test_unit_tests_can_fail(rendered: Rendered, tmp_path: Path) -> None:
    """The harness catches a wrong expectation: IntegrityDrift expected on the clean host b fails."""
    doc = unit_tests(rendered)
    doc["tests"] = [doc["tests"][0]]
    doc["tests"][0]["alert_rule_test"][0]["exp_alerts"][0]["exp_labels"]["host"] = "b"
    spec = tmp_path / "wrong.test.yml"
    spec.write_text(yaml.safe_dump(doc, sort_keys=False))
    p = subprocess.run([promtool(), "test", "rules", str(spec)], capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "IntegrityDrift" in p.stdout + p.stderr
