"""The fuzz targets in the test suite: every regression input (a past finding or a hand-made hostile
case) replays without a traceback, and each target runs for a few seconds under atheris (coverage
guided) without a finding. `make fuzz` runs them for long (FUZZ_SECONDS per target)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.targets import TARGETS

HERE = Path(__file__).parent
REGRESSIONS = HERE / "regressions"
SHORT = int(os.environ.get("AIRLOCK_FUZZ_SHORT_SECONDS", "4"))


def _regressions() -> list[tuple[str, Path]]:
    return [(d.name, f) for d in sorted(REGRESSIONS.iterdir()) if d.is_dir() for f in sorted(d.iterdir())]


@pytest.mark.parametrize(("target", "path"), _regressions(),
                         ids=lambda v: v if isinstance(v, str) else v.name)
def test_regression_replays_cleanly(target: str, path: Path) -> None:
    TARGETS[target].run(path.read_bytes())


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_seeds_are_accepted_or_refused_cleanly(target: str) -> None:
    if target == "manifest_struct":
        pytest.importorskip("atheris", reason="pip install atheris (in the test extras)")
    for seed in TARGETS[target].seeds():
        TARGETS[target].run(seed)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_short_fuzz_run_finds_nothing(target: str, tmp_path: Path) -> None:
    pytest.importorskip("atheris", reason="pip install atheris (in the test extras)")
    corpus = tmp_path / "corpus"
    proc = subprocess.run([sys.executable, "-m", "tests.fuzz.run", target, "--seconds", str(SHORT),
                           "--corpus", str(corpus), "--artifacts", str(tmp_path / "crashes")],
                          capture_output=True, text=True, timeout=SHORT + 180, cwd=HERE.parents[1],
                          env={**os.environ, "AIRLOCK_FUZZ_TMP": str(tmp_path)})
    tail = proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, tail
    assert "Done" in proc.stderr and not list((tmp_path / "crashes").iterdir()), tail
