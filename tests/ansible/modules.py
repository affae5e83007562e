"""Run one Airlock module for real (``ansible localhost -m``, local connection, tests/support.py's
Ansible environment) and parse its result."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from tests.support import REPO, ansible_bin, ansible_env


def run_module(module: str, args: dict[str, Any], *, check: bool = False, diff: bool = False,
               python: str | None = None, env: dict[str, str] | None = None) -> dict[str, Any]:
    tree = Path(tempfile.mkdtemp(prefix="airlock-module-"))
    e = ansible_env(**(env or {}))
    cmd = [ansible_bin("ansible"), "localhost", "-c", "local", "-i", "localhost,",
           "-e", f"ansible_python_interpreter={python or REPO / '.venv/bin/python'}",
           "-m", f"airlock.appliance.{module}", "-a", json.dumps(args), "--tree", str(tree)]
    if check:
        cmd.append("--check")
    if diff:
        cmd.append("--diff")
    r = subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=300, cwd=REPO)
    try:
        result: dict[str, Any] = json.loads((tree / "localhost").read_text())
        result["failed"] = r.returncode != 0  # the tree callback drops the flag; the exit status has it
        result["ansible_output"] = r.stdout + r.stderr  # and the warnings and deprecations shown
    except (OSError, ValueError) as exc:
        raise AssertionError(f"no result from ansible: {r.stdout[-2000:]} {r.stderr[-2000:]}") from exc
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    return result
