"""The malicious-bundle corpus: every case is refused with the right error class and rule, and
nothing is written outside the staging / output directory (which itself holds no accepted payload)."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from airlock.bundle import pack_bundle, stage_bundle, unpack_bundle, verify_archive, verify_bundle
from airlock.bundle.manifest import MANIFEST_NAME, SIGNATURE_NAME
from airlock.bundle.signing import Trust
from airlock.errors import (
    AirlockError,
    CompatibilityError,
    DowngradeError,
    IntegrityError,
    ManifestError,
    SignatureError,
    UnsafePathError,
)
from airlock.hashing import BlockHasher
from tests.bundle.factory import BIG, CFG, ST, BundleFactory, canonical, resign
from tests.gpg import Keys
from tests.support import flip_byte, require_root
from tests.support import tree_state as snapshot


def edit(keys: Keys, bundle: Path, fn: Callable[[dict[str, Any]], None]) -> None:
    doc = json.loads((bundle / MANIFEST_NAME).read_bytes())
    fn(doc)
    resign(keys, bundle, canonical(doc))


def rename_entry(doc: dict[str, Any], old: str, new: str) -> None:
    doc["files"][new] = doc["files"].pop(old)
    doc["models"] = []


# case name -> (mutation, expected error class, expected rule)
Mut = Callable[[Keys, Path, Path], None]


def _traversal(k: Keys, b: Path, t: Path) -> None:
    (t / "evil").write_bytes((b / CFG).read_bytes())
    edit(k, b, lambda d: rename_entry(d, CFG, "../evil"))


def _absolute(k: Keys, b: Path, t: Path) -> None:
    edit(k, b, lambda d: rename_entry(d, CFG, str(t / "abs-target")))


def _symlink(k: Keys, b: Path, t: Path) -> None:
    outside = t / "outside.json"
    outside.write_bytes((b / CFG).read_bytes())  # identical bytes: only the link itself is wrong
    (b / CFG).unlink()
    (b / CFG).symlink_to(outside)


def _symlink_dir(k: Keys, b: Path, t: Path) -> None:
    shutil.move(str(b / "models"), str(t / "models-elsewhere"))
    (b / "models").symlink_to(t / "models-elsewhere")


def _fifo(k: Keys, b: Path, t: Path) -> None:
    (b / CFG).unlink()
    os.mkfifo(b / CFG)


def _device(k: Keys, b: Path, t: Path) -> None:
    require_root("mknod of a character device")
    (b / CFG).unlink()
    os.mknod(b / CFG, 0o600 | 0o020000, os.makedev(1, 3))  # like /dev/null


def _duplicate(k: Keys, b: Path, t: Path) -> None:
    data = (b / MANIFEST_NAME).read_bytes()
    doc = json.loads(data)
    entry = json.dumps(doc["files"][CFG], sort_keys=True, separators=(",", ":"))
    dup = data.replace(f'"{CFG}":'.encode(), f'"{CFG}":{entry},"{CFG}":'.encode(), 1)
    resign(k, b, dup)


def _truncate(k: Keys, b: Path, t: Path) -> None:
    p = b / f"{ST}.part001"
    p.chmod(0o644)
    os.truncate(p, p.stat().st_size - 1)


def _append(k: Keys, b: Path, t: Path) -> None:
    with open(b / CFG, "ab") as fh:
        fh.write(b" ")


def _missing(k: Keys, b: Path, t: Path) -> None:
    (b / f"{BIG}.part002").unlink()


def _swap_signature(k: Keys, b: Path, t: Path, other: Path) -> None:
    shutil.copy(other / SIGNATURE_NAME, b / SIGNATURE_NAME)  # valid signature, but of another manifest


def _replay_old(k: Keys, b: Path, t: Path, other: Path) -> None:
    for n in (MANIFEST_NAME, SIGNATURE_NAME):  # an older, validly signed bundle's manifest
        shutil.copy(other / n, b / n)


def _oversize(k: Keys, b: Path, t: Path) -> None:
    with open(b / MANIFEST_NAME, "r+b") as fh:
        fh.truncate(64 * 1024 * 1024 + 1)  # sparse: the reader must refuse before reading it


def _bad_utf8(k: Keys, b: Path, t: Path) -> None:
    resign(k, b, (b / MANIFEST_NAME).read_bytes().replace(CFG.encode(), CFG.encode()[:-5] + b"\xff.json"))


def _surrogate_name(k: Keys, b: Path, t: Path) -> None:
    data = (b / MANIFEST_NAME).read_bytes().replace(CFG.encode(), (CFG[:-5] + "\\udcff.json").encode())
    resign(k, b, data)


def _garbage_json(k: Keys, b: Path, t: Path) -> None:
    resign(k, b, b'{"format_version": 1, "files": {')


def _unknown_field(k: Keys, b: Path, t: Path) -> None:
    edit(k, b, lambda d: d.update(run_this="rm -rf /"))


def _reserved(k: Keys, b: Path, t: Path) -> None:
    edit(k, b, lambda d: rename_entry(d, CFG, MANIFEST_NAME))


def _wrong_block_count(k: Keys, b: Path, t: Path) -> None:
    edit(k, b, lambda d: d["files"][ST]["blocks"].pop())


def _lying_hash(k: Keys, b: Path, t: Path) -> None:
    def lie(d: dict[str, Any]) -> None:
        d["files"][CFG]["sha256"] = "0" * 64
        d["models"][0]["target_files"]["config.json"]["sha256"] = "0" * 64
    edit(k, b, lie)


def _model_target_mismatch(k: Keys, b: Path, t: Path) -> None:
    edit(k, b, lambda d: d["models"][0]["target_files"]["config.json"].update(size=1))


CASES: dict[str, tuple[Any, type[AirlockError], str]] = {
    "traversal": (_traversal, UnsafePathError, "path-traversal"),
    "absolute-path": (_absolute, UnsafePathError, "path-absolute"),
    "symlink-payload": (_symlink, UnsafePathError, "path-type"),
    "symlink-directory": (_symlink_dir, UnsafePathError, "path-type"),
    "fifo-payload": (_fifo, UnsafePathError, "path-type"),
    "device-payload": (_device, UnsafePathError, "path-type"),
    "duplicate-path": (_duplicate, UnsafePathError, "path-duplicate"),
    "reserved-name": (_reserved, UnsafePathError, "path-reserved"),
    "truncated-payload": (_truncate, IntegrityError, "size"),
    "appended-payload": (_append, IntegrityError, "size"),
    "missing-payload": (_missing, IntegrityError, "missing"),
    "oversize-manifest": (_oversize, ManifestError, "manifest-size"),
    "non-utf8-manifest": (_bad_utf8, ManifestError, "manifest-parse"),
    "non-utf8-name": (_surrogate_name, UnsafePathError, "path-encoding"),
    "garbage-manifest": (_garbage_json, ManifestError, "manifest-parse"),
    "unknown-manifest-field": (_unknown_field, ManifestError, "manifest-schema"),
    "block-count-mismatch": (_wrong_block_count, ManifestError, "manifest-schema"),
    "sha256-mismatch": (_lying_hash, IntegrityError, "sha256"),
    "model-target-mismatch": (_model_target_mismatch, ManifestError, "manifest-schema"),
    "signature-swap": (_swap_signature, SignatureError, "bad-signature"),
    "downgrade-replay": (_replay_old, DowngradeError, "downgrade"),
}


def _physical(bundle: Path) -> list[str]:
    doc = json.loads((bundle / MANIFEST_NAME).read_bytes())
    out = []
    for rel, e in doc["files"].items():
        out += [f"{rel}.part{i:03d}" for i in range(len(e["parts"]))] if "parts" in e else [rel]
    return sorted(out)


@pytest.fixture(scope="module")
def corpus_base(keys: Keys, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    f = BundleFactory(keys, tmp_path_factory.mktemp("corpus"))
    return f.build(sequence=5), f.build("old", sequence=3)


def _run(mode: str, bundle: Path, trust: Trust, work: Path) -> None:
    if mode == "verify":
        verify_bundle(bundle, trust, compatible="appliance-test", installed_sequence=5)
    else:
        stage_bundle(bundle, work / "staging", trust, compatible="appliance-test", installed_sequence=5)


@pytest.mark.parametrize("mode", ["verify", "stage"])
@pytest.mark.parametrize("case", list(CASES))
def test_corpus_directory(case: str, mode: str, keys: Keys, trust: Trust, corpus_base: tuple[Path, Path],
                          tmp_path: Path) -> None:
    base, old = corpus_base
    work = tmp_path / "work"
    work.mkdir()
    bundle = work / "bundle"
    shutil.copytree(base, bundle, symlinks=True)
    mutate, cls, rule = CASES[case]
    if mutate in (_swap_signature, _replay_old):
        mutate(keys, bundle, work, old)
    else:
        mutate(keys, bundle, work)
    before = snapshot(tmp_path)
    with pytest.raises(cls) as err:
        _run(mode, bundle, trust, work)
    assert err.value.rule == rule, err.value
    assert str(err.value) and "\n" not in str(err.value)
    after = snapshot(tmp_path)
    outside = {k: v for k, v in after.items() if not k.startswith("work/staging")}
    assert outside == before, "something was written outside staging"
    staged = {k for k in after if k.startswith("work/staging/") and not k.endswith(".airlock-partial")
              and k != "work/staging/.airlock-staging"}
    if err.value.exit_code in (10, 11, 14, 15) or case in ("traversal", "absolute-path", "non-utf8-name",
                                                           "duplicate-path", "reserved-name"):
        assert staged == set(), f"a refused manifest left files in staging: {staged}"


@pytest.mark.parametrize("mode", ["verify", "stage"])
def test_bit_flip_in_each_payload_file(mode: str, keys: Keys, trust: Trust, corpus_base: tuple[Path, Path],
                                       tmp_path: Path) -> None:
    base, _old = corpus_base
    names = _physical(base)
    assert len(names) == 6
    for i, name in enumerate(names):
        bundle = tmp_path / f"b{i}"
        shutil.copytree(base, bundle)
        size = (bundle / name).stat().st_size
        flip_byte(bundle / name, size // 2, 0x40)
        with pytest.raises(IntegrityError) as err:
            _run(mode, bundle, trust, tmp_path / f"w{i}")
        assert err.value.rule in ("block-hash", "sha256") and name.startswith(err.value.path or "?")
        if mode == "stage":
            logical = name.split(".part")[0]
            assert not (tmp_path / f"w{i}" / "staging" / logical).exists()


def test_signed_rollback_passes_the_downgrade_rule(factory: BundleFactory, trust: Trust) -> None:
    rb = factory.build(sequence=3, rollback=True)
    assert verify_bundle(rb, trust, installed_sequence=5).manifest.rollback
    with pytest.raises(CompatibilityError):
        verify_bundle(rb, trust, compatible="another-appliance")


def test_extra_files_are_reported_never_read(corpus_base: tuple[Path, Path], trust: Trust,
                                             tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    shutil.copytree(corpus_base[0], bundle)
    os.mkfifo(bundle / "models" / "fifo")  # opening it would block forever
    (bundle / "shadow").symlink_to("/etc/shadow")
    (bundle / "junk").mkdir()
    (bundle / "junk" / "x").write_bytes(b"x")
    report = verify_bundle(bundle, trust)
    assert report.extra_files == ["junk/", "models/fifo", "shadow"]
    staged = stage_bundle(bundle, tmp_path / "st", trust)
    names = sorted(p.name for p in staged.path.iterdir())
    assert names == [".airlock-staged", ".airlock-staging", MANIFEST_NAME, SIGNATURE_NAME, "models"]


def test_payload_over_4gib_sparse(keys: Keys, trust: Trust, tmp_path: Path) -> None:
    """Offsets past 2^32 (and a payload split at the FAT32 limit): a flipped byte in the block after
    the 4 GiB mark is found there, after the 64 blocks before it verified."""
    bundle = tmp_path / "b"
    rel = "images/huge.img"
    (bundle / "images").mkdir(parents=True)
    block, split = 64 * 1024 * 1024, 4 * 1024**3 - 1024**2
    size = 2**32 + 4096
    with open(bundle / f"{rel}.part000", "wb") as fh:
        fh.truncate(split)
    with open(bundle / f"{rel}.part001", "wb") as fh:
        fh.truncate(size - split)
        fh.seek(size - split - 10)
        fh.write(b"airlock!")
    hasher = BlockHasher(block)
    zero = bytes(block)
    zero_hash = BlockHasher(block)
    zero_hash.update(zero)
    # all blocks below 4 GiB are zeros: hash one, reuse it (the verifier still reads every byte)
    tail = (bundle / f"{rel}.part001").read_bytes()[-(size - 64 * block):]
    hasher.update(tail)
    blocks = zero_hash.finish().blocks * 64 + hasher.finish().blocks
    doc = {"format_version": 1, "bundle_id": "huge", "kind": "full", "compatible": "appliance-test",
           "sequence": 5, "created": "2026-01-01T00:00:00Z", "builder_version": "test", "rollback": False,
           "models": [], "files": {rel: {"size": size, "sha256": "f" * 64, "block_size": block,
                                         "blocks": blocks, "parts": [
                                             {"size": split, "sha256": "e" * 64},
                                             {"size": size - split, "sha256": "d" * 64}]}}}
    resign(keys, bundle, canonical(doc))
    flip_byte(bundle / f"{rel}.part001", size - split - 8, 0x40)  # inside block 64, i.e. past 2^32
    with pytest.raises(IntegrityError) as err:
        verify_bundle(bundle, trust)
    assert err.value.rule == "block-hash" and "block 64 " in str(err.value)


# ------------------------------------------------------------------------------------ packed tar


def _tar_with(base: Path, out: Path, members: list[tuple[tarfile.TarInfo, bytes | None]],
              head: bool = True) -> Path:
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        if head:
            for n in (MANIFEST_NAME, SIGNATURE_NAME):
                data = (base / n).read_bytes()
                info = tarfile.TarInfo(n)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out


def _reg(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _special(name: str, kind: bytes, target: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    if kind == tarfile.CHRTYPE:
        info.devmajor, info.devminor = 1, 3
    return info, None


def _good_members(base: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    return [_reg(n, (base / n).read_bytes()) for n in _physical(base)]


TAR_CASES: dict[str, tuple[Callable[[Path], list[tuple[tarfile.TarInfo, bytes | None]]], type[AirlockError],
                           str]] = {
    "hardlink-member": (lambda b: [_special(CFG, tarfile.LNKTYPE, "/etc/passwd"), *_good_members(b)[1:]],
                        UnsafePathError, "path-type"),
    "symlink-member": (lambda b: [_special(CFG, tarfile.SYMTYPE, "/etc/passwd")], UnsafePathError,
                       "path-type"),
    "device-member": (lambda b: [_special(CFG, tarfile.CHRTYPE)], UnsafePathError, "path-type"),
    "directory-escape": (lambda b: [_reg("../../escaped", b"x")], UnsafePathError, "path-traversal"),
    "absolute-member": (lambda b: [_reg("/tmp/airlock-escaped", b"x")], UnsafePathError, "path-absolute"),
    "duplicate-member": (lambda b: [*_good_members(b)[:1], *_good_members(b)[:1]], UnsafePathError,
                         "path-duplicate"),
    "unlisted-member": (lambda b: [_reg("models/evil.py", b"import os")], UnsafePathError, "path-unlisted"),
    "non-utf8-member": (lambda b: [_reg("models/\udcff.bin", b"x")], UnsafePathError, "path-encoding"),
    "flipped-member": (lambda b: [(_good_members(b)[0][0], b"X" + (_good_members(b)[0][1] or b"")[1:])],
                       IntegrityError, "block-hash"),
    "missing-member": (lambda b: _good_members(b)[:-1], IntegrityError, "missing"),
}


@pytest.mark.parametrize("case", list(TAR_CASES))
def test_corpus_packed(case: str, corpus_base: tuple[Path, Path], trust: Trust, tmp_path: Path) -> None:
    base = corpus_base[0]
    build, cls, rule = TAR_CASES[case]
    tar = _tar_with(base, tmp_path / "evil.tar", build(base))
    before = snapshot(tmp_path)
    with pytest.raises(cls) as err:
        unpack_bundle(tar, tmp_path / "out", trust)
    assert err.value.rule == rule, err.value
    assert snapshot(tmp_path) == before  # no output dir, no leftovers, nothing outside
    assert not Path("/tmp/airlock-escaped").exists()
    with pytest.raises(cls) as err:  # verifying the archive in place gives the same answer
        verify_archive(tar, trust)
    assert err.value.rule == rule


def test_packed_manifest_must_come_first(corpus_base: tuple[Path, Path], trust: Trust,
                                         tmp_path: Path) -> None:
    base = corpus_base[0]
    tar = _tar_with(base, tmp_path / "t.tar", [*_good_members(base)], head=False)
    with pytest.raises(ManifestError) as err:
        unpack_bundle(tar, tmp_path / "out", trust)
    assert err.value.rule == "pack-order"


def test_packed_truncated_archive(corpus_base: tuple[Path, Path], trust: Trust, tmp_path: Path) -> None:
    tar = tmp_path / "t.tar"
    pack_bundle(corpus_base[0], tar, trust)
    with open(tar, "r+b") as fh:
        fh.truncate(tar.stat().st_size // 2)
    with pytest.raises((ManifestError, IntegrityError)):
        unpack_bundle(tar, tmp_path / "out", trust)
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.tar"]


def test_packed_signature_swap(corpus_base: tuple[Path, Path], trust: Trust, tmp_path: Path) -> None:
    base, old = corpus_base
    mixed = tmp_path / "mixed"
    shutil.copytree(base, mixed)
    shutil.copy(old / SIGNATURE_NAME, mixed / SIGNATURE_NAME)
    tar = _tar_with(mixed, tmp_path / "t.tar", _good_members(base))
    with pytest.raises(SignatureError):
        unpack_bundle(tar, tmp_path / "out", trust)
    assert not (tmp_path / "out").exists()
