"""Catalog schema versioning: a fresh database is migrated, a newer one is refused."""

from __future__ import annotations

import sqlite3
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
    assert cat.schema_version() == len(MIGRATIONS) == 3
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
