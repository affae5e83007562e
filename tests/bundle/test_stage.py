"""Staging: no TOCTOU (only staged bytes count), and resume by block after a real kill -9."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from airlock.bundle import stage_bundle, verify_bundle
from airlock.bundle.manifest import MANIFEST_NAME, SIGNATURE_NAME
from airlock.bundle.signing import Trust
from airlock.bundle.stage import STAGING_MARKER
from airlock.errors import DowngradeError, IntegrityError, UnsafePathError
from tests.bundle.conftest import BLOCK, BundleFactory, Keys, airlock_cmd, payload

A = "models/minilm/1.0.0/a.bin"
B = "models/minilm/1.0.0/config.json"
B_BYTES = b"{\"tok\": 1}\n"  # the appliance needs a config.json (checked at build)
A_BYTES = payload(10 * BLOCK + 5, 7)  # 11 blocks, split into 5 parts of at most 10_000 bytes


@pytest.fixture
def bundle(factory: BundleFactory) -> Path:
    return factory.build(model_files={"a.bin": A_BYTES, "config.json": B_BYTES})


def _stage_cli(bundle: Path, staging: Path, keys: Keys, fault: str | None = None
               ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ}
    env.pop("AIRLOCK_FAULT", None)
    if fault:
        env["AIRLOCK_FAULT"] = fault
    return subprocess.run([*airlock_cmd(), "bundle", "stage", str(bundle), "--to", str(staging), "--trust",
                           keys.fpr["signer"], "--keyring", str(keys.keyring("signer")), "--json"],
                          capture_output=True, text=True, env=env)


def test_resume_after_kill_copies_only_missing_blocks(bundle: Path, keys: Keys, tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    killed = _stage_cli(bundle, staging, keys, fault="stage-mid-copy")
    assert killed.returncode == -9, killed.stderr
    partial = staging / (A + ".airlock-partial")
    assert partial.stat().st_size == BLOCK and not (staging / A).exists()

    resumed = _stage_cli(bundle, staging, keys)
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    assert report["blocks_reused"] == 1 and report["bytes_reused"] == BLOCK
    assert report["blocks_copied"] == 10 + 1  # the rest of a.bin, and config.json
    assert report["bytes_copied"] == len(A_BYTES) - BLOCK + len(B_BYTES)
    assert (staging / A).read_bytes() == A_BYTES and not partial.exists()

    again = json.loads(_stage_cli(bundle, staging, keys).stdout)
    assert again["files_reused"] == 2 and again["bytes_copied"] == 0


def test_resume_after_kill_before_rename_and_damaged_partial(bundle: Path, keys: Keys,
                                                             tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    assert _stage_cli(bundle, staging, keys, fault="stage-before-rename").returncode == -9
    partial = staging / (A + ".airlock-partial")
    assert partial.read_bytes() == A_BYTES
    with open(partial, "r+b") as fh:  # damage block 3 of the partial copy
        fh.seek(3 * BLOCK + 1)
        fh.write(b"\x00\x01")
    res = _stage_cli(bundle, staging, keys)
    report = json.loads(res.stdout)
    # only the damaged block is copied again (and config.json, which the kill left unstaged)
    assert report.get("blocks_reused") == 10, res.stdout
    assert report["blocks_copied"] == 1 + 1 and report["bytes_copied"] == BLOCK + len(B_BYTES)
    assert (staging / A).read_bytes() == A_BYTES


def test_damaged_staged_file_is_recopied(bundle: Path, trust: Trust, tmp_path: Path) -> None:
    staged = stage_bundle(bundle, tmp_path / "st", trust)
    victim = staged.path / A
    victim.chmod(0o644)
    victim.write_bytes(b"x" + A_BYTES[1:])
    again = stage_bundle(bundle, tmp_path / "st", trust)
    assert again.counters.files_reused == 1 and again.counters.files_copied == 1
    assert again.counters.blocks_copied == 1 and again.counters.bytes_copied == BLOCK  # repaired by range
    assert victim.read_bytes() == A_BYTES and oct(victim.stat().st_mode & 0o777) == "0o400"


def test_stick_changed_after_verify_cannot_inject(bundle: Path, trust: Trust, tmp_path: Path) -> None:
    verify_bundle(bundle, trust)
    part = bundle / f"{A}.part002"
    original = part.read_bytes()
    part.chmod(0o644)
    part.write_bytes(original[:100] + b"EVIL" + original[104:])  # same size, new bytes
    with pytest.raises(IntegrityError) as err:
        stage_bundle(bundle, tmp_path / "st", trust)
    assert err.value.path == A and err.value.rule == "block-hash"
    assert not (tmp_path / "st" / A).exists()
    partial = tmp_path / "st" / (A + ".airlock-partial")
    assert b"EVIL" not in partial.read_bytes()  # only verified blocks are kept for a resume
    # the stick is put right again: the stage resumes and holds exactly the signed bytes
    part.write_bytes(original)
    staged = stage_bundle(bundle, tmp_path / "st", trust)
    assert (staged.path / A).read_bytes() == A_BYTES
    assert staged.counters.blocks_reused == 4  # 2 parts of 10_000 bytes = blocks 0..3 were good


def test_manifest_swapped_after_verify_is_judged_on_staged_bytes(
        bundle: Path, trust: Trust, factory: BundleFactory, tmp_path: Path) -> None:
    verify_bundle(bundle, trust, installed_sequence=5)
    old = factory.build(sequence=2)
    for n in (MANIFEST_NAME, SIGNATURE_NAME):
        shutil.copy(old / n, bundle / n)
    with pytest.raises(DowngradeError):
        stage_bundle(bundle, tmp_path / "st", trust, installed_sequence=5)
    assert sorted(p.name for p in (tmp_path / "st").iterdir()) == [STAGING_MARKER]


def test_staging_refuses_a_foreign_directory(bundle: Path, trust: Trust, tmp_path: Path) -> None:
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    with pytest.raises(UnsafePathError):
        stage_bundle(bundle, foreign, trust)
    assert (foreign / "precious.txt").read_text() == "keep me"


def test_hard_link_trap_in_partial_is_refused(bundle: Path, trust: Trust, tmp_path: Path) -> None:
    """Issue 14, class 8: `<file>.airlock-partial` planted as a hard link to a file elsewhere is
    never written through (exit 12), and the other file keeps its bytes."""
    staging = tmp_path / "st"
    stage_bundle(bundle, staging, trust)  # a real staging directory (e.g. of an interrupted run)
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    (staging / B).chmod(0o600)
    (staging / B).unlink()
    partial = staging / (B + ".airlock-partial")
    os.link(victim, partial)
    os.chmod(partial, 0o600)
    with pytest.raises(UnsafePathError) as err:
        stage_bundle(bundle, staging, trust)
    assert err.value.rule == "staging-link" and err.value.exit_code == 12
    assert victim.read_bytes() == b"precious"


def test_symlinked_partial_is_replaced_not_followed(bundle: Path, trust: Trust, tmp_path: Path) -> None:
    staging = tmp_path / "st"
    stage_bundle(bundle, staging, trust)
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    (staging / B).chmod(0o600)
    (staging / B).unlink()
    (staging / (B + ".airlock-partial")).symlink_to(victim)
    stage_bundle(bundle, staging, trust)
    assert victim.read_bytes() == b"precious"
    assert (staging / B).read_bytes() == B_BYTES and not (staging / B).is_symlink()


def test_staging_directory_is_0700_and_marked(bundle: Path, trust: Trust, tmp_path: Path) -> None:
    staging = tmp_path / "new" / "st"
    stage_bundle(bundle, staging, trust)
    assert stat.S_IMODE(staging.stat().st_mode) == 0o700 and (staging / STAGING_MARKER).is_file()
    staging.chmod(0o755)  # loosened by someone else: refused, not silently reused
    with pytest.raises(UnsafePathError) as err:
        stage_bundle(bundle, staging, trust)
    assert err.value.rule == "staging"


def test_foreign_directory_with_a_manifest_is_left_alone(bundle: Path, trust: Trust, tmp_path: Path) -> None:
    """Issue 14, class 9: a directory not made by Airlock that merely holds a MANIFEST.json (and the
    user's files) is refused and nothing in it is deleted."""
    foreign = tmp_path / "docs"
    foreign.mkdir()
    shutil.copy(bundle / MANIFEST_NAME, foreign / MANIFEST_NAME)
    (foreign / "thesis.tex").write_text("years of work")
    (foreign / "sub").mkdir()
    (foreign / "sub" / "data.csv").write_text("1,2")
    before = sorted(p.relative_to(foreign).as_posix() for p in foreign.rglob("*"))
    with pytest.raises(UnsafePathError) as err:
        stage_bundle(bundle, foreign, trust)
    assert err.value.rule == "staging" and "not an Airlock staging directory" in str(err.value)
    assert sorted(p.relative_to(foreign).as_posix() for p in foreign.rglob("*")) == before
    assert (foreign / "thesis.tex").read_text() == "years of work"
    empty = tmp_path / "empty"
    empty.mkdir()
    stage_bundle(bundle, empty, trust)  # an empty directory is adopted
