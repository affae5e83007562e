"""ansible-test sanity (offline) for the modules and ansible-lint (production profile) for the roles,
playbooks, inventories and molecule scenario: both scripts must pass."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(900)
def test_ansible_test_sanity() -> None:
    r = subprocess.run([str(REPO / "scripts" / "ansible-sanity.sh")], capture_output=True, text=True,
                       timeout=900, cwd=REPO)
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
    assert "validate-modules" in r.stdout + r.stderr


@pytest.mark.timeout(600)
def test_ansible_lint_production_profile() -> None:
    r = subprocess.run([str(REPO / "scripts" / "ansible-lint.sh")], capture_output=True, text=True,
                       timeout=600, cwd=REPO)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    assert "Profile 'production' was required, and it passed" in out
