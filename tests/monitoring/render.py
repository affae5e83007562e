"""Render roles/monitoring for real: ansible-playbook runs playbooks/monitoring.yml on localhost
(local connection, no packages, no services) into a temporary directory; the role's own
``validate`` runs promtool and amtool on each file before it is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Rendered:
    prometheus: Path
    rules: Path
    alertmanager: Path


LOCAL = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}


def run_playbook(out: Path, playbook: str, groups: dict[str, dict[str, dict[str, Any]]],
                 extravars: dict[str, Any]) -> None:
    """``ansible-playbook playbooks/<playbook>`` on an inventory of ``groups`` written under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    inv = out / "inventory.yml"
    inv.write_text(yaml.safe_dump({"all": {"children": {g: {"hosts": h} for g, h in groups.items()}}}))
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    p = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inv),
                        str(REPO / "playbooks" / playbook), "-e", json.dumps(extravars)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        raise AssertionError(f"{playbook} failed:\n{p.stdout[-4000:]}\n{p.stderr[-2000:]}")


def render_monitoring(out: Path, appliances: dict[str, dict[str, Any]], **extra: Any) -> Rendered:
    r = Rendered(out / "prometheus.yml", out / "airlock-alerts.yml", out / "alertmanager.yml")
    ev = {"monitoring_install_packages": False, "monitoring_manage_services": False,
          "monitoring_prometheus_config": str(r.prometheus), "monitoring_rules_file": str(r.rules),
          "monitoring_alertmanager_config": str(r.alertmanager), **extra}
    run_playbook(out, "monitoring.yml", {"appliances": appliances, "monitoring": {"mon": LOCAL}}, ev)
    return r


def render_integrity_check(out: Path, **extra: Any) -> tuple[Path, Path]:
    """The service and timer units of roles/integrity_check, written into ``out`` (no systemd)."""
    ev = {"integrity_check_manage_services": False, "integrity_check_unit_dir": str(out), **extra}
    run_playbook(out, "integrity_check.yml", {"appliances": {"app": LOCAL}}, ev)
    return out / "airlock-integrity-check.service", out / "airlock-integrity-check.timer"
