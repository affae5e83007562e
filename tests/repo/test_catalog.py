"""Catalog schema versioning: a fresh database is migrated, a newer one is refused."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from airlock.errors import RepositoryError
from airlock.repo import Catalog
from airlock.repo.catalog import MIGRATIONS


def test_fresh_catalog_is_migrated_and_reopens(tmp_path: Path) -> None:
    path = tmp_path / "model_catalog.db"
    cat = Catalog(path)
    assert cat.schema_version() == len(MIGRATIONS)
    with cat.transaction():
        cat.add_version("m", "1.0.0", "/x", {"a": (1, "0" * 64)})
    cat.close()
    again = Catalog(path, readonly=True)
    row = again.version("m", "1.0.0")
    assert row is not None and row.files["a"].size == 1 and row.state == "staged"
    again.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model_catalog.db"
    Catalog(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE schema_version SET version=99")
    db.commit()
    db.close()
    with pytest.raises(RepositoryError, match="newer than this Airlock"):
        Catalog(path)


def test_failed_transaction_leaves_nothing(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "c.db")
    with pytest.raises(RuntimeError), cat.transaction():
        cat.add_version("m", "1.0.0", "/x", {"a": (1, "0" * 64)})
        raise RuntimeError("boom")
    assert cat.version("m", "1.0.0") is None and cat.models() == []
    cat.close()


def test_schema_2_catalog_migrates_to_rolled_back_state_keeping_every_row(tmp_path: Path) -> None:
    """2 -> 3 rebuilds the versions table (SQLite cannot alter a CHECK): versions, their files (whose
    foreign key must not cascade on the drop), history and meta survive, and 'rolled_back' is accepted."""
    path = tmp_path / "catalog.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA foreign_keys=ON")
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for script in MIGRATIONS[:2]:
        db.executescript(script)
    db.execute("INSERT INTO schema_version VALUES (2)")
    db.execute("INSERT INTO models VALUES ('m', 'now')")
    for i, (v, state) in enumerate((("1.0.0", "previous"), ("1.1.0", "active")), 1):
        db.execute("INSERT INTO versions (id, model, version, path, state, created, encryption) "
                   "VALUES (?, 'm', ?, ?, ?, 'now', ?)", (i, v, f"m/{v}", state, "hsm:k" if i == 2 else None))
        db.execute("INSERT INTO files VALUES (?, 'w.safetensors', 10, ?)", (i, f"{i:064x}"))
    db.execute("INSERT INTO meta VALUES ('sequence', '7')")
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("UPDATE versions SET state='rolled_back' WHERE id=2")
    db.close()

    ro = Catalog(path, readonly=True)  # verify reads a schema-2 catalog as it is, and migrates nothing
    assert ro.schema_version() == 2 and ro.version("m", "1.1.0").state == "active"  # type: ignore[union-attr]
    ro.close()
    cat = Catalog(path)
    assert cat.schema_version() == len(MIGRATIONS) >= 3
    rows = {r.version: r for r in cat.versions("m")}
    assert {v: r.state for v, r in rows.items()} == {"1.0.0": "previous", "1.1.0": "active"}
    assert rows["1.1.0"].encryption == "hsm:k"
    assert {v: list(cat.version("m", v).files) for v in rows} == {  # type: ignore[union-attr]
        "1.0.0": ["w.safetensors"], "1.1.0": ["w.safetensors"]}
    assert cat.get_meta("sequence") == "7"
    with cat.transaction():
        cat.set_state("m", "1.1.0", "rolled_back")
    assert cat.version("m", "1.1.0").state == "rolled_back"  # type: ignore[union-attr]
    assert cat.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    cat.close()


def _schema_3_catalog(path: Path) -> None:
    """A catalog as Airlock with schema 3 left it: two versions with files, history and meta."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for script in MIGRATIONS[:3]:
        db.executescript(script)
    db.execute("INSERT INTO schema_version VALUES (3)")
    db.execute("INSERT INTO models VALUES ('m', 'now')")
    for i, (v, state) in enumerate((("1.0.0", "rolled_back"), ("1.1.0", "active")), 1):
        db.execute("INSERT INTO versions (id, model, version, path, state, created) VALUES (?, 'm', ?, ?, ?, "
                   "'now')", (i, v, f"/r/m/{v}", state))
        db.execute("INSERT INTO files VALUES (?, 'w.safetensors', 10, ?)", (i, f"{i:064x}"))
    db.execute("INSERT INTO history (time, actor, action, result) VALUES ('now', 'a', 'install', 'ok')")
    db.execute("INSERT INTO meta VALUES ('sequence', '7')")
    db.close()


def test_schema_3_catalog_migrates_to_4_with_every_version_hot(tmp_path: Path) -> None:
    """3 -> 4 adds the storage tier of each version (docs/tiers.md): every existing version is hot;
    a read-only open (verify, tier status) reads schema 3 as it is and migrates nothing."""
    path = tmp_path / "catalog.db"
    _schema_3_catalog(path)
    before = path.read_bytes()
    ro = Catalog(path, readonly=True)
    assert ro.schema_version() == 3
    assert [(r.version, r.location) for r in ro.versions("m")] == [("1.0.0", "hot"), ("1.1.0", "hot")]
    ro.close()
    assert path.read_bytes() == before
    cat = Catalog(path)
    assert cat.schema_version() == len(MIGRATIONS) == 4
    rows = {r.version: r for r in cat.versions("m", with_files=True)}
    assert {v: (r.state, r.location, list(r.files)) for v, r in rows.items()} == {
        "1.0.0": ("rolled_back", "hot", ["w.safetensors"]), "1.1.0": ("active", "hot", ["w.safetensors"])}
    assert cat.get_meta("sequence") == "7" and len(cat.history()) == 1
    with cat.transaction():
        cat.set_location("m", "1.0.0", "warm")
    assert cat.version("m", "1.0.0").location == "warm"  # type: ignore[union-attr]
    assert cat.version("m", "1.0.0").as_dict()["location"] == "warm"  # type: ignore[union-attr]
    with pytest.raises(sqlite3.IntegrityError), cat.transaction():
        cat.db.execute("UPDATE versions SET location='elsewhere' WHERE version='1.1.0'")
    cat.close()


def test_migration_killed_before_commit_leaves_schema_3_intact(tmp_path: Path) -> None:
    """kill -9 inside the 3 -> 4 transaction: the journal rolls it back (schema 3, every row), and
    the next writer migrates."""
    path = tmp_path / "catalog.db"
    _schema_3_catalog(path)
    env = {**os.environ, "AIRLOCK_FAULT": "repo.catalog.migrate-4"}
    proc = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                           "from airlock.repo import Catalog; Catalog(Path(sys.argv[1]))", str(path)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    db = sqlite3.connect(path)  # a writer's open rolls the hot journal back
    assert db.execute("SELECT version FROM schema_version").fetchone() == (3,)
    assert "location" not in [c[1] for c in db.execute("PRAGMA table_info(versions)")]
    assert db.execute("SELECT count(*) FROM versions").fetchone() == (2,)
    db.close()
    cat = Catalog(path)
    assert cat.schema_version() == 4 and len(cat.versions("m")) == 2
    cat.close()
