"""``airlock metrics``: the real CLI on a real signed repository writes a .prom file that promtool
accepts, with the active version, drift by rule after a flipped byte, the audit chain, the last
operations; nothing changes under the root; bad input is one line with its exit code."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from airlock.bundle.locate import signed_manifest
from airlock.bundle.signing import Trust
from airlock.crypto import ProviderRegistry
from airlock.monitoring.metrics import write_metrics
from airlock.repo import Repository
from tests.fleet.bundles import MODEL, Bundles
from tests.monitoring.helpers import flip_byte, promtool, samples
from tests.repo.conftest import cli
from tests.support import tree_state


def test_metrics_clean_then_drift(appliance: Repository, textfile_dir: Path, mon_bundles: Bundles) -> None:
    root = appliance.layout.root
    before = tree_state(root)
    r = cli(root, "metrics", "--textfile-dir", str(textfile_dir), "--verify", "--trust",
            mon_bundles.fingerprint, "--keyring", str(mon_bundles.keyring))
    assert r.returncode == 0, r.stderr
    prom = textfile_dir / "airlock.prom"
    check = subprocess.run([promtool(), "check", "metrics"], input=prom.read_text(), capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    s = samples(prom)
    bid = appliance.show(MODEL, "1.1.0")["bundle_id"]
    assert s[("airlock_model_active_info", (("bundle_id", bid), ("model", MODEL), ("version", "1.1.0")))] == 1
    assert s[("airlock_model_versions", (("model", MODEL), ("state", "active"), ("tier", "hot")))] == 1
    assert s[("airlock_model_versions", (("model", MODEL), ("state", "previous"), ("tier", "hot")))] == 1
    assert s[("airlock_verify_ok", ())] == 1
    assert s[("airlock_verify_signatures_checked", ())] == 1
    assert s[("airlock_audit_chain_ok", ())] == 1
    assert s[("airlock_operation_last_success", (("action", "update"),))] == 1
    # durations and the last bundle's staging, from the audit records the install and update wrote
    for action in ("install", "update", "activate"):
        assert 0 < s[("airlock_operation_last_duration_seconds", (("action", action),))] < 60, action
    delta_id = (("bundle_id", bid),)
    staged = s[("airlock_bundle_stage_bytes", delta_id)]
    trust = Trust([mon_bundles.fingerprint], keyring=mon_bundles.keyring)
    assert staged == signed_manifest(mon_bundles.delta, trust).manifest.total_bytes > 0  # all staged
    assert 0 < s[("airlock_bundle_stage_duration_seconds", delta_id)] < 60
    assert s[("airlock_bundle_stage_throughput_bytes_per_second", delta_id)] == \
        staged / s[("airlock_bundle_stage_duration_seconds", delta_id)]
    assert s[("airlock_repository_bytes", ())] > 0
    assert 0 < s[("airlock_tier_filesystem_avail_bytes", (("tier", "hot"),))] <= \
        s[("airlock_tier_filesystem_size_bytes", (("tier", "hot"),))]
    assert not any(n == "airlock_verify_drift_items" for n, _ in s)
    assert tree_state(root) == before

    flip_byte(appliance)
    drifted = tree_state(root)
    r = cli(root, "metrics", "--textfile-dir", str(textfile_dir), "--verify")
    assert r.returncode == 13, r.stderr
    assert "drift found" in r.stderr and "Traceback" not in r.stderr
    s = samples(prom)
    assert s[("airlock_verify_ok", ())] == 0
    assert s[("airlock_verify_signatures_checked", ())] == 0
    assert s[("airlock_verify_drift_items", (("rule", "sha256"),))] >= 1
    assert tree_state(root) == drifted  # verify and metrics changed no byte under the root
    # a refresh without --verify (after a mutating operation) keeps the last verify result
    r = cli(root, "metrics", "--textfile-dir", str(textfile_dir))
    assert r.returncode == 0, r.stderr
    assert samples(prom)[("airlock_verify_ok", ())] == 0
    assert samples(prom)[("airlock_bundle_sequence", ())] == 2
    assert tree_state(root) == drifted
    assert [p.name for p in textfile_dir.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_metrics_bad_input(appliance: Repository, tmp_path: Path) -> None:
    root = appliance.layout.root
    before = tree_state(root)
    inside = root / "model_repo"
    cases: list[tuple[tuple[str, ...], int]] = [
        (("--textfile-dir", str(inside)), 30),  # inside the root: verify is read-only there
        (("--textfile-dir", str(tmp_path / "nope")), 30),
        (("--textfile-dir", str(tmp_path), "--tier", "warm"), 2),
        (("--textfile-dir", str(tmp_path), "--tier", f"warm={tmp_path}/missing"), 30)]
    for args, code in cases:
        r = cli(root, "metrics", *args)
        assert r.returncode == code, (args, r.stderr)
        assert "Traceback" not in r.stderr and r.stderr.strip()
    r = cli(tmp_path / "empty", "metrics", "--textfile-dir", str(tmp_path))
    assert r.returncode == 30 and "no model repository" in r.stderr, r.stderr
    assert tree_state(root) == before


def test_key_age_before_first_rotation(tmp_path: Path, textfile_dir: Path) -> None:
    """A never-rotated key-encryption key has an age: its creation time from the provider (a key
    file's mtime), else the first audit record that used it; KeyRotationOverdue reads either."""
    keydir = tmp_path / "keys"
    reg = ProviderRegistry({"providers": {"dev": {"type": "keyfile", "dir": str(keydir),
                                                  "allow_development_keyfile": True}}})
    reg.get("dev").generate("kek1")
    created = 1_700_000_000.0
    os.utime(keydir / "kek1.kek", (created, created))
    src = tmp_path / "src"
    src.mkdir()
    (src / "weights.bin").write_bytes(os.urandom(4096))
    repo = Repository(tmp_path / "root", keys=reg)
    repo.install_version("m", "1.0.0", src, encrypt="dev:kek1")
    write_metrics(repo, textfile_dir)
    s = samples(textfile_dir / "airlock.prom")
    key = ("key", "dev:kek1")
    assert s[("airlock_kek_created_timestamp_seconds", (key, ("source", "provider")))] == created
    assert not any(n == "airlock_kek_last_rotation_timestamp_seconds" for n, _ in s)
    # without the provider config: the first use in the audit log (the install)
    r = cli(repo.layout.root, "metrics", "--textfile-dir", str(textfile_dir))
    assert r.returncode == 0, r.stderr
    s = samples(textfile_dir / "airlock.prom")
    first = s[("airlock_kek_created_timestamp_seconds", (key, ("source", "first-use")))]
    install = s[("airlock_operation_last_timestamp_seconds", (("action", "install"),))]
    assert first == install > created
    repo.close()
