"""Corrupt, truncated, foreign deltas and wrong sources are refused clearly; nothing is left behind."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from airlock.delta import apply_delta, make_delta, read_delta_header
from airlock.delta.container import PREAMBLE, TRAILER
from airlock.errors import AirlockError, DeltaFormatError, DeltaSourceError
from tests.delta.helpers import tree_digest
from tests.support import flip_byte


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def _flip(src: Path, dst: Path, offset: int) -> Path:
    data = bytearray(src.read_bytes())
    data[offset] ^= 0x40
    dst.write_bytes(bytes(data))
    return dst


def _sections(delta: Path) -> dict[str, int]:
    h = read_delta_header(delta)
    size = delta.stat().st_size
    index_start = h.records[-1].offset + h.records[-1].length
    big = max(h.records, key=lambda r: r.length)
    return {"preamble-magic": 2, "preamble-version": 8, "preamble-flags": 12,
            "first-record": PREAMBLE.size, "largest-record": big.offset + big.length // 2,
            "last-record": index_start - 1, "index": (index_start + size - TRAILER.size) // 2,
            "trailer-offset": size - TRAILER.size, "trailer-digest": size - 30, "trailer-magic": size - 3}


@pytest.mark.parametrize("section", ["preamble-magic", "preamble-version", "preamble-flags", "first-record",
                                     "largest-record", "last-record", "index", "trailer-offset",
                                     "trailer-digest", "trailer-magic"])
def test_corrupt_byte_in_each_section_is_detected(pair: tuple[Path, Path, Path], tmp_path: Path,
                                                  section: str) -> None:
    old, _new, delta = pair
    bad = _flip(delta, tmp_path / "bad.aldelta", _sections(delta)[section])
    with pytest.raises(DeltaFormatError) as err:
        apply_delta(old, bad, tmp_path / "out")
    assert str(bad) in str(err.value)
    assert not (tmp_path / "out").exists()
    assert _leftovers(tmp_path) == []


def test_every_byte_is_covered(pair: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """Flip one bit at a stride of positions across the whole file: apply never succeeds."""
    old, _new, delta = pair
    size = delta.stat().st_size
    for i, offset in enumerate(range(0, size, max(1, size // 40))):
        bad = _flip(delta, tmp_path / f"b{i}.aldelta", offset)
        with pytest.raises(DeltaFormatError):
            apply_delta(old, bad, tmp_path / f"out{i}")
        assert not (tmp_path / f"out{i}").exists()


@pytest.mark.parametrize("keep", [0, 5, PREAMBLE.size + 10, -1, -TRAILER.size - 1])
def test_truncated_delta_is_refused(pair: tuple[Path, Path, Path], tmp_path: Path, keep: int) -> None:
    old, _new, delta = pair
    data = delta.read_bytes()
    bad = tmp_path / "short.aldelta"
    bad.write_bytes(data[:keep] if keep >= 0 else data[:len(data) + keep])
    with pytest.raises(DeltaFormatError) as err:
        apply_delta(old, bad, tmp_path / "out")
    assert err.value.rule in ("delta-foreign", "delta-truncated")
    assert not (tmp_path / "out").exists()


def test_foreign_file_is_refused(pair: tuple[Path, Path, Path], tmp_path: Path) -> None:
    old, _new, _delta = pair
    foreign = old / "model-1.safetensors"
    with pytest.raises(DeltaFormatError, match="not an Airlock delta") as err:
        read_delta_header(foreign)
    assert err.value.rule == "delta-foreign"


def test_wrong_source_names_the_tensor_and_changes_nothing(pair: tuple[Path, Path, Path],
                                                           tmp_path: Path) -> None:
    old, _new, delta = pair
    src = tmp_path / "src"
    shutil.copytree(old, src)
    from airlock.safetensors_io import read_header

    h = read_header(src / "model-1.safetensors")
    victim = h.tensors[1]
    flip_byte(src / "model-1.safetensors", h.data_start + victim.start + 3, 1)
    before = tree_digest(src)
    with pytest.raises(DeltaSourceError) as err:
        apply_delta(src, delta, tmp_path / "out")
    assert repr(victim.name) in str(err.value) and "model-1.safetensors" in str(err.value)
    assert err.value.rule == "delta-source-tensor"
    assert tree_digest(src) == before
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_missing_source_file_is_refused(pair: tuple[Path, Path, Path], tmp_path: Path) -> None:
    old, _new, delta = pair
    src = tmp_path / "src"
    shutil.copytree(old, src)
    (src / "config.json").unlink()
    with pytest.raises(DeltaSourceError, match=r"config\.json: missing"):
        apply_delta(src, delta, tmp_path / "out")


def test_new_version_is_not_a_valid_forward_source(pair: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _old, new, delta = pair
    with pytest.raises(DeltaSourceError):
        apply_delta(new, delta, tmp_path / "out")


def test_no_reverse_delta_refuses_reverse_apply(pair: tuple[Path, Path, Path], tmp_path: Path) -> None:
    old, new, _delta = pair
    fwd_only = tmp_path / "fwd.aldelta"
    make_delta(old, new, fwd_only, reverse=False, level=3)
    assert not read_delta_header(fwd_only).reversible
    with pytest.raises(DeltaFormatError, match="--no-reverse") as err:
        apply_delta(new, fwd_only, tmp_path / "back", reverse=True)
    assert err.value.rule == "delta-not-reversible"
    apply_delta(old, fwd_only, tmp_path / "out")
    assert tree_digest(tmp_path / "out") == tree_digest(new)
    # the removed tensor's bytes are what makes the reversible delta bigger
    assert fwd_only.stat().st_size < _delta.stat().st_size


def test_existing_output_is_not_touched(pair: tuple[Path, Path, Path], tmp_path: Path) -> None:
    old, _new, delta = pair
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("x")
    with pytest.raises(AirlockError, match="already exists"):
        apply_delta(old, delta, out)
    assert (out / "keep").read_text() == "x"


def test_malformed_source_model_refused_at_make(tmp_path: Path) -> None:
    from airlock.errors import TensorFormatError

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "model.safetensors").write_bytes(b"\x02\0\0\0\0\0\0\0{}")
    (tmp_path / "b" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(TensorFormatError):
        make_delta(tmp_path / "a", tmp_path / "b", tmp_path / "d.aldelta")
    assert not (tmp_path / "d.aldelta").exists() and _leftovers(tmp_path) == []
