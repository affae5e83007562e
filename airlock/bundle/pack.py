"""One-file transfer: a plain POSIX (PAX) tar with MANIFEST.json and its signature first, then the
payload files in manifest order. Unpack never uses generic extraction: members are read in order,
the signature is verified before anything else is written, and only regular files named by the
manifest are streamed out (hashed while written) into a staging directory renamed in at the end."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from airlock.bundle.manifest import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    MAX_SIGNATURE_BYTES,
    SIGNATURE_NAME,
    Manifest,
)
from airlock.bundle.safeio import open_beneath, remove_stale
from airlock.bundle.signing import SignerInfo, Trust
from airlock.bundle.verify import (
    BlockChecker,
    ManifestSource,
    SignedManifest,
    VerifyReport,
    check_policy,
    load_signed,
)
from airlock.codec import stored as codec  # by module: codec.stored imports airlock.bundle
from airlock.errors import IntegrityError, ManifestError, SignatureError, UnsafePathError
from airlock.faults import fault_point
from airlock.fsutil import fsync_tree, rmtree_writable, safe_relpath, staging_dir
from airlock.hashing import CHUNK, no_progress

if TYPE_CHECKING:
    from airlock.bundle.stage import StagedBundle

Progress = Callable[[int], None]


@dataclass
class UnpackReport:
    path: Path
    manifest: Manifest
    signer: SignerInfo
    members: int
    bytes: int

    def as_dict(self) -> dict[str, object]:
        return {"ok": True, "path": str(self.path), "bundle_id": self.manifest.bundle_id,
                "signer": self.signer.primary_fingerprint, "members": self.members, "bytes": self.bytes}


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    info.uname = info.gname = ""
    return info


def pack_bundle(bundle_dir: Path, out_file: Path, trust: Trust | None = None,
                progress: Progress | None = None) -> Manifest:
    """Pack a bundle dir into ``out_file``. With ``trust`` the manifest signature is checked first;
    payloads are always read through the manifest (no symlinks, exact sizes), extras are left out."""
    root = Path(bundle_dir)
    tick = progress or no_progress
    source = ManifestSource.from_dir(root)
    if trust is not None:
        manifest = load_signed(source, trust).manifest  # no signature: refused here
    elif source.signature is None:  # packed unchecked, but never without its signature
        raise IntegrityError(f"{SIGNATURE_NAME}: missing file", path=SIGNATURE_NAME, rule="missing")
    else:
        from airlock.bundle.manifest import parse_manifest

        manifest = parse_manifest(source.data)
    data, sig = source.data, source.signature or b""
    out_file = Path(out_file)
    tmp = out_file.with_name(f".{out_file.name}.tmp")
    try:
        with open(tmp, "wb") as fh, tarfile.open(fileobj=fh, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for name, blob in ((MANIFEST_NAME, data), (SIGNATURE_NAME, sig)):
                tar.addfile(_tarinfo(name, len(blob)), io.BytesIO(blob))
            for name in manifest.physical_files():
                fd = open_beneath(root, name)
                with os.fdopen(fd, "rb") as src:
                    size = os.fstat(src.fileno()).st_size
                    tar.addfile(_tarinfo(name, size), _Counting(src, tick))
            tar.close()
            fh.flush()
            os.fsync(fh.fileno())
        fault_point("pack-before-rename")
        os.replace(tmp, out_file)
    finally:
        if tmp.exists():
            tmp.unlink()
    return manifest


class _Counting:
    def __init__(self, fh: IO[bytes], tick: Progress) -> None:
        self._fh = fh
        self._tick = tick

    def read(self, n: int = -1) -> bytes:
        data = self._fh.read(n)
        self._tick(len(data))
        return data


def _read_small(tar: tarfile.TarFile, member: tarfile.TarInfo | None, name: str, limit: int) -> bytes:
    if member is None or member.name != name:
        got = "end of archive" if member is None else repr(member.name)
        where = "second" if name == SIGNATURE_NAME else "first"
        raise (SignatureError if name == SIGNATURE_NAME else ManifestError)(
            f"{name}: expected as the {where} tar member, found {got}",
            path=name, rule="no-signature" if name == SIGNATURE_NAME else "pack-order")
    if not member.isreg():
        raise UnsafePathError(f"{name}: tar member is not a regular file", path=name, rule="path-type")
    if member.size > limit:
        raise (SignatureError if name == SIGNATURE_NAME else ManifestError)(
            f"{name}: {member.size} bytes exceeds the {limit} byte limit", path=name,
            rule="signature-size" if name == SIGNATURE_NAME else "manifest-size")
    fh = tar.extractfile(member)
    assert fh is not None
    return fh.read(limit + 1)


def tar_source(tar: tarfile.TarFile) -> ManifestSource:
    """The manifest source of a packed bundle: its first two members, in that order."""
    return ManifestSource(_read_small(tar, tar.next(), MANIFEST_NAME, MAX_MANIFEST_BYTES),
                          _read_small(tar, tar.next(), SIGNATURE_NAME, MAX_SIGNATURE_BYTES))


def _member_kind(m: tarfile.TarInfo) -> str:
    if m.issym():
        return "a symlink"
    if m.islnk():
        return "a hardlink"
    if m.ischr() or m.isblk():
        return "a device"
    if m.isfifo():
        return "a fifo"
    if m.isdir():
        return "a directory"
    return "not a regular file"


def unpack_bundle(tar_path: Path, out_dir: Path, trust: Trust, *, compatible: str | None = None,
                  installed_sequence: int | None = None, progress: Progress | None = None) -> UnpackReport:
    """Unpack into ``out_dir`` (must not exist); on any error nothing is left behind."""
    out_dir = Path(out_dir)
    if os.path.lexists(out_dir):
        raise ManifestError(f"{out_dir}: output directory already exists", path=str(out_dir), rule="output")
    remove_stale(out_dir, ".unpacking-")
    with staging_dir(out_dir, prefix=".unpacking-") as tmp:
        signed, members, total = _read_archive(Path(tar_path), trust, compatible, installed_sequence,
                                               progress, tmp)
        os.chmod(tmp, 0o755)
        fsync_tree(tmp)
        fault_point("unpack-before-rename")
        os.rename(tmp, out_dir)
    return UnpackReport(path=out_dir, manifest=signed.manifest, signer=signed.signer, members=members,
                        bytes=total)


def verify_archive(tar_path: Path, trust: Trust, *, compatible: str | None = None,
                   installed_sequence: int | None = None, progress: Progress | None = None) -> VerifyReport:
    """Verify a packed bundle in one streaming pass, writing nothing (same rules as unpack)."""
    signed, _members, total = _read_archive(Path(tar_path), trust, compatible, installed_sequence, progress,
                                            None)
    return VerifyReport(manifest=signed.manifest, signer=signed.signer,
                        files_checked=len(signed.manifest.files), bytes_checked=total)


def _read_archive(tar_path: Path, trust: Trust, compatible: str | None, installed_sequence: int | None,
                  progress: Progress | None, dest_root: Path | None,
                  assemble: bool = False) -> tuple[SignedManifest, int, int]:
    try:
        with open(tar_path, "rb") as fh, tarfile.open(fileobj=fh, mode="r|") as tar:
            return _stream_members(tar, trust, compatible, installed_sequence, progress or no_progress,
                                   dest_root, assemble)
    except (tarfile.TarError, EOFError) as exc:
        raise ManifestError(f"{tar_path}: not a readable bundle archive ({exc})", path=str(tar_path),
                            rule="pack-format") from exc


def _check_member(member: tarfile.TarInfo, expected: dict[str, tuple[str, int | None]],
                  seen: set[str]) -> None:
    name = member.name
    safe_relpath(name)
    if name in seen or name in (MANIFEST_NAME, SIGNATURE_NAME):
        raise UnsafePathError(f"{name}: duplicate tar member", path=name, rule="path-duplicate")
    if name not in expected:
        raise UnsafePathError(f"{name}: tar member not named by the manifest", path=name,
                              rule="path-unlisted")
    if not member.isreg() or member.issparse():
        raise UnsafePathError(f"{name}: tar member is {_member_kind(member)}", path=name, rule="path-type")


def _stream_members(tar: tarfile.TarFile, trust: Trust, compatible: str | None,
                    installed_sequence: int | None, tick: Progress,
                    dest_root: Path | None, assemble: bool = False) -> tuple[SignedManifest, int, int]:
    """Members in order: manifest, signature (verified before anything else), then only regular files
    named by the manifest, each hashed while streamed (to ``dest_root`` when given: as the packed
    members, or with ``assemble`` as whole payloads, parts appended in order, as staging lays them out)."""
    source = tar_source(tar)
    data, sig = source.data, source.signature or b""
    signed = load_signed(source, trust)
    manifest = signed.manifest
    check_policy(manifest, compatible=compatible, installed_sequence=installed_sequence)
    if dest_root is not None:
        (dest_root / MANIFEST_NAME).write_bytes(data)
        (dest_root / SIGNATURE_NAME).write_bytes(sig)
    expected = manifest.physical_files()
    seen: set[str] = set()
    next_part: dict[str, int] = {}
    checkers: dict[str, BlockChecker | codec.FrameStream] = {}
    total = 0
    while (member := tar.next()) is not None:
        _check_member(member, expected, seen)
        name = member.name
        rel, index = expected[name]
        entry = manifest.files[rel]
        want = entry.parts[index].size if index is not None else entry.stored_size
        if member.size != want:
            raise IntegrityError(f"{name}: {member.size} bytes, manifest says {want}", path=name, rule="size")
        if index is not None and index != next_part.get(rel, 0):
            raise UnsafePathError(f"{name}: parts out of order", path=name, rule="pack-order")
        next_part[rel] = (index or 0) + 1
        seen.add(name)
        decode = assemble and entry.coding is not None  # a compressed payload is staged decoded
        checker = checkers.setdefault(rel, BlockChecker(rel, entry) if entry.coding is None
                                      else codec.FrameStream(rel, entry, decode=decode))
        part_hash = hashlib.sha256()
        src = tar.extractfile(member)
        assert src is not None
        out: IO[bytes] | None = None
        if dest_root is not None:
            dest = dest_root / (rel if assemble else name)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if assemble and index:  # a later part: appended to the payload its first part created
                flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
            else:
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            out = os.fdopen(os.open(dest, flags, 0o600 if assemble else 0o644), "wb")
        if isinstance(checker, codec.FrameStream):
            checker.sink = out
        try:
            while chunk := src.read(CHUNK):
                if out is not None and not decode:
                    out.write(chunk)
                checker.update(chunk)
                part_hash.update(chunk)
                tick(len(chunk))
                fault_point("unpack-mid-member")
            if isinstance(checker, codec.FrameStream):
                checker.drain()  # blocks still decoding go into this member's file
        except BaseException:
            if isinstance(checker, codec.FrameStream):
                checker.close()
            raise
        finally:
            if out is not None:
                out.close()
        if index is not None and part_hash.hexdigest() != entry.parts[index].sha256:
            raise IntegrityError(f"{name}: part sha256 does not match the manifest", path=name, rule="sha256")
        if index is None or index == len(entry.parts) - 1:
            checker.finish()
        total += member.size
    missing = sorted(set(expected) - seen)
    if missing:
        raise IntegrityError(f"{missing[0]}: named by the manifest but not in the archive", path=missing[0],
                             rule="missing")
    return signed, len(seen) + 2, total


def read_archive_manifest(tar_path: Path, trust: Trust) -> SignedManifest:
    """The signed manifest of a packed bundle: its first two members, the signature checked before the
    manifest is parsed; no payload is read (``inspect``, ``preflight``, ``install-bundle`` sizing)."""
    try:
        with open(tar_path, "rb") as fh, tarfile.open(fileobj=fh, mode="r|") as tar:
            src = tar_source(tar)
    except (tarfile.TarError, EOFError) as exc:
        raise ManifestError(f"{tar_path}: not a readable bundle archive ({exc})", path=str(tar_path),
                            rule="pack-format") from exc
    return load_signed(src, trust)


def stage_archive(tar_path: Path, staging: Path, trust: Trust, *, compatible: str | None = None,
                  installed_sequence: int | None = None, progress: Progress | None = None) -> StagedBundle:
    """Stage a packed bundle as ``stage_bundle`` stages a directory: streamed once, the signature
    verified before any payload byte is written, parts reassembled, every block and file hash checked.
    A tar is read from its start anyway, so a re-run starts the stage over (no block reuse)."""
    from airlock.bundle.stage import STAGING_MARKER, StageCounters, _prepare, complete_stage

    started = time.monotonic()
    stage = Path(staging)
    _prepare(stage)  # new, empty, or an earlier Airlock stage (marked): anything else is refused
    for entry in os.listdir(stage):
        if entry != STAGING_MARKER:
            rmtree_writable(stage / entry)
    signed, _members, total = _read_archive(Path(tar_path), trust, compatible, installed_sequence,
                                            progress, stage, assemble=True)
    for rel in signed.manifest.files:
        os.chmod(stage / rel, 0o400)
    fsync_tree(stage)
    m = signed.manifest
    blocks = sum(len(e.blocks) for e in m.files.values())
    counters = StageCounters(files_copied=len(m.files), blocks_copied=blocks, bytes_copied=total,
                             seconds=time.monotonic() - started)
    return complete_stage(stage, signed, counters)
