"""Unusual but legitimate models (the corpus of tests/delta/pairs_corpus.py) through real signed
bundles: a full bundle, raw and ``--compress``, stages to byte-identical files; a delta bundle of every
pair installs through the repository over the v1.0 versions installed from a compressed bundle (the
install path: stage, apply with records checked, hash check, loadability check) to the exact target;
a safetensors file whose header lies is refused when a delta bundle is built, and never installed
from a full bundle."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import yaml

from airlock.bundle import build_bundle, stage_bundle
from airlock.bundle.pack import pack_bundle, stage_archive
from airlock.bundle.signing import Trust
from airlock.errors import AirlockError, TensorFormatError
from airlock.hashing import tree_files
from airlock.repo import Repository
from tests.delta.pairs_corpus import CONFIG, HOSTILE, Pair, pairs, st, write
from tests.gpg import Keys

PAIRS = pairs()


def _name(case: Pair) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "-", case.id)


def _digests(root: Path) -> dict[str, str]:
    return {rel: hashlib.sha256((root / rel).read_bytes()).hexdigest() for rel in tree_files(root)}


def _build(tmp: Path, keys: Keys, name: str, models: list[dict[str, object]], sequence: int, *,
           compress: bool = False) -> Path:
    spec = tmp / f"{name}.yml"
    # 32 KiB blocks: tensor pieces over 16 KiB are coded as elements in a compressed bundle, some
    # blocks end inside an element
    spec.write_text(yaml.safe_dump({"compatible": "appliance-test", "sequence": sequence, "block_size": 32768,
                                    "split_size": 300_000, "models": models}))
    out = tmp / name
    build_bundle(spec, out, signer=keys.fpr["signer"], gnupghome=keys.home, compress=compress)
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("odd")
    for case in PAIRS:
        write(root / _name(case) / "1.0.0", case.old)
        write(root / _name(case) / "1.1.0", case.new)
    return root


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "compressed"])
def test_full_bundle_of_odd_models_stages_byte_identical(corpus: Path, keys: Keys, trust: Trust,
                                                         tmp_path: Path, compress: bool) -> None:
    models: list[dict[str, object]] = [
        {"name": _name(c), "version": "1.1.0", "path": str(corpus / _name(c) / "1.1.0")} for c in PAIRS]
    bundle = _build(tmp_path, keys, "full", models, 5, compress=compress)
    staged = stage_bundle(bundle, tmp_path / "stage", trust)
    if compress:  # and as one tar, the transfer form
        pack_bundle(bundle, tmp_path / "full.tar")
        staged_tar = stage_archive(tmp_path / "full.tar", tmp_path / "stage-tar", trust)
    for case in PAIRS:
        want = _digests(corpus / _name(case) / "1.1.0")
        assert _digests(staged.path / "models" / _name(case) / "1.1.0") == want, case.id
        if compress:
            assert _digests(staged_tar.path / "models" / _name(case) / "1.1.0") == want, case.id


def test_delta_bundle_of_odd_pairs_installs_exact_targets(corpus: Path, keys: Keys, trust: Trust,
                                                          tmp_path: Path) -> None:
    full = _build(tmp_path, keys, "full", [{"name": _name(c), "version": "1.0.0",
                                            "path": str(corpus / _name(c) / "1.0.0")} for c in PAIRS], 5,
                  compress=True)  # the install from a compressed stage too
    delta = _build(tmp_path, keys, "delta", [
        {"name": _name(c), "version": "1.1.0", "from_version": "1.0.0",
         "delta": {"old": str(corpus / _name(c) / "1.0.0"), "new": str(corpus / _name(c) / "1.1.0")}}
        for c in PAIRS], 6)
    repo = Repository(tmp_path / "root", lock_timeout=5)
    try:
        repo.install_from_bundle(stage_bundle(full, tmp_path / "stage-full", trust))
        staged = stage_bundle(delta, tmp_path / "stage-delta", trust,
                              installed_sequence=repo.installed_sequence())
        repo.install_from_bundle(staged)
        for case in PAIRS:
            got = _digests(repo.layout.version_dir(_name(case), "1.1.0"))
            assert got == _digests(corpus / _name(case) / "1.1.0"), case.id
    finally:
        repo.close()


def _hostile_model(root: Path, data: bytes) -> Path:
    return write(root, {"config.json": CONFIG, "model.safetensors": data})


@pytest.mark.parametrize("case", ["overlap", "out-of-range", "shape-size-mismatch"])
def test_delta_bundle_build_refuses_lying_header(tmp_path: Path, keys: Keys, case: str) -> None:
    old = write(tmp_path / "v1.0", {"config.json": CONFIG,
                                    "model.safetensors": st([("a", "F32", (4,), bytes(16))])})
    new = _hostile_model(tmp_path / "v1.1", HOSTILE[case][0])
    with pytest.raises(TensorFormatError) as info:
        _build(tmp_path, keys, "b", [{"name": "m", "version": "1.1.0", "from_version": "1.0.0",
                                      "delta": {"old": str(old), "new": str(new)}}], 6)
    assert info.value.rule == HOSTILE[case][1] and "model.safetensors" in str(info.value)
    assert not (tmp_path / "b").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".building-")]


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "compressed"])
def test_full_bundle_with_lying_header_is_refused_before_install(tmp_path: Path, keys: Keys, trust: Trust,
                                                                 compress: bool) -> None:
    """A full bundle carries the file's bytes exactly (raw, or coded as plain bytes: the header does not
    parse); the install refuses it at the loadability check and installs nothing."""
    data = HOSTILE["overlap"][0]
    src = _hostile_model(tmp_path / "m", data)
    bundle = _build(tmp_path, keys, "b", [{"name": "m", "version": "1.0.0", "path": str(src)}], 5,
                    compress=compress)
    staged = stage_bundle(bundle, tmp_path / "stage", trust)
    assert (staged.path / "models/m/1.0.0/model.safetensors").read_bytes() == data
    repo = Repository(tmp_path / "root", lock_timeout=5)
    try:
        with pytest.raises(AirlockError) as info:
            repo.install_from_bundle(staged)
        assert "model.safetensors" in str(info.value) and "\n" not in str(info.value)
        assert not repo.layout.version_dir("m", "1.0.0").exists()
    finally:
        repo.close()


def test_full_bundle_build_refuses_git_lfs_pointer(tmp_path: Path, keys: Keys) -> None:
    """A model cloned without git-lfs holds pointer files where the weights should be: refused before a
    byte is copied, saying so (it would otherwise ship and fail only at the install's load check)."""
    src = _hostile_model(tmp_path / "m", HOSTILE["git-lfs-pointer"][0])
    with pytest.raises(AirlockError) as info:
        _build(tmp_path, keys, "b", [{"name": "m", "version": "1.0.0", "path": str(src)}], 5)
    assert "model.safetensors is a Git LFS pointer" in str(info.value) and "git lfs pull" in str(info.value)
    assert not (tmp_path / "b").exists()
