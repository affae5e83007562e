"""Run the roles for real with ansible-playbook against localhost (connection local)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support import ansible_playbook

__all__ = ["REPO_ROOT", "PlayResult", "ansible_playbook", "run_role"]

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class PlayResult:
    rc: int
    output: str

    @property
    def recap(self) -> dict[str, int]:
        m = re.search(r"localhost\s*:\s*(ok=\d+.*)$", self.output, re.M)
        assert m, self.output[-3000:]
        return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(1))}


def run_role(
    tmp: Path,
    role: str,
    variables: dict[str, Any],
    *,
    check: bool = False,
    diff: bool = False,
    tags: list[str] | None = None,
    facts: bool = False,
) -> PlayResult:
    """One ansible-playbook run of ``role`` on localhost (minimal facts only if the role needs them)."""
    play = [
        {
            "name": f"role {role}",
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": facts,
            "gather_subset": ["min"],
            "vars": {"ansible_python_interpreter": "/usr/bin/python3"},
            "roles": [{"role": role, "vars": variables}],
        }
    ]
    path = tmp / f"play-{role}-{len(list(tmp.glob('play-*')))}.yml"
    path.write_text(yaml.safe_dump(play, sort_keys=False))
    cmd = [ansible_playbook(), "-i", "localhost,", str(path)]
    if check:
        cmd.append("--check")
    if diff:
        cmd.append("--diff")
    if tags:
        cmd += ["--tags", ",".join(tags)]
    bindir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "ANSIBLE_ROLES_PATH": str(REPO_ROOT / "roles"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_HOST_KEY_CHECKING": "0",
        "ANSIBLE_LOCAL_TEMP": str(tmp / ".ansible-tmp"),
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "ANSIBLE_PIPELINING": "1",
        "PATH": f"{bindir}:{os.environ['PATH']}",
    }
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, cwd=tmp)
    return PlayResult(proc.returncode, proc.stdout + proc.stderr)
