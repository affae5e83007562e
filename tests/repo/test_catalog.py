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
