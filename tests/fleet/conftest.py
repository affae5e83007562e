"""Session-scoped fleet of three namespaced SSH hosts (root only), and helpers to drive playbooks."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fleet.netns import Fleet, create_fleet
from tests.support import require_root, require_tool

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    require_root("network namespaces and sshd for the SSH fleet")
    require_tool("ip", "apt-get install iproute2")
    require_tool("ssh", "apt-get install openssh-client")
    if not Path("/usr/sbin/sshd").exists():
        require_tool("sshd", "apt-get install openssh-server")
    f = create_fleet(tmp_path_factory.mktemp("fleet"), 3)
    try:
        yield f
    finally:
        f.teardown()


def ansible_env(tmp: Path) -> dict[str, str]:
    """Environment for ansible-* subprocesses: the repo's ansible.cfg, a private control path dir."""
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
           "ANSIBLE_SSH_CONTROL_PATH_DIR": str(tmp / "cp"), "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-tmp"),
           "ANSIBLE_NOCOLOR": "1", "PYTHONPATH": str(REPO)}
    env.pop("AIRLOCK_FAULT", None)
    return env


def ansible_bin(name: str) -> str:
    return str(REPO / ".venv" / "bin" / name)


def run_ansible(tmp: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ansible_bin("ansible"), *args], env=ansible_env(tmp), capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)
