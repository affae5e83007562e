"""The site depot: a directory on the warm tier (the CephFS mount the ``ceph_client`` role makes, or
any shared directory) holding each imported bundle once, as a staged bundle, for every appliance of
the site to stage from in parallel.

Layout (one directory per bundle, named by its signed ``bundle_id``)::

    <depot>/.airlock-depot              marks the directory as a depot
    <depot>/<bundle_id>/                a complete import: MANIFEST.json, its signature (kept as
                                        signed), .airlock-staging, every payload whole (parts
                                        reassembled), files 0400, directories 0700
    <depot>/.importing/<bundle_id>/     an import in progress (a re-run resumes it by block)
    <depot>/.index/<bundle_id>.json     what was imported, from where, when, signed by whom
    <depot>/.lock                       held by an import or a removal (appliances never take it)

An import is ``stage_bundle`` (or ``stage_archive``) into ``.importing/<id>``: signature over the
staged manifest bytes, every block and file hash checked while copied. Only then is its record
written and the directory renamed to ``<id>``: a bundle under its own name is always complete, and
is never written again (appliances read it while others import). Staging from the depot is staging
from a directory: the appliance checks every byte against the same signed block hashes, so the
depot and the network to it need not be trusted."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from airlock import names
from airlock.bundle.manifest import MANIFEST_NAME, MAX_MANIFEST_BYTES, parse_manifest
from airlock.bundle.safeio import read_limited
from airlock.bundle.signing import Trust
from airlock.errors import (
    AirlockError,
    DiskSpaceError,
    IntegrityError,
    ManifestError,
    RepositoryError,
    UnsafePathError,
)
from airlock.faults import fault_point
from airlock.fsutil import atomic_write_bytes, free_bytes, fsync_dir, rmtree_writable
from airlock.repo.lock import repo_lock

Progress = Callable[[int], None]
DEPOT_MARKER = ".airlock-depot"
IMPORTING = ".importing"
INDEX = ".index"
LOCK = ".lock"
READY, IMPORTING_STATE = "ready", "importing"


@dataclass
class DepotEntry:
    """One bundle in the depot, as ``list`` and ``status`` report it."""

    bundle_id: str
    state: str  # ready | importing
    path: str
    kind: str = ""
    sequence: int = 0
    compatible: str = ""
    files: int = 0
    bytes: int = 0
    signer: str = ""
    imported_at: str = ""
    source: str = ""
    manifest_sha256: str = ""
    models: list[dict[str, Any]] = field(default_factory=list)
    verified: bool | None = None  # status --verify: True, False (error set), None when not checked
    error: dict[str, object] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ImportResult:
    entry: DepotEntry
    imported: bool  # False: the same signed bundle was already in the depot (nothing written)
    bytes_copied: int = 0
    bytes_reused: int = 0
    blocks_copied: int = 0
    blocks_reused: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        doc = {"ok": True, "changed": self.imported, **self.entry.as_dict()}
        doc.update(bytes_copied=self.bytes_copied, bytes_reused=self.bytes_reused,
                   blocks_copied=self.blocks_copied, blocks_reused=self.blocks_reused,
                   seconds=round(self.seconds, 3))
        return doc


def _utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _tree_bytes(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path, followlinks=False):
        for n in files:
            st = os.lstat(os.path.join(dirpath, n))
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


class Depot:
    """A site depot rooted at ``root`` (see the module docstring for its layout)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # -- layout --------------------------------------------------------------------------------
    def bundle_dir(self, bundle_id: str) -> Path:
        if not names.is_bundle_id(bundle_id):
            raise UnsafePathError(f"{bundle_id!r}: not a bundle id (letters, digits, . _ + -; the id "
                                  "`airlock depot list` shows)", path=str(bundle_id), rule="bundle-id")
        return self.root / bundle_id

    def _importing(self, bundle_id: str) -> Path:
        return self.root / IMPORTING / bundle_id

    def _record(self, bundle_id: str) -> Path:
        return self.root / INDEX / f"{bundle_id}.json"

    def exists(self) -> bool:
        marker = self.root / DEPOT_MARKER
        return marker.is_file() and not marker.is_symlink()

    def require(self) -> None:
        """Fail clearly unless ``root`` is a depot (never create one by reading)."""
        if not self.root.is_dir():
            raise IntegrityError(f"{self.root}: no such depot directory (is the warm tier mounted?)",
                                 path=str(self.root), rule="depot-missing")
        if not self.exists():
            raise IntegrityError(f"{self.root}: not an Airlock depot (no {DEPOT_MARKER}; `airlock depot "
                                 "import` makes one)", path=str(self.root), rule="depot-missing")

    def _create(self) -> None:
        if self.root.is_symlink() or (self.root.exists() and not self.root.is_dir()):
            raise UnsafePathError(f"{self.root}: depot path exists and is not a directory",
                                  path=str(self.root), rule="depot-path")
        if self.root.is_dir() and not self.exists() and any(self.root.iterdir()):
            raise UnsafePathError(f"{self.root}: directory is not empty and is not an Airlock depot (no "
                                  f"{DEPOT_MARKER}); choose an empty or new directory", path=str(self.root),
                                  rule="depot-path")
        for d in (self.root, self.root / IMPORTING, self.root / INDEX):
            d.mkdir(parents=True, exist_ok=True, mode=0o755)
        if not self.exists():
            atomic_write_bytes(self.root / DEPOT_MARKER, b"airlock site depot\n", 0o644)

    # -- reading -------------------------------------------------------------------------------
    def _read_record(self, bundle_id: str) -> dict[str, Any]:
        try:
            raw = self._record(bundle_id).read_bytes()
            doc = json.loads(raw) if len(raw) < MAX_MANIFEST_BYTES else {}
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def _entry(self, bundle_id: str, path: Path, state: str) -> DepotEntry:
        e = DepotEntry(bundle_id=bundle_id, state=state, path=str(path))
        rec = self._read_record(bundle_id)
        for k in ("kind", "sequence", "compatible", "files", "bytes", "signer", "imported_at", "source",
                  "manifest_sha256", "models"):
            if k in rec and isinstance(rec[k], type(getattr(e, k))):
                setattr(e, k, rec[k])
        if not rec and state == READY:  # no record (an older import, a lost file): the manifest, unverified
            try:
                data = read_limited(path, MANIFEST_NAME, MAX_MANIFEST_BYTES, ManifestError, "manifest-size")
                m = parse_manifest(data)
                e.kind, e.sequence, e.compatible = m.kind, m.sequence, m.compatible
                e.files, e.bytes = len(m.files), m.total_bytes
                e.manifest_sha256 = hashlib.sha256(data).hexdigest()
            except AirlockError:
                pass
        return e

    def entries(self) -> list[DepotEntry]:
        """Every bundle in the depot: ready ones (their own directory), then imports in progress."""
        self.require()
        out = []
        for child in sorted(self.root.iterdir()):
            if names.is_bundle_id(child.name) and child.is_dir() and not child.is_symlink():
                out.append(self._entry(child.name, child, READY))
        importing = self.root / IMPORTING
        if importing.is_dir():
            for child in sorted(importing.iterdir()):
                if (names.is_bundle_id(child.name) and child.is_dir() and not child.is_symlink()
                        and not self.bundle_dir(child.name).exists()):
                    out.append(self._entry(child.name, child, IMPORTING_STATE))
        return out

    def entry(self, bundle_id: str) -> DepotEntry:
        """A ready bundle; an unknown id lists what the depot holds."""
        self.require()
        path = self.bundle_dir(bundle_id)
        if path.is_dir() and not path.is_symlink():
            return self._entry(bundle_id, path, READY)
        raise self._missing(bundle_id)

    def _missing(self, bundle_id: str) -> IntegrityError:
        ready = [e.bundle_id for e in self.entries() if e.state == READY]
        partial = (" (its import has not finished: run `airlock depot import` again)"
                   if self._importing(bundle_id).is_dir() else "")
        have = ", ".join(ready) if ready else "none"
        return IntegrityError(f"{bundle_id}: not in the depot {self.root}{partial}; bundles there: {have}",
                              path=str(self.bundle_dir(bundle_id)), rule="depot-missing")

    def verify(self, entry: DepotEntry, trust: Trust, *, compatible: str | None = None,
               progress: Progress | None = None) -> DepotEntry:
        """Re-check a ready bundle read-only: signature, then every block and file hash."""
        from airlock.bundle.verify import verify_bundle

        try:
            report = verify_bundle(Path(entry.path), trust, compatible=compatible, progress=progress)
            if report.extra_files:
                extra = ", ".join(report.extra_files[:5])
                raise IntegrityError(f"{entry.bundle_id}: files the manifest does not name: {extra}",
                                     path=entry.path, rule="extra-file")
            entry.verified, entry.signer = True, report.signer.primary_fingerprint
        except AirlockError as exc:
            entry.verified, entry.error = False, exc.as_dict()
        return entry

    def usage(self) -> dict[str, Any]:
        """Where the depot lives and how full it is."""
        st = os.statvfs(self.root)
        return {"depot": str(self.root), "filesystem": filesystem_of(self.root),
                "free_bytes": st.f_bavail * st.f_frsize, "total_bytes": st.f_blocks * st.f_frsize}

    # -- writing -------------------------------------------------------------------------------
    def import_bundle(self, src: Path, trust: Trust, *, compatible: str | None = None,
                      progress: Progress | None = None, lock_timeout: float = 0) -> ImportResult:
        """Import a bundle (directory or packed .tar, e.g. on the stick) once: verified while staged
        into ``.importing/<id>`` (an interrupted import resumes by block), recorded, then renamed to
        ``<id>``. The same signed bundle again changes nothing; another bundle claiming an id
        already in the depot is refused."""
        from airlock.bundle.locate import bundle_kind, signed_manifest
        from airlock.bundle.pack import stage_archive
        from airlock.bundle.stage import stage_bundle
        from airlock.bundle.verify import check_policy

        started = time.monotonic()
        packed = bundle_kind(src) == "archive"
        signed = signed_manifest(src, trust)  # signature first: nothing is written for a bad bundle
        m = signed.manifest
        check_policy(m, compatible=compatible, installed_sequence=None)
        digest = hashlib.sha256(signed.data).hexdigest()
        final = self.bundle_dir(m.bundle_id)
        self._create()
        with repo_lock(self.root / LOCK, timeout=lock_timeout):
            if final.exists() or final.is_symlink():
                have = self._entry(m.bundle_id, final, READY)
                if have.manifest_sha256 != digest:
                    raise RepositoryError(f"{m.bundle_id}: the depot already holds a different bundle with "
                                          f"this id (manifest sha256 {have.manifest_sha256[:16]}..., this "
                                          f"one {digest[:16]}...); remove it first (`airlock depot remove`)",
                                          path=str(final), rule="depot-conflict")
                return ImportResult(entry=have, imported=False, seconds=time.monotonic() - started)
            work = self._importing(m.bundle_id)
            need = m.total_bytes - (_tree_bytes(work) if work.is_dir() else 0)
            free = free_bytes(self.root)
            if need > free:
                raise DiskSpaceError(f"{self.root}: the import needs {need} more bytes, {free} are free",
                                     path=str(self.root), rule="disk-space")
            how = stage_archive if packed else stage_bundle
            staged = how(src, work, trust, compatible=compatible, installed_sequence=None, progress=progress)
            fault_point("depot-after-stage")
            record = {"bundle_id": m.bundle_id, "kind": m.kind, "sequence": m.sequence,
                      "compatible": m.compatible, "files": len(m.files), "bytes": m.total_bytes,
                      "signer": staged.signer.primary_fingerprint, "imported_at": _utc(),
                      "source": str(Path(src).absolute()), "importer": socket.gethostname(),
                      "manifest_sha256": digest,
                      "models": [{"name": me.name, "version": me.version, "kind": me.kind,
                                  "from_version": me.from_version} for me in m.models]}
            atomic_write_bytes(self._record(m.bundle_id),
                               json.dumps(record, indent=2, sort_keys=True).encode() + b"\n", 0o644)
            fault_point("depot-before-rename")
            os.rename(work, final)
            fsync_dir(self.root)
            fsync_dir(self.root / IMPORTING)
            c = staged.counters
        return ImportResult(entry=self._entry(m.bundle_id, final, READY), imported=True,
                            bytes_copied=c.bytes_copied, bytes_reused=c.bytes_reused,
                            blocks_copied=c.blocks_copied, blocks_reused=c.blocks_reused,
                            seconds=time.monotonic() - started)

    def remove(self, bundle_id: str, lock_timeout: float = 0) -> DepotEntry:
        """Remove a bundle (ready or a stalled import) and its record. Appliances staging from it
        at that moment fail cleanly (a missing file) and keep what they staged."""
        self.require()
        final, work = self.bundle_dir(bundle_id), self._importing(bundle_id)
        with repo_lock(self.root / LOCK, timeout=lock_timeout):
            if final.is_dir() and not final.is_symlink():
                gone = self._entry(bundle_id, final, READY)
            elif work.is_dir() and not work.is_symlink():
                gone = self._entry(bundle_id, work, IMPORTING_STATE)
            else:
                raise self._missing(bundle_id)
            tomb = self.root / IMPORTING / f".removing-{bundle_id}-{os.getpid()}"
            os.rename(gone.path, tomb)  # the id disappears at once; the bytes go after
            fsync_dir(Path(gone.path).parent)
            self._record(bundle_id).unlink(missing_ok=True)
            rmtree_writable(tomb)
        return gone


def filesystem_of(path: Path) -> str:
    """The type of the filesystem holding ``path`` (``ceph``, ``fuse.ceph-fuse``, ``ext4``...), from
    the longest mount point above it in /proc/self/mounts; empty when unknown."""
    target = os.path.realpath(path)
    best, fstype = "", ""
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return ""
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        mnt = fields[1].replace("\\040", " ")
        if (target == mnt or target.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
            best, fstype = mnt, fields[2]
    return fstype
