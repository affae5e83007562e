"""Session-scoped fleet of three namespaced SSH hosts (root only), and helpers to drive playbooks."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fleet.netns import Fleet, create_fleet
from tests.support import REPO, ansible_bin, ansible_env, require_root, require_tool, run_ansible_tool

__all__ = ["REPO", "ansible_bin", "ansible_env", "run_ansible"]  # the one runner: tests/support.py



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


def run_ansible(tmp: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return run_ansible_tool("ansible", *args, tmp=tmp, timeout=timeout)
