"""The molecule scenarios (driver "default", localhost): syntax, converge, idempotence, verify."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.provision.ansible_run import REPO_ROOT
from tests.support import require_root, require_tool


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["preflight", "offline_repo"])
def test_molecule_scenario(scenario: str, tmp_path: Path) -> None:
    bindir = Path(sys.executable).parent
    if not (bindir / "molecule").is_file():
        require_tool("molecule", ".venv/bin/pip install 'molecule>=25,<27'")
    if scenario == "offline_repo":
        require_root("apt-get update of the offline source")
    env = {
        **os.environ,
        "PATH": f"{bindir}:{os.environ['PATH']}",
        "ANSIBLE_NOCOLOR": "1",
        "NO_COLOR": "1",
    }
    proc = subprocess.run(
        [str(bindir / "molecule"), "test", "-s", scenario],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    for step in ("converge", "idempotence", "verify"):
        assert re.search(rf"{scenario} (➜|>) {step}: Executed: Successful", out), out[-4000:]
