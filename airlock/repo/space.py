"""Space a bundle install needs, checked before a byte is staged: the staged copy (what is already
staged by an interrupted earlier run is counted as there) plus the installed versions, less what
install hard-links from versions already present. Two file systems are checked apart."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from airlock import settings
from airlock.errors import DiskSpaceError, from_os_error, human_bytes
from airlock.fsutil import free_bytes
from airlock.repo.install import disk_bytes

if TYPE_CHECKING:
    from airlock.bundle.manifest import Manifest
    from airlock.repo.repository import Repository



@dataclass
class BundleSpace:
    stage_dir: Path
    stage_bytes: int  # still to be written into the staging directory
    staged_bytes: int  # already there from an earlier, interrupted stage
    install_bytes: int  # new version files written into the repository
    linked_bytes: int  # version files hard-linked from installed versions (no space)
    stage_free: int
    install_free: int
    same_fs: bool
    kept_bytes: int = 0  # deltas kept for rollback that cannot be hard links of their staged copies

    def as_dict(self) -> dict[str, object]:
        return {"stage_dir": str(self.stage_dir), "stage_bytes": self.stage_bytes,
                "staged_bytes": self.staged_bytes, "install_bytes": self.install_bytes,
                "linked_bytes": self.linked_bytes, "stage_free": self.stage_free,
                "install_free": self.install_free, "same_filesystem": self.same_fs,
                "kept_bytes": self.kept_bytes}

    def check(self, repo_dir: Path) -> None:
        """Raise ``DiskSpaceError`` (exit 31) naming the shortfall and what uses the space; a
        read-only file system is said as such first (exit 37), not as a lack of space."""
        for where in (self.stage_dir, repo_dir):
            if _read_only(where):
                raise from_os_error(OSError(errno.EROFS, os.strerror(errno.EROFS), str(where)),
                                    what="install-bundle")
        if settings.skip_space_preflight():
            return
        stage = (f"{human_bytes(self.stage_bytes)} for the staged copy in {self.stage_dir} (verified "
                 "there, removed after install)")
        inst = (f"{human_bytes(self.install_bytes)} for the installed version files in {repo_dir}"
                + (f" ({human_bytes(self.linked_bytes)} more are hard links to installed versions, "
                   "free)" if self.linked_bytes else ""))
        if self.same_fs:
            need = self.stage_bytes + self.install_bytes
            if need > self.install_free:
                raise DiskSpaceError(
                    f"{repo_dir}: needs {human_bytes(need)} ({need} bytes): {stage} plus {inst}; "
                    f"{human_bytes(self.install_free)} free: {human_bytes(need - self.install_free)} more "
                    "needed: free space or use --stage-dir on another disk", path=str(repo_dir),
                    rule="disk-space-preflight")
            return
        if self.stage_bytes > self.stage_free:
            raise DiskSpaceError(
                f"{self.stage_dir}: needs {stage}; {human_bytes(self.stage_free)} free: "
                f"{human_bytes(self.stage_bytes - self.stage_free)} more needed: free space or use "
                "--stage-dir on another disk", path=str(self.stage_dir), rule="disk-space-preflight")
        if self.install_bytes > self.install_free:
            raise DiskSpaceError(
                f"{repo_dir}: needs {inst}; {human_bytes(self.install_free)} free: "
                f"{human_bytes(self.install_bytes - self.install_free)} more needed: free space "
                "(e.g. airlock model prune)", path=str(repo_dir), rule="disk-space-preflight")


def _read_only(path: Path) -> bool:
    while not path.exists():
        path = path.parent
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


def _block(path: Path) -> int:
    while not path.exists():
        path = path.parent
    return os.statvfs(path).f_frsize or 4096


def _dev(path: Path) -> int:
    while not path.exists():
        path = path.parent
    return os.stat(path).st_dev


def _already_staged(stage: Path, rel: str) -> int:
    from airlock.bundle.stage import PARTIAL_SUFFIX

    for p in (stage / rel, stage / (rel + PARTIAL_SUFFIX)):
        try:
            return os.lstat(p).st_size
        except OSError:
            continue
    return 0


def bundle_space(repo: Repository, manifest: Manifest, stage_dir: Path, *,
                 encrypt: str | None = None) -> BundleSpace:
    """What installing ``manifest`` through ``stage_dir`` takes at its peak (reads only; writes
    nothing): the staged copy (removed after the install) plus the new version files, plus the
    deltas kept for rollback where they cannot be hard links of their staged copies (another file
    system, or stored encrypted). ``encrypt``: the key ref the versions will be stored under."""
    sblock, rblock = _block(stage_dir), _block(repo.layout.repo)
    staged = stage_bytes = 0
    for rel, entry in manifest.files.items():
        have = min(_already_staged(stage_dir, rel), entry.size)
        staged += have
        stage_bytes += disk_bytes(entry.size, sblock) - disk_bytes(have, sblock)
    install = linked = kept = 0
    has_cat = repo.layout.catalog.exists()
    same_fs = _dev(stage_dir) == _dev(repo.layout.repo)
    for me in manifest.models:
        # an encrypted install writes every file of a delta's result anew (plaintext only in a tmpfs)
        cands = (repo.planner().link_candidates(me.name, encrypt)
                 if has_cat and not (encrypt and me.kind == "delta") else {})
        for info in me.target_files.values():
            size, sha = int(info["size"]), str(info["sha256"])
            if sha in cands:
                linked += size
            else:
                install += disk_bytes(size, rblock)
        # kept for rollback: a hard link of the staged copy when it can be one, else a copy
        if (me.kind == "delta" and (encrypt or not same_fs) and me.from_version is not None
                and not repo.layout.kept_delta(me.name, me.from_version, me.version).exists()):
            kept += disk_bytes(manifest.files[me.path].size, rblock)
    return BundleSpace(stage_dir=stage_dir, stage_bytes=stage_bytes, staged_bytes=staged,
                       install_bytes=install + kept, linked_bytes=linked, stage_free=free_bytes(stage_dir),
                       install_free=free_bytes(repo.layout.repo), same_fs=same_fs, kept_bytes=kept)
