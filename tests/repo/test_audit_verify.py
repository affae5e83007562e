"""Tampering: edited, deleted or reordered audit records, and tampered model files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from airlock.errors import AuditError
from airlock.repo import Repository
from tests.repo.conftest import Versions, cli


@pytest.fixture
def busy(repo: Repository, versions: Versions) -> Repository:
    repo.install_version("m", "1.0.0", versions.src["1.0.0"])
    repo.update_from_delta("m", versions.deltas[("1.0.0", "1.1.0")])
    repo.rollback("m")
    return repo


def _lines(repo: Repository) -> list[bytes]:
    return repo.layout.audit_log.read_bytes().splitlines()


def _write(repo: Repository, lines: list[bytes]) -> None:
    repo.layout.audit_log.write_bytes(b"".join(ln + b"\n" for ln in lines))


def test_intact_chain_verifies(busy: Repository) -> None:
    report = busy.audit_verify()
    assert report.ok and report.records == 5
    recs = [json.loads(ln) for ln in _lines(busy)]
    assert [r["action"] for r in recs] == ["install", "activate", "update", "activate", "rollback"]
    assert all({"seq", "prev", "time", "actor", "pid", "action", "model", "from", "to", "result",
                "details"} <= set(r) for r in recs)
    r = cli(busy.root, "audit", "verify", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["records"] == 5
    r = cli(busy.root, "audit", "show", "--tail", "2", "--json")
    assert [x["action"] for x in json.loads(r.stdout)["records"]] == ["activate", "rollback"]


def _edit(lines: list[bytes]) -> list[bytes]:
    rec = json.loads(lines[2])
    rec["to"] = "9.9.9"
    return [*lines[:2], json.dumps(rec, sort_keys=True, separators=(",", ":")).encode(), *lines[3:]]


TAMPER = {
    "edit": _edit,
    "delete": lambda ls: ls[:1] + ls[2:],
    "reorder": lambda ls: [ls[0], ls[2], ls[1], *ls[3:]],
    "truncate": lambda ls: ls[:-1],
    "garbage": lambda ls: [*ls[:3], b"not json", *ls[3:]],
}


@pytest.mark.parametrize("how", sorted(TAMPER))
def test_tampering_is_detected(busy: Repository, how: str) -> None:
    _write(busy, TAMPER[how](_lines(busy)))
    with pytest.raises(AuditError):
        busy.audit_verify()
    r = cli(busy.root, "audit", "verify")
    assert r.returncode == 33 and "audit chain broken" in r.stderr


def test_recomputed_chain_still_caught_by_catalog_head(busy: Repository) -> None:
    """A forger who drops the last record and re-chains the rest is caught by the catalog head."""
    lines = _lines(busy)[:-1]
    _write(busy, lines)
    r = cli(busy.root, "audit", "verify", "--log", str(busy.layout.audit_log))
    assert r.returncode == 0  # the chain alone looks fine...
    r = cli(busy.root, "audit", "verify")
    assert r.returncode == 33 and "removed from the end" in r.stderr  # ...the catalog knows better


def test_tampered_model_file_detected_by_verify(busy: Repository) -> None:
    vdir = busy.layout.version_dir("m", "1.1.0")
    target = vdir / "model.safetensors"
    data = bytearray(target.read_bytes())
    data[-5] ^= 0x01
    os.chmod(target, 0o644)
    target.write_bytes(bytes(data))
    os.chmod(target, 0o444)
    (vdir / "extra.bin").write_bytes(b"x")
    os.chmod(busy.layout.version_dir("m", "1.0.0") / "tokenizer.json", 0o644)  # shared inode: both
    report = busy.verify("m")
    assert not report["ok"]
    by_version = {v["version"]: {p["path"]: p["kind"] for p in v["problems"]} for v in report["versions"]}
    assert by_version["1.1.0"] == {"model.safetensors": "sha256", "extra.bin": "extra-file",
                                   "tokenizer.json": "mode"}
    assert by_version["1.0.0"] == {"tokenizer.json": "mode"}
    records = _lines(busy)
    r = cli(busy.root, "model", "verify", "m", "1.1.0", "--json")
    assert r.returncode == 13
    assert json.loads(r.stdout)["ok"] is False
    # verify writes nothing: no audit record, no history row (the report is the answer)
    assert _lines(busy) == records and busy.history("m")[-1]["action"] == "rollback"


def test_missing_file_and_broken_link(busy: Repository) -> None:
    vdir = busy.layout.version_dir("m", "1.0.0")
    os.chmod(vdir, 0o700)
    (vdir / "config.json").unlink()
    problems = busy.verify("m", "1.0.0")["versions"][0]["problems"]
    assert problems == [{"path": "config.json", "kind": "missing", "expected": problems[0]["expected"],
                         "actual": None}]
    Path(busy.layout.current("m")).unlink()
    os.symlink("1.1.0", busy.layout.current("m"))
    assert busy.verify("m")["current"]["ok"] is False


def test_anchor_outside_the_log_and_the_catalog(busy: Repository) -> None:
    """A forger who drops the last record and fixes the catalog's head too is caught by a head kept
    elsewhere (``--anchor``, the control node's copy)."""
    r = cli(busy.root, "audit", "verify", "--json")
    head = json.loads(r.stdout)["head"]
    lines = _lines(busy)[:-1]
    _write(busy, lines)
    from airlock.repo.audit import line_hash

    with busy.catalog().transaction():
        busy.catalog().set_meta("audit_head", f"{len(lines)}:{line_hash(lines[-1])}")
    assert cli(busy.root, "audit", "verify").returncode == 0
    r = cli(busy.root, "audit", "verify", "--anchor", f"{head['seq']}:{head['hash']}", "--json")
    assert r.returncode == 33 and "control node recorded" in r.stdout + r.stderr
    r = cli(busy.root, "audit", "verify", "--anchor", "nonsense")
    assert r.returncode == 33 and "not an audit head" in r.stderr
