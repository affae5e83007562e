"""Unusual but legitimate model pairs (tests/delta/pairs_corpus.py): every one makes a delta whose
forward and reverse application rebuild the other version byte for byte, and a safetensors file
whose header lies is refused at make time with a one-line error (no traceback, nothing written)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from airlock.delta import apply_chain, apply_delta, find_chain_steps, make_delta
from airlock.errors import TensorFormatError
from airlock.safetensors_io import read_header
from tests.bundle.factory import airlock_cmd
from tests.delta.helpers import tree_digest
from tests.delta.pairs_corpus import CONFIG, HOSTILE, Pair, pairs, write

PAIRS = pairs()
CHUNK = 16 * 1024  # odd-sized tensors end in partial chunks; chunks over 8 KiB are pcodec-coded


@pytest.mark.parametrize("case", PAIRS, ids=[p.id for p in PAIRS])
def test_pair_round_trips_both_directions(tmp_path: Path, case: Pair) -> None:
    old, new = write(tmp_path / "v1.0", case.old), write(tmp_path / "v1.1", case.new)
    delta = tmp_path / "d.aldelta"
    make_delta(old, new, delta, from_version="1.0", to_version="1.1", chunk_bytes=CHUNK, level=3)
    apply_delta(old, delta, tmp_path / "fwd")  # unchanged files hard-linked, as install does
    assert tree_digest(tmp_path / "fwd") == tree_digest(new)
    apply_delta(new, delta, tmp_path / "back", reverse=True, link_unchanged=False)
    assert tree_digest(tmp_path / "back") == tree_digest(old)
    # the rollback route of the repository: a reverse chain step found by versions
    steps = find_chain_steps(tmp_path, "1.1", "1.0")
    apply_chain(new, steps, tmp_path / "chain")
    assert tree_digest(tmp_path / "chain") == tree_digest(old)


FLOATY = [p for p in PAIRS if p.id.startswith(("finetune-", "nan-", "dtype-F", "odd-"))]


@pytest.mark.parametrize("case", FLOATY, ids=[p.id for p in FLOATY])
def test_float_pair_forward_only(tmp_path: Path, case: Pair) -> None:
    """Without the reverse section the codec groups fine-tune-like chunks by exponent (codec 10)."""
    old, new = write(tmp_path / "v1.0", case.old), write(tmp_path / "v1.1", case.new)
    delta = tmp_path / "d.aldelta"
    make_delta(old, new, delta, reverse=False, chunk_bytes=CHUNK, level=3)
    apply_delta(old, delta, tmp_path / "fwd", link_unchanged=False)
    assert tree_digest(tmp_path / "fwd") == tree_digest(new)


def test_cli_make_and_apply_odd_pair(tmp_path: Path) -> None:
    """The CLI route: files added, removed, emptied and changed (one case, a subprocess each)."""
    case = next(p for p in PAIRS if p.id == "files-added-removed")
    old, new = write(tmp_path / "v1.0", case.old), write(tmp_path / "v1.1", case.new)
    delta = tmp_path / "d.aldelta"
    run = [*airlock_cmd(), "delta"]
    subprocess.run([*run, "make", str(old), str(new), "-o", str(delta), "--from", "1.0", "--to", "1.1"],
                   check=True, capture_output=True)
    subprocess.run([*run, "apply", str(old), str(delta), "-o", str(tmp_path / "out")], check=True,
                   capture_output=True)
    assert tree_digest(tmp_path / "out") == tree_digest(new)


@pytest.mark.parametrize("case", sorted(HOSTILE))
@pytest.mark.parametrize("side", ["old", "new"])
def test_lying_header_refused_at_make(tmp_path: Path, case: str, side: str) -> None:
    data, rule = HOSTILE[case]
    good = {"config.json": CONFIG, "model.safetensors": _valid()}
    bad = {"config.json": CONFIG, "model.safetensors": data}
    old = write(tmp_path / "v1.0", bad if side == "old" else good)
    new = write(tmp_path / "v1.1", good if side == "old" else bad)
    out = tmp_path / "out" / "d.aldelta"
    with pytest.raises(TensorFormatError) as info:
        make_delta(old, new, out)
    assert info.value.rule == rule, str(info.value)
    assert "model.safetensors" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("case", ["overlap", "shape-size-mismatch", "deep-json"])
def test_lying_header_cli_one_line_error(tmp_path: Path, case: str) -> None:
    old = write(tmp_path / "v1.0", {"config.json": CONFIG, "model.safetensors": _valid()})
    new = write(tmp_path / "v1.1", {"config.json": CONFIG, "model.safetensors": HOSTILE[case][0]})
    out = tmp_path / "d.aldelta"
    proc = subprocess.run([*airlock_cmd(), "delta", "make", str(old), str(new), "-o", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == TensorFormatError.exit_code, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "model.safetensors" in proc.stderr
    assert not out.exists()


def _valid() -> bytes:
    from tests.delta.pairs_corpus import st

    return st([("a", "F32", (4,), bytes(16))])


def test_corpus_is_legitimate(tmp_path: Path) -> None:
    """Every safetensors file of the corpus opens with the reference implementation (which checks
    the header's offsets and sizes), so a refusal by Airlock would be a bug, not a strict reading."""
    from safetensors import safe_open

    for case in PAIRS:
        for side, files in (("old", case.old), ("new", case.new)):
            for rel, data in files.items():
                if rel.endswith(".safetensors"):
                    p = tmp_path / "f.safetensors"
                    p.write_bytes(data)
                    with safe_open(str(p), framework="numpy") as f:
                        names = set(f.keys())
                    assert names == {t.name for t in read_header(p).tensors}, (case.id, side, rel)


def test_header_over_one_record(tmp_path: Path) -> None:
    """A header over 64 MiB (a record's limit; the reference reader takes up to 100 MB) was one record
    that apply refused (``invalid width 1 / size``): it is now cut into records of at most 64 MiB."""
    from airlock.delta.codec import MAX_RAW
    from tests.delta.pairs_corpus import st

    t = ("w", "F32", (4,), bytes(16))
    old = write(tmp_path / "v1.0", {"config.json": CONFIG, "model.safetensors": st([t])})
    new = write(tmp_path / "v1.1", {"config.json": CONFIG,
                                    "model.safetensors": st([t], {"notes": "x" * (MAX_RAW + 5000)})})
    delta = tmp_path / "d.aldelta"
    make_delta(old, new, delta)
    apply_delta(old, delta, tmp_path / "fwd")
    assert tree_digest(tmp_path / "fwd") == tree_digest(new)
    apply_delta(new, delta, tmp_path / "back", reverse=True)
    assert tree_digest(tmp_path / "back") == tree_digest(old)
