"""The molecule scenario (model_repo + model_update on localhost): converge, idempotence, verify."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.fleet.bundles import make_bundles
from tests.support import require_tool

REPO = Path(__file__).resolve().parents[2]


def test_molecule_converge_idempotence_verify(tmp_path: Path) -> None:
    require_tool("gpg", "apt-get install gnupg")
    molecule = REPO / ".venv" / "bin" / "molecule"
    assert molecule.exists(), "molecule is a dev dependency: pip install -e .[dev]"
    b = make_bundles(tmp_path / "b")
    env = {**os.environ, "AIRLOCK_MOLECULE_ROOT": str(tmp_path / "root"),
           "AIRLOCK_MOLECULE_BUNDLE": str(b.full), "AIRLOCK_MOLECULE_KEYRING": str(b.keyring),
           "AIRLOCK_MOLECULE_TRUST": b.fingerprint, "PATH": f"{molecule.parent}:{os.environ['PATH']}",
           "MOLECULE_EPHEMERAL_DIRECTORY": str(tmp_path / "molecule-eph"), "ANSIBLE_NOCOLOR": "1",
           "PY_COLORS": "0"}
    env.pop("AIRLOCK_FAULT", None)
    r = subprocess.run([str(molecule), "test"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    assert "idempotence" in out.lower()
    # converge really installed into the temp root
    assert (tmp_path / "root" / "model_repo" / "tiny" / "current").is_symlink()
