"""The SQLite catalog (``metadata/model_catalog.db``): models, versions, per-file hashes, history.

The schema is versioned: ``MIGRATIONS[i]`` takes schema version ``i`` to ``i + 1`` and runs in the
same transaction as the version bump, so a database is never half-migrated."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from airlock.errors import RepositoryError
from airlock.faults import fault_point
from airlock.repo.layout import CATALOG_MODE

STATES = ("staged", "active", "previous", "failed", "rolled_back", "pruned")
"""``failed``: left by an automatic rollback (its apply or health gate failed); ``rolled_back``: left by
an operator's rollback, still good and available to roll forward (``activate``)."""
PRESENT = ("staged", "active", "previous", "failed", "rolled_back")
"""States of a kept version: its files are in its tier (``location``; hot: ``<model>/<version>/``)."""

def _versions_table(name: str, states: tuple[str, ...], extra: str = "") -> str:
    """The ``versions`` table's definition, one spelling for its creation (0 -> 1) and its rebuild
    (2 -> 3, SQLite's procedure to change a CHECK): only the name, the states and later columns vary."""
    allowed = ",".join(f"'{s}'" for s in states)
    return f"""
    CREATE TABLE {name} (
        id INTEGER PRIMARY KEY,
        model TEXT NOT NULL REFERENCES models(name),
        version TEXT NOT NULL,
        path TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ({allowed})),
        created TEXT NOT NULL,
        activated TEXT,
        description TEXT NOT NULL DEFAULT '',
        dependencies TEXT NOT NULL DEFAULT '{{}}',
        bundle_id TEXT,
        manifest_sha256 TEXT,
        sequence INTEGER,
        source TEXT NOT NULL DEFAULT '',{extra}
        UNIQUE (model, version)
    )"""


_STATES_1 = ("staged", "active", "previous", "failed", "pruned")
_COLS_3 = ("id, model, version, path, state, created, activated, description, dependencies, bundle_id, "
           "manifest_sha256, sequence, source, encryption")

MIGRATIONS: list[str] = [
    # 0 -> 1
    """
    CREATE TABLE models (
        name TEXT PRIMARY KEY,
        created TEXT NOT NULL
    );""" + _versions_table("versions", _STATES_1) + """;
    CREATE TABLE files (
        version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
        relpath TEXT NOT NULL,
        size INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        PRIMARY KEY (version_id, relpath)
    );
    CREATE INDEX files_sha ON files(sha256);
    CREATE TABLE history (
        id INTEGER PRIMARY KEY,
        time TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        model TEXT,
        from_version TEXT,
        to_version TEXT,
        result TEXT NOT NULL,
        details TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
    # 1 -> 2: encryption at rest; NULL = plaintext, else the key reference ("hsm:models-kek")
    """
    ALTER TABLE versions ADD COLUMN encryption TEXT
    """,
    # 2 -> 3: state 'rolled_back' (a manual rollback is not a failure). SQLite cannot change a CHECK
    # constraint: the table is rebuilt (migrate() turns foreign keys off around it, as SQLite's
    # documented procedure asks, so dropping the old table does not cascade into files).
    _versions_table("versions_new", STATES, "\n        encryption TEXT,") + f""";
    INSERT INTO versions_new ({_COLS_3}) SELECT {_COLS_3} FROM versions;
    DROP TABLE versions;
    ALTER TABLE versions_new RENAME TO versions
    """,
    # 3 -> 4: storage tiers (docs/tiers.md): where the version's files are; 'hot' = the repository's
    # <model>/<version>/, 'warm'/'cold' = the tier directory configured in meta (tier.warm / tier.cold)
    """
    ALTER TABLE versions ADD COLUMN location TEXT NOT NULL DEFAULT 'hot'
        CHECK (location IN ('hot','warm','cold'))
    """,
]

LOCATIONS = ("hot", "warm", "cold")

READABLE = (2, 3, 4)
"""Schema versions a read-only open (verify) accepts as they are: 3 only added a state value, 4 a
location that is 'hot' for every version of an older catalog, and verify must not be the command
that migrates an appliance's catalog."""


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class FileRow:
    relpath: str
    size: int
    sha256: str


@dataclass
class VersionRow:
    id: int
    model: str
    version: str
    path: str
    state: str
    created: str
    activated: str | None
    description: str
    dependencies: dict[str, str]
    bundle_id: str | None
    manifest_sha256: str | None
    sequence: int | None
    source: str
    files: dict[str, FileRow] = field(default_factory=dict)
    encryption: str | None = None  # key reference when stored encrypted (files hold plaintext hashes)
    location: str = "hot"  # storage tier holding the files (airlock.repo.tier)

    def as_dict(self, with_files: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "model": self.model, "version": self.version, "path": self.path, "state": self.state,
            "created": self.created, "activated": self.activated, "description": self.description,
            "dependencies": self.dependencies, "bundle_id": self.bundle_id,
            "manifest_sha256": self.manifest_sha256, "sequence": self.sequence, "source": self.source,
            "encrypted": self.encryption is not None, "key_ref": self.encryption, "location": self.location,
        }
        if with_files:
            d["files"] = {r: {"size": f.size, "sha256": f.sha256} for r, f in sorted(self.files.items())}
        return d


_VCOLS = _COLS_3 + ", location"


class Catalog:
    """Thin typed access to the database. Writes go through ``transaction()``."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        if readonly:
            if not path.exists():
                raise RepositoryError(f"{path}: no catalog (repository not initialised)", path=str(path),
                                      rule="catalog-missing")
            self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():  # 0600 whatever the umask (SQLite's journal inherits it)
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT, CATALOG_MODE))
                os.chmod(path, CATALOG_MODE)
            self.db = sqlite3.connect(path, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=DELETE")  # readers write nothing (plans, check mode)
            self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.row_factory = sqlite3.Row
        self._vcols = _VCOLS
        if not readonly:
            self.migrate()
        elif self.schema_version() not in READABLE:
            raise RepositoryError(f"{path}: catalog schema {self.schema_version()} is not the current "
                                  f"{len(MIGRATIONS)}; run a mutating command to migrate", path=str(path),
                                  rule="catalog-schema")
        elif self.schema_version() < 4:  # read as it is: every version of an older catalog is hot
            self._vcols = _COLS_3 + ", 'hot' AS location"

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------------------- schema
    def schema_version(self) -> int:
        row = self.db.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name='schema_version'").fetchone()
        if row is None:
            return 0
        v = self.db.execute("SELECT version FROM schema_version").fetchone()
        return int(v[0]) if v else 0

    def migrate(self) -> None:
        current = self.schema_version()
        if current > len(MIGRATIONS):
            raise RepositoryError(f"{self.path}: catalog schema {current} is newer than this Airlock "
                                  f"({len(MIGRATIONS)})", path=str(self.path), rule="catalog-schema")
        if current == len(MIGRATIONS):
            return
        self.db.execute("PRAGMA foreign_keys=OFF")  # table rebuilds (2 -> 3); no-op inside a transaction
        try:
            self._migrate_from(current)
        finally:
            self.db.execute("PRAGMA foreign_keys=ON")

    def _migrate_from(self, current: int) -> None:
        for target in range(current, len(MIGRATIONS)):
            with self.transaction(f"repo.catalog.migrate-{target + 1}"):
                # under the write lock now: another process may have migrated since the read above
                if self.schema_version() > target:
                    continue
                self.db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                for stmt in _statements(MIGRATIONS[target]):
                    self.db.execute(stmt)
                if self.db.execute("PRAGMA foreign_key_check").fetchone() is not None:
                    raise RepositoryError(f"{self.path}: catalog migration {target} -> {target + 1} broke "
                                          "a foreign key", path=str(self.path), rule="catalog-schema")
                self.db.execute("DELETE FROM schema_version")
                self.db.execute("INSERT INTO schema_version (version) VALUES (?)", (target + 1,))

    @contextlib.contextmanager
    def transaction(self, fault: str = "repo.catalog.before-commit") -> Iterator[sqlite3.Connection]:
        """One atomic transaction; ``fault`` names its commit boundary for crash tests."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
            fault_point(fault)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------------------------- meta
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return str(row[0]) if row else default

    def del_meta(self, key: str) -> None:
        self.db.execute("DELETE FROM meta WHERE key=?", (key,))

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                        "ON CONFLICT(key) DO UPDATE SET value=excluded.value", (key, value))

    # ------------------------------------------------------------------------------- reads
    def _row(self, r: sqlite3.Row, with_files: bool) -> VersionRow:
        v = VersionRow(r["id"], r["model"], r["version"], r["path"], r["state"], r["created"], r["activated"],
                       r["description"], json.loads(r["dependencies"]), r["bundle_id"], r["manifest_sha256"],
                       r["sequence"], r["source"], encryption=r["encryption"], location=r["location"])
        if with_files:
            for f in self.db.execute("SELECT relpath, size, sha256 FROM files WHERE version_id=?", (v.id,)):
                v.files[f["relpath"]] = FileRow(f["relpath"], f["size"], f["sha256"])
        return v

    def models(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT name FROM models ORDER BY name")]

    def version(self, model: str, version: str, with_files: bool = True) -> VersionRow | None:
        r = self.db.execute(f"SELECT {self._vcols} FROM versions WHERE model=? AND version=?",
                            (model, version)).fetchone()
        return self._row(r, with_files) if r else None

    def versions(self, model: str, with_files: bool = False) -> list[VersionRow]:
        rows = self.db.execute(f"SELECT {self._vcols} FROM versions WHERE model=? ORDER BY id", (model,))
        return [self._row(r, with_files) for r in rows.fetchall()]

    def in_state(self, model: str, state: str) -> VersionRow | None:
        r = self.db.execute(f"SELECT {self._vcols} FROM versions WHERE model=? AND state=? ORDER BY id DESC",
                            (model, state)).fetchone()
        return self._row(r, False) if r else None

    def find_by_sha(self, model: str, sha256: str) -> list[tuple[str, str]]:
        """(version, relpath) of present versions of ``model`` holding a file with this hash."""
        rows = self.db.execute(
            "SELECT v.version, f.relpath FROM files f JOIN versions v ON v.id=f.version_id "
            "WHERE v.model=? AND f.sha256=? AND v.state!='pruned' ORDER BY v.id DESC", (model, sha256))
        return [(r[0], r[1]) for r in rows]

    def history(self, model: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        q = "SELECT time, actor, action, model, from_version, to_version, result, details FROM history"
        args: tuple[Any, ...] = ()
        if model:
            q += " WHERE model=?"
            args = (model,)
        q += " ORDER BY id DESC LIMIT ?"
        rows = self.db.execute(q, (*args, limit)).fetchall()
        return [{**dict(r), "details": json.loads(r["details"])} for r in reversed(rows)]

    def history_keys(self) -> list[tuple[str, str | None, str | None, str | None, str]]:
        """(action, model, from, to, result) of every history row, oldest first: what verify matches
        against the audit log's records to find deleted rows."""
        rows = self.db.execute(
            "SELECT action, model, from_version, to_version, result FROM history ORDER BY id")
        return [(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    # ------------------------------------------------------------------------------- writes (in a tx)
    def add_version(self, model: str, version: str, path: str, files: dict[str, tuple[int, str]], *,
                    state: str = "staged", description: str = "", dependencies: dict[str, str] | None = None,
                    bundle_id: str | None = None, manifest_sha256: str | None = None,
                    sequence: int | None = None, source: str = "", encryption: str | None = None) -> None:
        self.db.execute("INSERT OR IGNORE INTO models (name, created) VALUES (?, ?)", (model, now()))
        old = self.db.execute("SELECT id FROM versions WHERE model=? AND version=?",
                              (model, version)).fetchone()
        if old is not None:  # a pruned (or failed) version coming back
            self.db.execute("DELETE FROM versions WHERE id=?", (old[0],))
        cur = self.db.execute(
            "INSERT INTO versions (model, version, path, state, created, description, dependencies, "
            "bundle_id, manifest_sha256, sequence, source, encryption) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (model, version, path, state, now(), description, json.dumps(dependencies or {}, sort_keys=True),
             bundle_id, manifest_sha256, sequence, source, encryption))
        vid = cur.lastrowid
        self.db.executemany("INSERT INTO files (version_id, relpath, size, sha256) VALUES (?,?,?,?)",
                            [(vid, rel, size, sha) for rel, (size, sha) in sorted(files.items())])

    def set_state(self, model: str, version: str, state: str, *, activated: bool = False) -> None:
        if state not in STATES:
            raise ValueError(state)
        if activated:
            self.db.execute("UPDATE versions SET state=?, activated=? WHERE model=? AND version=?",
                            (state, now(), model, version))
        else:
            self.db.execute("UPDATE versions SET state=? WHERE model=? AND version=?",
                            (state, model, version))

    def set_location(self, model: str, version: str, location: str) -> None:
        """The tier now holding the version's files (``airlock.repo.tier`` moves them first)."""
        if location not in LOCATIONS:
            raise ValueError(location)
        self.db.execute("UPDATE versions SET location=? WHERE model=? AND version=?",
                        (location, model, version))

    def set_encryption(self, model: str, version: str, key_ref: str) -> None:
        """The key reference an encrypted version's files are now wrapped under (key rotation)."""
        self.db.execute("UPDATE versions SET encryption=? WHERE model=? AND version=? "
                        "AND encryption IS NOT NULL", (key_ref, model, version))

    def apply_activation(self, model: str, version: str, old: str | None, mark_old: str) -> None:
        """States after the ``current`` swap to ``version`` (inside the caller's transaction)."""
        for r in self.versions(model):
            # a rollback keeps the previous-good version; a forward activation replaces it
            if r.state == "previous" and r.version != old and mark_old not in ("failed", "rolled_back"):
                self.set_state(model, r.version, "staged")
        if old and old != version:
            self.set_state(model, old, mark_old)
        self.set_state(model, version, "active", activated=True)
        self.del_meta(f"pending-activation:{model}")

    def record_history(self, actor: str, action: str, model: str | None, from_version: str | None,
                       to_version: str | None, result: str, details: dict[str, Any]) -> None:
        self.db.execute(
            "INSERT INTO history (time, actor, action, model, from_version, to_version, result, details) "
            "VALUES (?,?,?,?,?,?,?,?)",
            (now(), actor, action, model, from_version, to_version, result,
             json.dumps(details, sort_keys=True, default=str)))


def tier_dir(cat: Catalog, tier: str) -> Path | None:
    """The configured directory of the ``warm`` or ``cold`` tier (meta ``tier.<tier>``; None: not
    configured; hot is the repository). Owned here so that verify and airlock.repo.tier read it alike."""
    raw = cat.get_meta(f"tier.{tier}")
    return Path(raw) if raw else None


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
