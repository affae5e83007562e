"""What a backup holds besides the live ``model_repo/`` tree, prepared under the repository's shared
lock in ``<root>/.airlock-backup/``: a consistent copy of the catalog (SQLite's online backup API,
never a file copy), the key provider *configuration* (never a key, PIN or token: the files it names
stay out), and ``BACKUP.json`` describing the snapshot (audit head, active versions, which versions
are only referenced because they live on the warm tier)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import socket
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from airlock import __version__
from airlock.crypto.errors import KeyProviderError
from airlock.errors import LockBusyError, RepositoryError
from airlock.repo import audit
from airlock.repo.layout import Layout

STAGE_NAME = ".airlock-backup"
MANIFEST = "BACKUP.json"
CATALOG_COPY = "catalog.db"
KEYS_COPY = "keys/keys.yaml"
FORMAT = "airlock-backup/1"
# secrets a provider config may only name (``pin_file``, ``token_file``) or take from the environment
INLINE_SECRETS = frozenset({"pin", "token", "password", "secret", "secret_id", "role_id", "key", "kek"})
SECRET_PATH_KEYS = ("dir",)  # the development key-file provider's directory of raw KEKs


def glob_escape(text: str) -> str:
    """A literal path as a restic (Go filepath.Match) pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def excludes(layout: Layout, hot_only_refs: list[Path]) -> list[str]:
    """Absolute restic exclude patterns: the live catalog (its consistent copy is in the stage), the
    lock, crash leftovers, staged bundle copies, and version directories on another tier."""
    repo = glob_escape(str(layout.repo))
    meta = glob_escape(str(layout.metadata))
    pats = [f"{meta}/model_catalog.db", f"{meta}/model_catalog.db-*", f"{meta}/.lock", f"{meta}/.*.tmp",
            f"{repo}/**/.staging-*", f"{repo}/**/.trash-*", f"{repo}/.staging-*", f"{repo}/.trash-*",
            f"{glob_escape(str(layout.packages))}/staged"]
    pats += [glob_escape(str(p)) for p in hot_only_refs]
    return pats


@contextlib.contextmanager
def stage_dir(layout: Layout) -> Iterator[Path]:
    """``<root>/.airlock-backup``, emptied, held by this backup alone (flock on the directory), removed
    afterwards."""
    stage = layout.root / STAGE_NAME
    stage.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(stage, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockBusyError(f"{stage}: another backup of this root is running", path=str(stage),
                                rule="backup-running") from None
        for child in stage.iterdir():  # a crashed backup's leftovers
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        os.chmod(stage, 0o700)
        try:
            yield stage
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    finally:
        os.close(fd)


def copy_catalog(src: Path, dest: Path) -> str:
    """Consistent copy through SQLite's online backup API (read-only source); returns its sha256."""
    try:
        con = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise RepositoryError(f"{src}: cannot open the catalog ({exc})", path=str(src),
                              rule="catalog-read") from exc
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    out = sqlite3.connect(dest)
    try:
        con.backup(out)
    except sqlite3.Error as exc:
        raise RepositoryError(f"{src}: the catalog cannot be read ({exc}); if a write was interrupted, "
                              "the next mutating command recovers it", path=str(src),
                              rule="catalog-read") from exc
    finally:
        out.close()
        con.close()
    return hashlib.sha256(dest.read_bytes()).hexdigest()


@dataclass
class VersionInfo:
    model: str
    version: str
    state: str
    location: str
    encrypted: bool
    where: str | None = None  # the directory holding a version on the warm/cold tier (a reference)

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "location": self.location, "encrypted": self.encrypted,
                **({"path": self.where} if self.where else {})}


def catalog_versions(db: Path) -> tuple[list[VersionInfo], str | None]:
    """Every version the catalog copy knows (with its tier when the catalog records one) and the
    audit head it recorded. A version on the warm or cold tier (airlock.repo.tier: catalog
    ``location``, tier directories in ``meta``) is referenced by its directory there."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        cols = {r[1] for r in con.execute("PRAGMA table_info(versions)")}
        loc = "location" if "location" in cols else "'hot'"
        enc = "encryption" if "encryption" in cols else "NULL"
        rows = con.execute(f"SELECT model, version, state, {loc}, {enc} FROM versions "
                           "ORDER BY model, id").fetchall()
        meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
    finally:
        con.close()

    def where(model: str, version: str, loc: str) -> str | None:
        base = meta.get(f"tier.{loc}") if loc != "hot" else None
        return str(Path(base) / model / version) if base else None

    return ([VersionInfo(m, v, s, str(lo or "hot"), e is not None, where(m, v, str(lo or "hot")))
             for m, v, s, lo, e in rows], meta.get("audit_head"))


def active_versions(versions: list[VersionInfo]) -> dict[str, str]:
    return {v.model: v.version for v in versions if v.state == "active"}


def keys_config_scan(src: Path | None) -> dict[str, Any]:
    """What of the key provider configuration a backup takes: the file itself, refused when it holds
    a secret inline; the files it names (PIN, token, key directory) are listed and left out."""
    if src is None or not src.exists():
        return {"included": False, "source": str(src) if src else None, "not_included": []}
    try:
        data = yaml.safe_load(src.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise KeyProviderError(f"cannot read the key provider config ({exc})", path=str(src)) from exc
    left_out: list[str] = []
    for name, conf in (data.get("providers") or {}).items() if isinstance(data, dict) else ():
        if not isinstance(conf, dict):
            continue
        inline = sorted(k for k in conf if str(k).lower() in INLINE_SECRETS)
        if inline:
            raise KeyProviderError(f"provider {name!r} holds a secret inline ({', '.join(inline)}): name it "
                                   "with *_file or *_env instead; not backed up", path=str(src),
                                   rule="backup-keys-inline-secret")
        left_out += [str(v) for k, v in conf.items() if str(k).endswith("_file") or k in SECRET_PATH_KEYS]
    return {"included": True, "source": str(src), "not_included": sorted(set(left_out))}


def keys_config_copy(src: Path | None, stage: Path) -> dict[str, Any]:
    """``keys_config_scan``, then the config copied into the stage (0600)."""
    info = keys_config_scan(src)
    if info["included"]:
        assert src is not None
        dest = stage / KEYS_COPY
        dest.parent.mkdir(mode=0o700)
        shutil.copyfile(src, dest)
        os.chmod(dest, 0o600)
    return info


def write_manifest(stage: Path, layout: Layout, catalog_sha256: str, versions: list[VersionInfo],
                   catalog_head: str | None, keys: dict[str, Any], referenced: list[VersionInfo]
                   ) -> dict[str, Any]:
    report = audit.scan(layout.audit_log, audit.parse_head(catalog_head))
    doc = {
        "format": FORMAT, "airlock_version": __version__, "host": socket.gethostname(),
        "root": str(layout.root), "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "catalog_sha256": catalog_sha256,
        "audit": {"head": report.head.as_dict(), "ok": report.ok, "problems": report.problems},
        "active": active_versions(versions),
        "versions": {f"{v.model} {v.version}": v.as_dict() for v in versions},
        "referenced_only": [f"{v.model} {v.version}" for v in referenced],
        "keys_config": keys,
    }
    (stage / MANIFEST).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    os.chmod(stage / MANIFEST, 0o600)
    return doc
