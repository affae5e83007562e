"""roles/integrity_check: the rendered service and timer pass ``systemd-analyze verify`` (a unit whose
command is missing does not), and the service's ExecStart, run by hand (systemd is not PID 1 here),
verifies the real repository read-only and writes the metrics node_exporter reads."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import yaml

from airlock.repo import Repository
from tests.fleet.bundles import MODEL
from tests.monitoring.helpers import AIRLOCK, samples, unit
from tests.monitoring.render import LOCAL, render_integrity_check, run_playbook
from tests.support import require_tool, tree_state


def analyze(*units: Path) -> subprocess.CompletedProcess[str]:
    tool = require_tool("systemd-analyze", "apt-get install systemd")
    return subprocess.run([tool, "verify", "--man=no", *(u.name for u in units)], cwd=units[0].parent,
                          capture_output=True, text=True, timeout=60)


def test_units_verify_and_run(appliance: Repository, textfile_dir: Path,
                              check_units: tuple[Path, Path]) -> None:
    root = appliance.layout.root
    service, timer = check_units
    r = analyze(service, timer)
    assert r.returncode == 0, r.stdout + r.stderr
    t = unit(timer)
    assert t["Timer"]["OnCalendar"] == "hourly" and t["Timer"]["Unit"] == service.name
    s = unit(service)["Service"]
    assert s["Type"] == "oneshot" and s["ReadOnlyPaths"] == str(root)
    assert s["ReadWritePaths"] == str(textfile_dir) and s["ProtectSystem"] == "strict"

    before = tree_state(root)
    run = subprocess.run(shlex.split(s["ExecStart"]), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    got = samples(textfile_dir / "airlock.prom")
    assert got[("airlock_verify_ok", ())] == 1 and got[("airlock_verify_signatures_checked", ())] == 1
    assert tree_state(root) == before


def test_broken_unit_is_caught(tmp_path: Path) -> None:
    service, timer = render_integrity_check(tmp_path / "units", integrity_check_user="root",
                                            integrity_check_airlock="/nonexistent/airlock",
                                            integrity_check_group="root")
    r = analyze(service, timer)
    assert r.returncode != 0 and "/nonexistent/airlock" in r.stdout + r.stderr


def test_refresh_after_an_operation(appliance: Repository, textfile_dir: Path, tmp_path: Path) -> None:
    """roles/integrity_check tasks/refresh.yml, included from a play, rewrites airlock.prom (keeping
    the last verify result) with the state after an operation, here a rollback to 1.0.0."""
    root = appliance.layout.root
    first = subprocess.run([AIRLOCK, "metrics", "--root", str(root), "--textfile-dir", str(textfile_dir),
                            "--verify"], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    appliance.rollback(MODEL)
    play = tmp_path / "refresh.yml"
    play.write_text(yaml.safe_dump([{"name": "refresh", "hosts": "appliances", "gather_facts": False,
                                     "tasks": [{"name": "metrics", "ansible.builtin.include_role": {
                                         "name": "integrity_check", "tasks_from": "refresh"}}]}]))
    run_playbook(tmp_path / "play", str(play), {"appliances": {"app": LOCAL}},
                 {"integrity_check_airlock": AIRLOCK, "integrity_check_root": str(root),
                  "integrity_check_textfile_dir": str(textfile_dir),
                  "integrity_check_tiers": {"scratch": str(tmp_path)}, "integrity_check_refresh": True})
    got = samples(textfile_dir / "airlock.prom")
    assert got[("airlock_model_active_info", (("bundle_id", str(appliance.show(MODEL, "1.0.0")["bundle_id"])),
                                              ("model", MODEL), ("version", "1.0.0")))] == 1
    assert got[("airlock_operation_last_success", (("action", "rollback"),))] == 1
    assert got[("airlock_verify_ok", ())] == 1  # the last verify's result, kept
    assert ("airlock_tier_filesystem_size_bytes", (("tier", "scratch"),)) in got


def test_rollback_playbook_refreshes(appliance: Repository, textfile_dir: Path, tmp_path: Path) -> None:
    """playbooks/rollback.yml (as install.yml and update.yml) ends with the refresh where the scheduled
    check is installed (integrity_check_refresh: auto finds its service unit): airlock.prom then shows
    the version rolled back to and the rollback's result and duration."""
    root = appliance.layout.root
    units = tmp_path / "units"
    render_integrity_check(units, integrity_check_airlock=AIRLOCK, integrity_check_root=str(root),
                           integrity_check_textfile_dir=str(textfile_dir), integrity_check_user="root",
                           integrity_check_group="root")
    common = {"airlock_root": str(root), "airlock_state_dir": str(tmp_path / "state"),
              "integrity_check_airlock": AIRLOCK, "integrity_check_textfile_dir": str(textfile_dir)}
    # no unit in the directory looked at: auto leaves the metrics alone
    run_playbook(tmp_path / "play0", "rollback.yml", {"appliances": {"app": LOCAL}},
                 {**common, "integrity_check_unit_dir": str(tmp_path / "none")})
    assert not (textfile_dir / "airlock.prom").exists()
    appliance.activate(MODEL, "1.1.0")
    run_playbook(tmp_path / "play", "rollback.yml", {"appliances": {"app": LOCAL}},
                 {**common, "integrity_check_unit_dir": str(units)})
    got = samples(textfile_dir / "airlock.prom")
    assert got[("airlock_model_active_info", (("bundle_id", str(appliance.show(MODEL, "1.0.0")["bundle_id"])),
                                              ("model", MODEL), ("version", "1.0.0")))] == 1
    assert got[("airlock_operation_last_success", (("action", "rollback"),))] == 1
    assert 0 < got[("airlock_operation_last_duration_seconds", (("action", "rollback"),))] < 60
