"""Verify cannot be fooled by the catalog: each drift kind, tampered for real on a repository built
from real signed bundles (real gpg), is reported with its exact rule; the anti-downgrade floor comes
from the kept signed manifests; without trust the report says the signatures were not checked."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from airlock.hashing import sha256_file
from airlock.repo import Layout, Repository
from airlock.repo.audit import AuditHead, line_hash
from tests.fleet.bundles import MODEL, Bundles, install_host, trust_of
from tests.repo.conftest import cli


@dataclass
class Host:
    repo: Repository
    bundles: Bundles

    @property
    def layout(self) -> Layout:
        return self.repo.layout

    def sql(self, statement: str, *args: object) -> None:
        db = sqlite3.connect(self.layout.catalog)
        db.execute(statement, args)
        db.commit()
        db.close()

    def check(self, trust: bool = True, anchor: AuditHead | None = None) -> dict[str, Any]:
        return self.repo.compliance(trust=trust_of(self.bundles) if trust else None, anchor=anchor)

    def rules(self, trust: bool = True, anchor: AuditHead | None = None) -> set[str]:
        return {d["rule"] for d in self.check(trust, anchor)["drift"]}


@pytest.fixture
def host(tmp_path: Path, bundles: Bundles) -> Iterator[Host]:
    repo = install_host(tmp_path / "root", bundles, tmp_path)
    yield Host(repo, bundles)
    repo.close()


def _writable(p: Path, data: bytes) -> None:
    mode = p.stat().st_mode
    os.chmod(p, 0o644)
    p.write_bytes(data)
    os.chmod(p, mode)


def test_clean_host_has_no_drift_and_checks_signatures(host: Host) -> None:
    report = host.check()
    assert report["ok"], report["drift"]
    assert report["signatures_checked"] and report["warnings"] == []
    assert report["sequence"] == {"catalog": 2, "signed": 2}
    assert report["audit_ok"] and report["audit_head"]["seq"] == report["audit"]["records"]


def test_without_trust_the_report_says_signatures_were_not_checked(host: Host) -> None:
    report = host.check(trust=False)
    assert report["ok"] and not report["signatures_checked"]
    assert any("signatures NOT checked" in w for w in report["warnings"])
    r = cli(host.repo.root, "model", "verify")
    assert r.returncode == 0, r.stderr
    assert "WARNING: signatures NOT checked" in r.stderr
    r = cli(host.repo.root, "model", "verify", "--json")
    assert any("signatures NOT checked" in w for w in json.loads(r.stdout)["warnings"])
    r = cli(host.repo.root, "model", "verify", "--trust", host.bundles.fingerprint,
            "--keyring", str(host.bundles.keyring), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["signatures_checked"] is True


def test_cleared_provenance_and_catalog_hash_of_a_tampered_file(host: Host) -> None:
    """The issue's case: bundle_id/manifest_sha256 set to NULL and the tampered file's hash put into
    the catalog. The kept signed manifest still states 1.1.0, so every lie shows."""
    f = host.layout.version_dir(MODEL, "1.1.0") / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0x01
    _writable(f, bytes(data))
    host.sql("UPDATE versions SET bundle_id=NULL, manifest_sha256=NULL WHERE version='1.1.0'")
    host.sql("UPDATE files SET sha256=? WHERE relpath='model.safetensors' AND version_id="
             "(SELECT id FROM versions WHERE version='1.1.0')", sha256_file(f))
    drift = host.check()["drift"]
    by_rule = {d["rule"]: d for d in drift if d["version"] == "1.1.0"}
    assert {"sha256", "catalog-vs-signed", "provenance-bundle-id",
            "provenance-manifest-sha256"} <= set(by_rule)
    assert by_rule["provenance-bundle-id"]["expected"] == "test-delta" and \
        by_rule["provenance-bundle-id"]["found"] is None
    assert by_rule["sha256"]["found"] == sha256_file(f) and by_rule["sha256"]["path"] == str(f)


def _set_sequence(host: Host, value: int) -> None:
    host.sql("UPDATE meta SET value=? WHERE key='sequence'", str(value))


def test_lowered_catalog_sequence_is_drift_and_cannot_downgrade(host: Host, tmp_path: Path) -> None:
    _set_sequence(host, 0)
    assert "sequence" in host.rules()
    d = next(d for d in host.check()["drift"] if d["rule"] == "sequence")
    assert (d["expected"], d["found"]) == (2, 0)
    assert host.repo.installed_sequence() == 2  # the floor is the signed sequence kept on the host
    # the older signed full bundle (sequence 1) is refused, as if the catalog had not been touched
    r = cli(host.repo.root, "model", "install-bundle", str(host.bundles.full), "--trust",
            host.bundles.fingerprint, "--keyring", str(host.bundles.keyring))
    assert r.returncode == 15, r.stdout + r.stderr
    assert os.readlink(host.layout.current(MODEL)) == "1.1.0"


def test_provenance_sequence(host: Host) -> None:
    host.sql("UPDATE versions SET sequence=9 WHERE version='1.0.0'")
    d = next(d for d in host.check()["drift"] if d["rule"] == "provenance-sequence")
    assert (d["version"], d["expected"], d["found"]) == ("1.0.0", 1, 9)


def test_kept_manifest_edited_fails_its_signature(host: Host) -> None:
    m = host.layout.bundle_record("test-delta") / "MANIFEST.json"
    _writable(m, m.read_bytes().replace(b'"sequence": 2', b'"sequence": 3').replace(b'"sequence":2',
                                                                                   b'"sequence":3'))
    rules = host.rules()
    assert "signature" in rules and "manifest-missing" in rules  # 1.1.0 lost its trusted anchor
    assert "signature" not in host.rules(trust=False)  # not checked without trust: said so


def test_kept_manifest_deleted(host: Host) -> None:
    import shutil

    shutil.rmtree(host.layout.bundle_record("test-delta"))
    drift = host.check()["drift"]
    assert {(d["rule"], d["version"]) for d in drift} >= {("manifest-missing", "1.1.0"), ("sequence", None)}


def test_kept_manifest_moved_to_another_record(host: Host) -> None:
    rec = host.layout.bundle_record("test-delta")
    os.rename(rec, rec.parent / "other")
    assert "manifest-bundle-id" in host.rules()


TAMPER_STRAY: dict[str, Callable[[Host], object]] = {
    "stray-version": lambda h: h.layout.version_dir(MODEL, "9.9.9").mkdir(mode=0o700),
    "stray-file": lambda h: (h.layout.model_dir(MODEL) / "notes.txt").write_text("x"),
    "stray-entry": lambda h: (h.layout.repo / "junk").mkdir(),
}


@pytest.mark.parametrize("rule", sorted(TAMPER_STRAY))
def test_stray_entries(host: Host, rule: str) -> None:
    TAMPER_STRAY[rule](host)
    drift = host.check()["drift"]
    assert [d["rule"] for d in drift] == [rule]
    # a single model's check reports what is under <model>/ too
    if rule != "stray-entry":
        assert [d["rule"] for d in host.repo.verify(MODEL)["drift"]] == [rule]


REPO_PATHS: dict[str, Callable[[Host], Path]] = {
    "root": lambda h: h.layout.root,
    "model_repo": lambda h: h.layout.repo,
    "metadata": lambda h: h.layout.metadata,
    "update_packages": lambda h: h.layout.packages,
    "catalog": lambda h: h.layout.catalog,
    "audit-log": lambda h: h.layout.audit_log,
    "model-dir": lambda h: h.layout.model_dir(MODEL),
    "kept-manifest": lambda h: h.layout.bundle_record("test-full") / "MANIFEST.json",
}


@pytest.mark.parametrize("which", sorted(REPO_PATHS))
def test_repository_path_mode_drift(host: Host, which: str) -> None:
    p = REPO_PATHS[which](host)
    before = p.stat().st_mode & 0o777
    os.chmod(p, 0o777)
    drift = host.check()["drift"]
    assert [(d["rule"], d["path"], d["expected"], d["found"]) for d in drift] == \
        [("repo-mode", str(p), oct(before), "0o777")]


def test_deleted_history_rows(host: Host) -> None:
    host.sql("DELETE FROM history WHERE id IN (SELECT id FROM history ORDER BY id DESC LIMIT 2)")
    drift = host.check()["drift"]
    assert [d["rule"] for d in drift] == ["history-row-missing", "history-row-missing"]


def _log(host: Host) -> list[bytes]:
    return host.layout.audit_log.read_bytes().splitlines()


def test_audit_chain_edited(host: Host) -> None:
    lines = _log(host)
    _writable(host.layout.audit_log, b"".join(ln + b"\n" for ln in lines[:1] + lines[2:]))
    assert "audit-chain" in host.rules()


def test_audit_log_truncated_is_caught_by_the_catalog_head(host: Host) -> None:
    lines = _log(host)
    _writable(host.layout.audit_log, b"".join(ln + b"\n" for ln in lines[:-1]))
    assert "audit-head" in host.rules()


def test_audit_log_truncated_and_catalog_edited_is_caught_by_the_anchor(host: Host) -> None:
    """The control node's anchor catches what the catalog no longer can."""
    anchor = AuditHead(**host.check()["audit_head"])
    lines = _log(host)[:-1]
    _writable(host.layout.audit_log, b"".join(ln + b"\n" for ln in lines))
    host.sql("UPDATE meta SET value=? WHERE key='audit_head'", f"{len(lines)}:{line_hash(lines[-1])}")
    host.sql("DELETE FROM history WHERE id=(SELECT max(id) FROM history)")
    assert host.rules() == set()  # chain and catalog agree with each other now...
    drift = host.check(anchor=anchor)["drift"]
    assert [d["rule"] for d in drift] == ["audit-anchor"]  # ...but not with the control node
    assert "removed from the end" in drift[0]["found"]
    host.layout.audit_log.unlink()  # the whole log replaced by nothing: same answer
    assert "audit-anchor" in host.rules(anchor=anchor)


def test_current_link_and_expected_version(host: Host) -> None:
    link = host.layout.current(MODEL)
    link.unlink()
    os.symlink("1.0.0", link)
    report = host.repo.compliance(expected={MODEL: "1.1.0"})
    assert {d["rule"] for d in report["drift"]} == {"current-link"}
    report = host.repo.compliance(expected={MODEL: "2.0.0"})
    assert {d["rule"] for d in report["drift"]} == {"current-link", "expected-version"}
    assert {d["rule"] for d in host.repo.compliance(models=["nope"])["drift"]} == {"model-missing"}


def test_drift_list_is_whole(host: Host) -> None:
    """Many items, none cut: 30 stray files and every one of them in the list and the CLI JSON."""
    for i in range(30):
        (host.layout.model_dir(MODEL) / f"stray-{i:02d}-{'x' * 40}.bin").write_bytes(b"x")
    drift = host.check()["drift"]
    assert len(drift) == 30 and all(d["rule"] == "stray-file" for d in drift)
    r = cli(host.repo.root, "model", "verify", "--json")
    assert r.returncode == 13
    assert json.loads(r.stdout)["drift"] == drift
    assert set(drift[0]) == {"model", "version", "path", "rule", "expected", "found"}
    r = cli(host.repo.root, "model", "verify")
    assert r.returncode == 13 and r.stdout.count("DRIFT stray-file") == 30


def test_unreadable_catalog_is_a_clear_error_and_nothing_is_written(host: Host) -> None:
    cat = host.layout.catalog
    cat.write_bytes(b"not a database" * 100)
    before = sorted(p.name for p in cat.parent.iterdir())
    r = cli(host.repo.root, "model", "verify")
    assert r.returncode == 30 and "cannot be read read-only" in r.stderr and "Traceback" not in r.stderr
    assert sorted(p.name for p in cat.parent.iterdir()) == before
    assert cat.read_bytes() == b"not a database" * 100


def _vfile(h: Host, name: str = "model.safetensors") -> Path:
    """A file of 1.1.0 only (config.json and tokenizer.json are hard links shared with 1.0.0)."""
    return h.layout.version_dir(MODEL, "1.1.0") / name


def _append(h: Host) -> None:
    f = _vfile(h)
    _writable(f, f.read_bytes() + b" ")


def _symlink(h: Host) -> None:
    f = _vfile(h)
    os.chmod(f.parent, 0o700)
    f.unlink()
    os.symlink("config.json", f)


def _chown(h: Host, uid: int, gid: int) -> None:
    os.chown(_vfile(h), uid, gid)


def _version_dir_gone(h: Host) -> None:
    vdir = h.layout.version_dir(MODEL, "1.0.0")
    os.rename(vdir, h.layout.root.parent / "moved-away")


def _unlink(h: Host) -> None:
    os.chmod(_vfile(h).parent, 0o700)
    _vfile(h).unlink()


TAMPER_VERSION: dict[str, tuple[Callable[[Host], object], dict[str, str]]] = {
    "size": (_append, {}),
    "missing": (_unlink, {}),
    "extra-file": (lambda h: (_vfile(h).parent / "extra.bin").write_bytes(b"x"), {}),
    "mode": (lambda h: os.chmod(_vfile(h), 0o644), {}),
    "dir-mode": (lambda h: os.chmod(_vfile(h).parent, 0o755), {}),
    "not-a-regular-file": (_symlink, {}),
    "owner": (lambda h: _chown(h, 65534, 0), {"owner": "root"}),
    "group": (lambda h: _chown(h, 0, 65534), {"group": "root"}),
    "missing-version-dir": (_version_dir_gone, {}),
}


@pytest.mark.parametrize("rule", sorted(TAMPER_VERSION))
def test_version_file_drift(host: Host, rule: str) -> None:
    tamper, ids = TAMPER_VERSION[rule]
    tamper(host)
    repo = Repository(host.layout.root, **ids)  # type: ignore[arg-type]
    try:
        drift = repo.compliance(trust=trust_of(host.bundles))["drift"]
    finally:
        repo.close()
    assert [d["rule"] for d in drift] == [rule], drift


def test_unreadable_kept_manifest(host: Host) -> None:
    m = host.layout.bundle_record("test-full") / "MANIFEST.json"
    _writable(m, b"{not json")
    rules = host.rules(trust=False)
    assert "manifest-unreadable" in rules and "manifest-missing" in rules


def test_active_version_that_does_not_load(host: Host) -> None:
    f = _vfile(host, "config.json")
    cfg = json.loads(f.read_text())
    cfg["num_hidden_layers"] += 1
    _writable(f, json.dumps(cfg).encode())
    report = host.repo.compliance(trust=trust_of(host.bundles), loadable=True)
    assert {d["rule"] for d in report["drift"]} == {"not-loadable", "sha256"}
