"""Output files are rebuilt in forked worker processes (the entropy decoder holds the GIL): the result
equals the single-process build, and an error inside a worker reaches the caller as the same error,
with nothing left behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from airlock.delta import apply as apply_mod
from airlock.delta import apply_delta
from airlock.delta.container import RecordReader
from airlock.errors import DeltaFormatError
from tests.delta.helpers import tree_digest


def test_processes_and_single_process_agree(pair: tuple[Path, Path, Path], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    old, new, delta = pair
    parallel = apply_delta(old, delta, tmp_path / "par")
    monkeypatch.setattr(apply_mod, "FILE_WORKERS", 1)
    serial = apply_delta(old, delta, tmp_path / "ser")
    assert tree_digest(tmp_path / "par") == tree_digest(tmp_path / "ser") == tree_digest(new)
    assert parallel.bytes_written == serial.bytes_written > 0


def test_worker_error_reaches_the_caller(pair: tuple[Path, Path, Path], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    old, _, delta = pair
    parent = os.getpid()
    real = RecordReader.decode

    def failing(self: RecordReader, rec_id: int, *args: object, **kwargs: object) -> bytes:
        if os.getpid() != parent:  # only inside a forked worker (the patch is inherited by fork)
            raise DeltaFormatError(f"injected failure in worker for record {rec_id}", rule="delta-record")
        return real(self, rec_id, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(RecordReader, "decode", failing)
    out = tmp_path / "out"
    with pytest.raises(DeltaFormatError, match="injected failure in worker") as info:
        apply_delta(old, delta, out)
    assert info.value.rule == "delta-record"
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == [], "the staging directory must be removed"
