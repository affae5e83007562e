"""The chunk codec directly: pco records (grouped by exponent), runs-coded planes, and malformed records."""

from __future__ import annotations

import numpy as np
import pytest
import zstandard

from airlock.delta import codec, entropy
from airlock.errors import DeltaFormatError

UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
CASES = [("F8_E4M3", 1), ("BF16", 2), ("F16", 2), ("F32", 4), ("F64", 8), ("I32", 4), ("U8", 1)]


def _pair(dtype: str, width: int, frac: float, seed: int = 0) -> tuple[bytes, bytes]:
    rng = np.random.default_rng(seed)
    n = 50_000
    if dtype in ("BF16", "F16", "F32", "F64"):
        x = (0.02 * rng.standard_normal(n)).astype(np.float32)
        if dtype == "BF16":
            old = (x.view(np.uint32) >> 16).astype(np.uint16)
        else:
            old = x.astype({"F16": np.float16, "F32": np.float32, "F64": np.float64}[dtype]).view(UINT[width])
    else:
        old = rng.integers(0, 2 ** (8 * width), n, dtype=UINT[width])
    step = rng.integers(-3, 4, n).astype(np.int64).astype(UINT[width])
    new = old.copy()
    mask = rng.random(n) < frac
    new[mask] += step[mask]
    return old.tobytes(), new.tobytes()


@pytest.mark.parametrize("dtype,width", CASES)
@pytest.mark.parametrize("frac", [1.0, 0.05])
def test_diff_round_trips_both_ways(dtype: str, width: int, frac: float) -> None:
    old, new = _pair(dtype, width, frac)
    enc = codec.encode_diff(new, old, width, 3, dtype=dtype, reversible=True)
    assert enc.codec in codec.PCO_CODECS
    assert len(enc.payload) < len(new) // 2
    fwd = codec.decode(enc.codec, width, len(new), enc.payload, enc.planes, old, dtype=dtype)
    back = codec.decode(enc.codec, width, len(new), enc.payload, enc.planes, new, reverse=True, dtype=dtype)
    assert fwd == new
    assert back == old


def _finetune(seed: int = 5) -> tuple[bytes, bytes]:
    """fp32 weights moved by a similar absolute amount each (as an optimizer step does)."""
    rng = np.random.default_rng(seed)
    x = (0.05 * rng.standard_normal(200_000)).astype(np.float32)
    y = (x + 1e-4 * rng.standard_normal(x.size).astype(np.float32)).astype(np.float32)
    return x.tobytes(), y.tobytes()


def test_exponent_context_is_used_for_dense_float_updates() -> None:
    """Moves of a similar absolute size are many ulps for small weights, few for large ones:
    grouped by the old exponent they code smaller."""
    old, new = _finetune()
    enc = codec.encode_diff(new, old, 4, 3, dtype="F32", reversible=False)
    assert enc.codec == codec.ZDIFF_PCO
    flat = codec.encode_diff(new, old, 4, 3, dtype="I32", reversible=False)
    assert flat.codec == codec.ZDIFF_PCO1
    assert len(enc.payload) < len(flat.payload)


def test_no_reverse_record_refuses_reverse_decode() -> None:
    old, new = _finetune()
    enc = codec.encode_diff(new, old, 4, 3, dtype="F32", reversible=False)
    assert enc.codec == codec.ZDIFF_PCO
    with pytest.raises(DeltaFormatError, match="no-reverse"):
        codec.decode(enc.codec, 4, len(new), enc.payload, enc.planes, new, reverse=True, dtype="F32")


def test_malformed_pco_records_are_refused() -> None:
    old, new = _pair("BF16", 2, 1.0)
    enc = codec.encode_diff(new, old, 2, 3, dtype="BF16", reversible=True)
    with pytest.raises(DeltaFormatError, match="sections"):
        codec.decode(enc.codec, 2, len(new), enc.payload, enc.planes[:-1], old, dtype="BF16")
    last = enc.planes[-1]
    cut = enc.payload[:-last] + enc.payload[-last:][: last // 2]
    with pytest.raises(DeltaFormatError, match="pco group"):
        codec.decode(enc.codec, 2, len(new), cut, [*enc.planes[:-1], last // 2], old, dtype="BF16")


def test_sparse_plane_is_coded_as_runs_and_round_trips() -> None:
    rng = np.random.default_rng(9)
    n = 1_000_000
    plane = np.zeros(n, dtype=np.uint8)
    where = rng.choice(n, 10_000, replace=False)
    plane[where] = rng.integers(1, 3, where.size)
    plane[-1] = 7  # a non-zero last byte, and a long gap (escapes) before it
    plane[-300:-1] = 0
    payload, sections = entropy.encode([plane], np.zeros(n, dtype=np.uint8), 3)
    assert len(payload) < n // 50
    meta = zstandard.ZstdDecompressor().decompress(payload[4:4 + int.from_bytes(payload[:4], "little")])
    assert meta[0] == entropy.RUNS
    out = entropy.decode(payload, sections, np.zeros(n, dtype=np.uint8), 1)[0]
    assert np.array_equal(out, plane)


def test_runs_with_impossible_counts_are_refused() -> None:
    n = 10_000
    plane = np.zeros(n, dtype=np.uint8)
    plane[::97] = 1
    payload, sections = entropy.encode([plane], np.zeros(n, dtype=np.uint8), 3)
    small = np.zeros(n // 100, dtype=np.uint8)  # the same record against a shorter chunk
    with pytest.raises(DeltaFormatError):
        entropy.decode(payload, sections, small, 1)


@pytest.mark.parametrize("retired", [5, 6, 7, 8, 14])
def test_retired_or_unknown_codecs_are_refused(retired: int) -> None:
    old, new = _pair("BF16", 2, 1.0)
    with pytest.raises(DeltaFormatError, match="unknown codec"):
        codec.decode(retired, 2, len(new), b"\0" * 8, [4, 4], old, dtype="BF16")
