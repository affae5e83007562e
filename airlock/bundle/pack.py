"""One-file transfer: a plain POSIX (PAX) tar with MANIFEST.json and its signature first, then the
payload files in manifest order. Unpack never uses generic extraction: members are read in order,
the signature is verified before anything else is written, and only regular files named by the
manifest are streamed out (hashed while written) into a staging directory renamed in at the end."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from airlock.bundle.manifest import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    MAX_SIGNATURE_BYTES,
    SIGNATURE_NAME,
    Manifest,
)
from airlock.bundle.safeio import open_beneath, remove_stale
from airlock.bundle.signing import SignerInfo, Trust
from airlock.bundle.verify import BlockChecker, check_policy, check_signed, load_signed_manifest
from airlock.errors import IntegrityError, ManifestError, SignatureError, UnsafePathError
from airlock.faults import fault_point
from airlock.fsutil import fsync_tree, safe_relpath, staging_dir
from airlock.hashing import CHUNK

Progress = Callable[[int], None]


def _noop(_: int) -> None:
    return None


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
    tick = progress or _noop
    if trust is not None:
        signed = load_signed_manifest(root, trust)
        manifest, data, sig = signed.manifest, signed.data, signed.signature
    else:
        from airlock.bundle.manifest import parse_manifest
        from airlock.bundle.safeio import read_limited

        data = read_limited(root, MANIFEST_NAME, MAX_MANIFEST_BYTES, ManifestError, "manifest-size")
        sig = read_limited(root, SIGNATURE_NAME, MAX_SIGNATURE_BYTES, SignatureError, "signature-size")
        manifest = parse_manifest(data)
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
    try:
        return _unpack(Path(tar_path), Path(out_dir), trust, compatible, installed_sequence, progress)
    except (tarfile.TarError, EOFError) as exc:
        raise ManifestError(f"{tar_path}: not a readable bundle archive ({exc})", path=str(tar_path),
                            rule="pack-format") from exc


def _unpack(tar_path: Path, out_dir: Path, trust: Trust, compatible: str | None,
            installed_sequence: int | None, progress: Progress | None) -> UnpackReport:
    tick = progress or _noop
    if os.path.lexists(out_dir):
        raise UnsafePathError(f"{out_dir}: output directory already exists", path=str(out_dir), rule="output")
    remove_stale(out_dir, ".unpacking-")
    with open(tar_path, "rb") as fh, tarfile.open(fileobj=fh, mode="r|") as tar, \
            staging_dir(out_dir, prefix=".unpacking-") as tmp:
        data = _read_small(tar, tar.next(), MANIFEST_NAME, MAX_MANIFEST_BYTES)
        sig = _read_small(tar, tar.next(), SIGNATURE_NAME, MAX_SIGNATURE_BYTES)
        signed = check_signed(data, sig, trust)
        manifest = signed.manifest
        check_policy(manifest, compatible=compatible, installed_sequence=installed_sequence)
        (tmp / MANIFEST_NAME).write_bytes(data)
        (tmp / SIGNATURE_NAME).write_bytes(sig)
        expected = manifest.physical_files()
        seen: set[str] = set()
        checkers: dict[str, BlockChecker] = {}
        total = 0
        while (member := tar.next()) is not None:
            name = member.name
            safe_relpath(name)
            if name in seen or name in (MANIFEST_NAME, SIGNATURE_NAME):
                raise UnsafePathError(f"{name}: duplicate tar member", path=name, rule="path-duplicate")
            if name not in expected:
                raise UnsafePathError(f"{name}: tar member not named by the manifest", path=name,
                                      rule="path-unlisted")
            if not member.isreg():
                raise UnsafePathError(f"{name}: tar member is {_member_kind(member)}", path=name,
                                      rule="path-type")
            rel, index = expected[name]
            entry = manifest.files[rel]
            want = entry.parts[index].size if index is not None else entry.size
            if member.size != want:
                raise IntegrityError(f"{name}: {member.size} bytes, manifest says {want}", path=name,
                                     rule="size")
            if index is not None and index != len([n for n in seen if expected[n][0] == rel]):
                raise UnsafePathError(f"{name}: parts out of order", path=name, rule="pack-order")
            seen.add(name)
            checker = checkers.setdefault(rel, BlockChecker(rel, entry))
            part_hash = hashlib.sha256()
            dest = tmp / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(member)
            assert src is not None
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            with os.fdopen(fd, "wb") as out:
                while data_chunk := src.read(CHUNK):
                    out.write(data_chunk)
                    checker.update(data_chunk)
                    part_hash.update(data_chunk)
                    tick(len(data_chunk))
                    fault_point("unpack-mid-member")
            if index is not None and part_hash.hexdigest() != entry.parts[index].sha256:
                raise IntegrityError(f"{name}: part sha256 does not match the manifest", path=name,
                                     rule="sha256")
            if index is None or index == len(entry.parts) - 1:
                checker.finish()
            total += member.size
        missing = sorted(set(expected) - seen)
        if missing:
            raise IntegrityError(f"{missing[0]}: named by the manifest but not in the archive",
                                 path=missing[0], rule="missing")
        os.chmod(tmp, 0o755)
        fsync_tree(tmp)
        fault_point("unpack-before-rename")
        os.rename(tmp, out_dir)
    return UnpackReport(path=out_dir, manifest=manifest, signer=signed.signer, members=len(seen) + 2,
                        bytes=total)
