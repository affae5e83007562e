"""roles/preflight for real on this host: report, stop on failure, override, check mode."""

from __future__ import annotations

from pathlib import Path

from tests.provision.ansible_run import run_role


def test_passes_here_reports_and_never_changes(tmp_path: Path) -> None:
    v = {
        "preflight_min_ram_gib": 0.5,
        "preflight_min_cpus": 1,
        "preflight_tiers": {"hot": {"path": str(tmp_path / "airlock"), "bytes": 1 << 20}},
    }
    res = run_role(tmp_path, "preflight", v)
    assert res.rc == 0, res.output
    assert res.recap["changed"] == 0 and res.recap["failed"] == 0
    assert "PASS | kernel | kernel " in res.output and "Preflight passed" in res.output
    dry = run_role(tmp_path, "preflight", v, check=True)
    assert dry.rc == 0 and dry.recap["changed"] == 0 and "Preflight passed" in dry.output


def test_failure_stops_the_play_unless_allowed(tmp_path: Path) -> None:
    v = {
        "preflight_min_ram_gib": 0.5,
        "preflight_min_cpus": 1,
        "preflight_tiers": {"warm": {"path": str(tmp_path), "bytes": 1 << 62}},
    }
    res = run_role(tmp_path, "preflight", v)
    assert res.rc != 0 and res.recap["failed"] == 1
    assert f"Preflight failed on localhost: {tmp_path}: " in res.output
    assert 'preflight_allow_fail: ["disk:warm"]' in res.output
    ok = run_role(tmp_path, "preflight", {**v, "preflight_allow_fail": ["disk:warm"]})
    assert ok.rc == 0 and "FAIL | disk:warm |" in ok.output and "| True" in ok.output, ok.output[-2000:]
