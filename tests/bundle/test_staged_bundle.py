"""The seam between a bundle and the repository (issue 19): a StagedBundle comes only from staging
or from reopening a completed stage (marker + signature over the staged manifest checked); it
carries the verified bytes; ``airlock.installer.install_bundle`` removes the stage once installed and
its space preflight counts what the install really needs (issue 16 item 5). Real gpg, real files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from airlock.bundle import StageCounters, StagedBundle, Trust, stage_bundle
from airlock.bundle.stage import COMPLETE_MARKER, open_staged
from airlock.errors import IntegrityError, SignatureError
from airlock.installer import install_bundle
from airlock.repo import Repository
from airlock.repo.space import bundle_space
from tests.fleet.bundles import Bundles


def _trust(b: Bundles) -> Trust:
    return Trust([b.fingerprint], keyring=b.keyring)


def test_a_staged_bundle_only_comes_from_staging(bundles: Bundles, tmp_path: Path) -> None:
    staged = stage_bundle(bundles.full, tmp_path / "stage", _trust(bundles))
    assert staged.signed.data == (bundles.full / "MANIFEST.json").read_bytes()
    assert staged.signed.signature == (bundles.full / "MANIFEST.json.asc").read_bytes()
    with pytest.raises(TypeError, match="comes from staging"):
        StagedBundle(bundles.full, staged.signed, StageCounters())  # an unstaged directory: refused
    again = open_staged(tmp_path / "stage", _trust(bundles))
    assert again.signed.data == staged.signed.data and again.counters == StageCounters()


def test_open_staged_checks_marker_signature_and_sealed_payloads(bundles: Bundles, tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    staged = stage_bundle(bundles.full, stage, _trust(bundles))
    marker = stage / COMPLETE_MARKER
    assert marker.read_bytes() == f"sha256:{hashlib.sha256(staged.signed.data).hexdigest()}\n".encode()
    with pytest.raises(SignatureError):
        open_staged(stage, Trust(["0" * 40], keyring=bundles.keyring))  # signer not pinned
    payload = stage / next(iter(staged.manifest.files))
    os.chmod(payload, 0o600)  # not the sealed copy staging left
    with pytest.raises(IntegrityError) as exc:
        open_staged(stage, _trust(bundles))
    assert exc.value.rule == "staging-changed"
    os.chmod(payload, 0o400)
    marker.unlink()  # an interrupted stage: not complete, never reopened
    with pytest.raises(IntegrityError) as exc:
        open_staged(stage, _trust(bundles))
    assert exc.value.rule == "staging-incomplete"
    # a re-stage resumes (nothing copied) and completes it again
    assert stage_bundle(bundles.full, stage, _trust(bundles)).counters.bytes_copied == 0
    assert marker.is_file() and open_staged(stage, _trust(bundles)).manifest.bundle_id == "test-full"


def test_install_removes_the_stage_and_keeps_the_delta_by_link(bundles: Bundles, tmp_path: Path) -> None:
    repo = Repository(tmp_path / "root", lock_timeout=5)
    try:
        for b in (bundles.full, bundles.delta):
            result = install_bundle(b, repo, _trust(bundles))
            assert result.changed and result.counters is not None and result.counters.bytes_copied > 0
            assert not result.stage.exists()  # installed: the staged copy is gone
        m = result.manifest
        me = m.models[0]
        kept = repo.layout.kept_delta(me.name, str(me.from_version), me.version)
        st = os.stat(kept)
        assert st.st_nlink == 1 and oct(st.st_mode & 0o777) == oct(0o444)  # the staged inode, kept
        assert hashlib.sha256(kept.read_bytes()).hexdigest() == m.files[me.path].sha256
        again = install_bundle(bundles.delta, repo, _trust(bundles))
        assert again.already_installed and not again.changed and again.counters is None
        assert not again.stage.exists()  # nothing staged for a bundle already installed
    finally:
        repo.close()


def test_space_counts_a_kept_delta_only_when_it_cannot_be_a_link(bundles: Bundles, tmp_path: Path) -> None:
    repo = Repository(tmp_path / "root", lock_timeout=5)
    try:
        install_bundle(bundles.full, repo, _trust(bundles))
        signed_delta = open_staged(stage_bundle(bundles.delta, tmp_path / "s", _trust(bundles)).path,
                                   _trust(bundles))
        m = signed_delta.manifest
        size = m.files[m.models[0].path].size
        plain = bundle_space(repo, m, tmp_path / "s")
        assert plain.same_fs and plain.kept_bytes == 0 and plain.stage_bytes == 0  # staged; kept by link
        sealed = bundle_space(repo, m, tmp_path / "s", encrypt="local:k")  # kept encrypted: a copy
        assert sealed.kept_bytes >= size and sealed.install_bytes >= plain.install_bytes + size
        assert sealed.as_dict()["kept_bytes"] == sealed.kept_bytes
    finally:
        repo.close()
