"""ansible-lint, production profile, over the provisioning roles and their molecule scenarios."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.provision.ansible_run import REPO_ROOT
from tests.support import require_tool

PATHS = [
    "roles/offline_repo",
    "roles/preflight",
    "roles/nvidia_driver",
    "roles/ceph_client",
    "roles/container_runtime",
    "molecule/offline_repo",
    "molecule/preflight",
]


@pytest.mark.slow
def test_production_profile_clean() -> None:
    bindir = Path(sys.executable).parent
    lint = bindir / "ansible-lint"
    if not lint.is_file():
        lint = Path(require_tool("ansible-lint", ".venv/bin/pip install -e '.[dev]'"))
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "NO_COLOR": "1"}
    proc = subprocess.run(
        [str(lint), "--profile", "production", "--offline", "--nocolor", *PATHS],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Profile 'production' was required, and it passed" in proc.stdout + proc.stderr
