"""`airlock delta` commands: output, --json reports and documented exit codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from airlock.cli import app
from tests.delta.helpers import tree_digest

runner = CliRunner()


def _json(args: list[str]) -> tuple[int, dict[str, object]]:
    r = runner.invoke(app, [*args, "--json"])
    return r.exit_code, json.loads(r.stdout)


def test_make_inspect_apply_json(pair: tuple[Path, Path, Path], tmp_path: Path) -> None:
    old, new, _ = pair
    delta = tmp_path / "d.aldelta"
    code, rep = _json(["delta", "make", str(old), str(new), "-o", str(delta), "--from", "1.0", "--to", "1.1",
                       "--level", "3"])
    assert code == 0 and rep["ok"] and rep["reversible"] and rep["size"] == delta.stat().st_size
    assert rep["tensors"] == {"unchanged": 2, "diff": 1, "grown": 0, "new": 0, "removed": 1}
    code, rep = _json(["delta", "inspect", str(delta)])
    assert code == 0 and rep["from_version"] == "1.0" and rep["to_version"] == "1.1"
    assert set(rep["target_files"]) == set(tree_digest(new))  # type: ignore[arg-type]
    code, rep = _json(["delta", "apply", str(old), str(delta), "-o", str(tmp_path / "out")])
    assert code == 0 and rep["to_version"] == "1.1"
    assert tree_digest(tmp_path / "out") == tree_digest(new)
    code, rep = _json(["delta", "apply", str(new), str(delta), "--reverse", "--no-link", "-o",
                       str(tmp_path / "back")])
    assert code == 0 and rep["to_version"] == "1.0" and rep["linked"] == 0
    assert tree_digest(tmp_path / "back") == tree_digest(old)


def test_human_output(pair: tuple[Path, Path, Path]) -> None:
    _old, _new, delta = pair
    r = runner.invoke(app, ["delta", "inspect", str(delta)])
    assert r.exit_code == 0
    assert "1.0 -> 1.1, reversible" in r.stdout
    assert "zdiff" in r.stdout or "xor" in r.stdout


def test_exit_codes(pair: tuple[Path, Path, Path], tmp_path: Path) -> None:
    old, new, delta = pair
    code, rep = _json(["delta", "apply", str(new), str(delta), "-o", str(tmp_path / "x")])
    assert (code, rep["error"], rep["exit_code"]) == (20, "DeltaSourceError", 20)
    bad = tmp_path / "bad.aldelta"
    shutil.copy(delta, bad)
    with open(bad, "r+b") as fh:
        fh.write(b"X")
    code, rep = _json(["delta", "inspect", str(bad)])
    assert (code, rep["rule"]) == (21, "delta-foreign")
    broken = tmp_path / "broken"
    shutil.copytree(new, broken)
    (broken / "model-2.safetensors").write_bytes(b"\xff" * 16)
    code, rep = _json(["delta", "make", str(old), str(broken), "-o", str(tmp_path / "d2")])
    assert (code, rep["error"]) == (22, "TensorFormatError")
    code, rep = _json(["delta", "apply", str(old), str(delta), "-o", str(old)])
    assert code == 1 and rep["rule"] == "delta-output-exists"


def test_help_lists_commands() -> None:
    r = runner.invoke(app, ["delta", "--help"])
    assert r.exit_code == 0
    for cmd in ("make", "apply", "inspect", "path"):
        assert cmd in r.stdout
