"""kill -9 at each write boundary of make and apply (AIRLOCK_FAULT in a real subprocess): no output,
the source untouched, and a re-run succeeds and cleans up after the killed run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.delta.helpers import tree_digest

AIRLOCK = [str(Path(sys.executable).parent / "airlock")]


def _run(args: list[str], fault: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CI": os.environ.get("CI", "")}
    env.pop("AIRLOCK_FAULT", None)
    if fault:
        env["AIRLOCK_FAULT"] = fault
    return subprocess.run([*AIRLOCK, *args], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("fault", ["delta.apply.mid-file", "delta.apply.before-rename"])
@pytest.mark.parametrize("reverse", [False, True])
def test_kill_during_apply(pair: tuple[Path, Path, Path], tmp_path: Path, fault: str, reverse: bool) -> None:
    old, new, delta = pair
    src, want = (new, old) if reverse else (old, new)
    before = tree_digest(src)
    out = tmp_path / "out"
    args = ["delta", "apply", str(src), str(delta), "-o", str(out)] + (["--reverse"] if reverse else [])
    killed = _run(args, fault)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not out.exists()
    assert tree_digest(src) == before
    stale = [p for p in tmp_path.iterdir() if p.name.startswith(".delta-staging-")]
    assert stale, "the killed run should have left its staging directory (that is what the re-run removes)"
    done = _run(args)
    assert done.returncode == 0, done.stderr
    assert tree_digest(out) == tree_digest(want)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.parametrize("fault", ["delta.make.mid-write", "delta.make.before-rename"])
def test_kill_during_make(pair: tuple[Path, Path, Path], tmp_path: Path, fault: str) -> None:
    old, new, _ = pair
    before = (tree_digest(old), tree_digest(new))
    out = tmp_path / "d.aldelta"
    args = ["delta", "make", str(old), str(new), "-o", str(out), "--level", "3"]
    killed = _run(args, fault)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not out.exists()
    assert (tree_digest(old), tree_digest(new)) == before
    done = _run(args)
    assert done.returncode == 0, done.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["d.aldelta"]
    applied = _run(["delta", "apply", str(old), str(out), "-o", str(tmp_path / "o")])
    assert applied.returncode == 0, applied.stderr
    assert tree_digest(tmp_path / "o") == tree_digest(new)
