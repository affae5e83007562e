"""The namespaced fleet is reachable over real SSH, and only over the key we authorised."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.fleet.conftest import run_ansible
from tests.fleet.netns import Fleet
from tests.support import REPO


def test_ping_three_hosts_over_ssh(fleet: Fleet, tmp_path: Path) -> None:
    inv = fleet.inventory(tmp_path / "inv.yml", ansible_python_interpreter=str(REPO / ".venv/bin/python"))
    r = run_ansible(tmp_path, "appliances", "-i", str(inv), "-m", "ansible.builtin.ping", "-o")
    assert r.returncode == 0, r.stdout + r.stderr
    for h in fleet.hosts:
        assert f"{h.name} | SUCCESS" in r.stdout
    # each host really is its own network namespace: its address is on its own veth
    r = run_ansible(tmp_path, "host2", "-i", str(inv), "-m", "ansible.builtin.command",
                    "-a", "ip -j -4 addr show", "-o")
    assert r.returncode == 0, r.stdout + r.stderr
    raw = r.stdout.split("(stdout) ", 1)[1].replace("\\n", "\n")
    addrs = {a["local"] for link in json.loads(raw) for a in link.get("addr_info", [])}
    assert addrs == {"127.0.0.1", fleet.hosts[1].ip}


def test_ssh_refuses_an_unknown_key(fleet: Fleet, tmp_path: Path) -> None:
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    r = subprocess.run(["ssh", "-i", str(other), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                        "-o", f"UserKnownHostsFile={tmp_path / 'kh'}", "-o", "IdentitiesOnly=yes",
                        f"root@{fleet.hosts[0].ip}", "true"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 255
    assert "Permission denied" in r.stderr
