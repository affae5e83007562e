"""Materialising a version directory: copy with hashing or hard-link, seal (modes, owner), fsync."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from airlock.errors import DiskSpaceError, IntegrityError, UnsafePathError
from airlock.faults import fault_point
from airlock.fsutil import fsync_tree, safe_relpath
from airlock.hashing import copy_hashing, digest_file, no_progress
from airlock.repo.layout import DIR_MODE, FILE_MODE
from airlock.repo.plan import FileAction

if TYPE_CHECKING:
    from airlock.repo.encryption import Encryption

Progress = Callable[[int], None]
Expected = dict[str, tuple[int, str]]


def scan_source(src_dir: Path, progress: Progress = no_progress) -> Expected:
    """Hash a plain source directory (no manifest): only regular files; symlinks and special files
    are refused, so nothing outside ``src_dir`` can be pulled in."""
    if not src_dir.is_dir():
        raise IntegrityError(f"{src_dir}: source directory does not exist", path=str(src_dir),
                             rule="source-missing")
    out: Expected = {}
    for dirpath, dirs, files in os.walk(src_dir):
        for name in [*dirs, *files]:
            p = Path(dirpath) / name
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode) or not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                raise UnsafePathError(f"{p}: symlink or special file in a model source", path=str(p),
                                      rule="path-type")
        for name in files:
            p = Path(dirpath) / name
            rel = safe_relpath(p.relative_to(src_dir).as_posix()).as_posix()
            d = digest_file(p, progress=progress)
            out[rel] = (d.size, d.sha256)
    return dict(sorted(out.items()))


def normalise_expected(target_files: dict[str, dict[str, object]]) -> Expected:
    out: Expected = {}
    for rel, info in target_files.items():
        safe_relpath(rel)
        size, sha = info.get("size"), info.get("sha256")
        if not isinstance(size, int) or not isinstance(sha, str):
            raise IntegrityError(f"{rel}: expected hashes need integer size and sha256", path=rel,
                                 rule="target-files")
        out[rel] = (size, sha)
    return dict(sorted(out.items()))


def disk_bytes(size: int, block: int) -> int:
    """Space a file of ``size`` bytes takes on a filesystem with ``block``-byte blocks."""
    return -(-size // block) * block if size else 0


@dataclass
class BuildStats:
    copied: int = 0
    linked: int = 0
    bytes_copied: int = 0


def enospc(exc: OSError, where: Path, needed: int, free: int) -> DiskSpaceError:
    return DiskSpaceError(f"{where}: no space left while writing (operation needs {needed} bytes, "
                          f"{free} were free at preflight): {exc.strerror}", path=str(where),
                          rule="disk-space-enospc")


def build_tree(tree: Path, src_dir: Path, actions: list[FileAction], link_root: Path,
               progress: Progress = no_progress, encryption: Encryption | None = None) -> BuildStats:
    """Create ``tree`` holding every planned file: hard links from ``link_root/<source>`` or copies
    from ``src_dir`` hashed while copying and checked against the plan. With ``encryption`` copies
    are encrypted while the plaintext is hashed, and link sources (stored encrypted under the same
    key reference, see ``Repository._link_candidates``) are checked by their plaintext hash."""
    from airlock.repo.encryption import stored_sha256, stored_size

    enc = encryption is not None
    keys = encryption.keys if encryption is not None else None
    stats = BuildStats()
    tree.mkdir(mode=DIR_MODE)

    def tick(n: int) -> None:
        progress(n)
        fault_point("repo.install.mid-copy")

    for act in actions:
        dest = tree / act.relpath
        dest.parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        # an encrypted file is bound to its model and relative path: linked only to the same path
        same_place = not enc or (act.source or "").split("/", 1)[-1] == act.relpath
        if act.how == "link" and act.source and same_place:
            src = link_root / act.source
            # link only a file that still has the recorded content (a tampered inode must not spread)
            if stored_size(src, enc) == act.size and stored_sha256(src, keys) == act.sha256:
                try:
                    os.link(src, dest)
                    stats.linked += 1
                    progress(act.size)
                    continue
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                        raise
            # fall through: copy from the source directory instead
        if encryption is not None:
            from airlock.crypto.format import FileIdentity
            from airlock.crypto.tree import encrypt_hashing

            plain = encrypt_hashing(src_dir / act.relpath, dest, encryption.provider, encryption.key_id,
                                    identity=FileIdentity(link_root.name, act.relpath))
            got = (plain.size, plain.sha256)
            tick(plain.size)
        else:
            with open(src_dir / act.relpath, "rb") as fi, open(dest, "wb") as fo:
                digest = copy_hashing(fi, fo, progress=tick)
                fo.flush()
                os.fsync(fo.fileno())
            got = (digest.size, digest.sha256)
        if got != (act.size, act.sha256):
            raise IntegrityError(f"{src_dir / act.relpath}: copied bytes do not match the expected hash "
                                 f"(size {got[0]}, expected {act.size}; sha256 {got[1][:16]}..., "
                                 f"expected {act.sha256[:16]}...)", path=str(src_dir / act.relpath),
                                 rule="install-hash")
        stats.copied += 1
        stats.bytes_copied += got[0]
    return stats


def seal(tree: Path, uid: int | None = None, gid: int | None = None) -> None:
    """Files 0444, directories 0700 (owner/group when given), then fsync everything."""
    for dirpath, _dirs, files in os.walk(tree, topdown=False):
        for name in files:
            p = os.path.join(dirpath, name)
            if uid is not None or gid is not None:
                os.chown(p, -1 if uid is None else uid, -1 if gid is None else gid)
            os.chmod(p, FILE_MODE)
        if uid is not None or gid is not None:
            os.chown(dirpath, -1 if uid is None else uid, -1 if gid is None else gid)
        os.chmod(dirpath, DIR_MODE)
    fsync_tree(tree)


def tree_matches(tree: Path, expected: Expected, encrypted: bool = False) -> str | None:
    """None when ``tree`` holds exactly the expected files (sizes only, plaintext sizes when
    ``encrypted``; hashes were checked while writing), else a description of the first difference."""
    from airlock.repo.encryption import stored_size

    found: dict[str, int] = {}
    for dirpath, _dirs, files in os.walk(tree):
        for name in files:
            p = Path(dirpath) / name
            found[p.relative_to(tree).as_posix()] = stored_size(p, encrypted)
    for rel, (size, _sha) in expected.items():
        if rel not in found:
            return f"{rel} missing"
        if found[rel] != size:
            return f"{rel} has {found[rel]} bytes, expected {size}"
    extra = sorted(set(found) - set(expected))
    return f"unexpected file {extra[0]}" if extra else None
