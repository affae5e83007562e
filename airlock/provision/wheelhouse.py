"""A wheelhouse: the Python wheels an appliance needs, collected on the connected side with pip."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from airlock.errors import ManifestError


def build_wheelhouse(requirements: list[str], out_dir: Path, *, python: str | None = None,
                     offline: bool = False, platform: str | None = None,
                     python_version: str | None = None) -> list[Path]:
    """``pip download`` ``requirements`` (binary wheels only, with dependencies) into ``out_dir``.

    ``offline`` forbids the index (``--no-index``) so only the pip cache / ``--find-links`` of the pip
    configuration serve; ``platform``/``python_version`` fetch for a target that differs from here."""
    if not requirements:
        raise ManifestError("no requirements given for the wheelhouse", rule="wheels")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [python or sys.executable, "-m", "pip", "download", "--disable-pip-version-check",
           "--only-binary=:all:", "--dest", str(out_dir)]
    if offline:
        cmd += ["--no-index", "--find-links", str(out_dir)]
    if platform:
        cmd += ["--platform", platform]
    if python_version:
        cmd += ["--python-version", python_version]
    proc = subprocess.run([*cmd, *requirements], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("ERROR")] or proc.stderr.splitlines()
        raise ManifestError(f"pip download {' '.join(requirements)}: {' '.join(lines[-2:])}",
                            path=str(out_dir), rule="wheels")
    return sorted(out_dir.glob("*.whl"))
