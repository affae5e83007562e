"""The zdiff-pred records (codec 13): changes predicted from the old value's exponent and top mantissa
bits, as weight decay moves the weights no gradient touches; the guard that keeps zdiff-pco where the
prediction gains nothing; records of the earlier encoder still decode; damaged records are refused."""

from __future__ import annotations

import numpy as np
import pytest

from airlock.delta import codec
from airlock.errors import DeltaFormatError

MANTISSA = {"F32": 23, "BF16": 7, "F16": 10}


def _to_bits(x: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "F32":
        return x.astype(np.float32).view(np.uint32)
    if dtype == "F16":
        return x.astype(np.float16).view(np.uint16)
    b = x.astype(np.float32).view(np.uint32).astype(np.uint64)  # bf16, round to nearest even
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)


def _from_bits(bits: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "F32":
        return bits.view(np.float32).astype(np.float64)
    if dtype == "F16":
        return bits.view(np.float16).astype(np.float64)
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def _decay_pair(dtype: str, rows: int = 400, cols: int = 128, touched: float = 0.1,
                seed: int = 3) -> tuple[bytes, bytes]:
    """An embedding-like fine-tune: every step decays each weight by a fixed fraction (AdamW weight
    decay, rounded to the dtype each step); a share of the rows also takes a random walk."""
    rng = np.random.default_rng(seed)
    old = _to_bits(0.05 * rng.standard_normal(rows * cols), dtype)
    walk = np.repeat(rng.random(rows) < touched, cols)
    factor = 1 - 3 * 2.0 ** -MANTISSA[dtype]  # a few ulps per step
    bits = old
    for _ in range(10):
        x = _from_bits(bits, dtype) * factor
        x[walk] += 2e-3 * rng.standard_normal(int(walk.sum()))
        bits = _to_bits(x, dtype)
    return old.tobytes(), bits.tobytes()


@pytest.mark.parametrize("dtype", ["F32", "BF16", "F16"])
@pytest.mark.parametrize("reversible", [True, False])
def test_decay_pair_round_trips_both_ways_and_codes_smaller(dtype: str, reversible: bool,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = _decay_pair(dtype)
    width = 4 if dtype == "F32" else 2
    enc = codec.encode_diff(new, old, width, 3, dtype=dtype, reversible=reversible)
    # reversible 16-bit records must also carry the old top mantissa bits, which a move of 30-60 ulps
    # changes often in a 7- or 10-bit mantissa: there the guard may keep pco, never anything larger
    assert enc.codec == codec.ZDIFF_PRED or (reversible and dtype != "F32")
    assert codec.decode(enc.codec, width, len(new), enc.payload, enc.planes, old, dtype=dtype) == new
    if reversible:
        back = codec.decode(enc.codec, width, len(new), enc.payload, enc.planes, new, reverse=True,
                            dtype=dtype)
        assert back == old
    else:
        with pytest.raises(DeltaFormatError, match="no-reverse"):
            codec.decode(enc.codec, width, len(new), enc.payload, enc.planes, new, reverse=True, dtype=dtype)
    monkeypatch.setattr(codec, "PRED_MIN_HITS", 2.0)  # the earlier encoder: no prediction
    before = codec.encode_diff(new, old, width, 3, dtype=dtype, reversible=reversible)
    assert before.codec in (codec.ZDIFF_PCO, codec.ZDIFF_PCO1)
    if enc.codec == codec.ZDIFF_PRED:
        assert len(enc.payload) < 0.9 * len(before.payload)
    else:
        assert len(enc.payload) <= len(before.payload)


def test_dense_updates_and_sparse_changes_keep_zdiff_pco() -> None:
    """Every weight moved by its own random amount (an optimizer step), or a few weights moved: the
    prediction gains nothing, so the record stays zdiff-pco (no table, no extra reverse section)."""
    rng = np.random.default_rng(7)
    x = (0.05 * rng.standard_normal(200_000)).astype(np.float32)
    dense = (x + 1e-4 * rng.standard_normal(x.size)).astype(np.float32)
    sparse = x.copy()
    sparse[rng.random(x.size) < 0.05] *= np.float32(1.001)
    for new in (dense, sparse):
        enc = codec.encode_diff(new.tobytes(), x.tobytes(), 4, 3, dtype="F32", reversible=True)
        assert enc.codec in (codec.ZDIFF_PCO, codec.ZDIFF_PCO1)


@pytest.mark.parametrize("dtype", ["F32", "BF16"])
def test_records_of_the_earlier_encoder_still_decode(dtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the prediction off the encoder writes exactly what it wrote before codec 13 existed
    (zdiff-pco with its reverse section); today's decoder rebuilds both directions from it."""
    old, new = _decay_pair(dtype, seed=11)
    width = 4 if dtype == "F32" else 2
    monkeypatch.setattr(codec, "PRED_MIN_HITS", 2.0)
    enc = codec.encode_diff(new, old, width, 3, dtype=dtype, reversible=True)
    monkeypatch.undo()
    assert enc.codec in (codec.ZDIFF_PCO, codec.ZDIFF_PCO1)
    assert codec.decode(enc.codec, width, len(new), enc.payload, enc.planes, old, dtype=dtype) == new
    assert codec.decode(enc.codec, width, len(new), enc.payload, enc.planes, new, reverse=True,
                        dtype=dtype) == old


def test_damaged_pred_records_are_refused() -> None:
    old, new = _decay_pair("F32", seed=5)
    enc = codec.encode_diff(new, old, 4, 3, dtype="F32", reversible=True)
    assert enc.codec == codec.ZDIFF_PRED
    # sections: flag, exponent change (2), top-bits change (2), table, one frame per group
    table_at = sum(enc.planes[:5])
    table = enc.payload[table_at:table_at + enc.planes[5]]
    cut = enc.payload[:table_at] + table[:len(table) // 2] + enc.payload[table_at + len(table):]
    planes = [*enc.planes[:5], len(table) // 2, *enc.planes[6:]]
    with pytest.raises(DeltaFormatError, match="prediction table"):
        codec.decode(enc.codec, 4, len(new), cut, planes, old, dtype="F32")
    with pytest.raises(DeltaFormatError, match="sections"):
        codec.decode(enc.codec, 4, len(new), enc.payload[:-enc.planes[-1]], enc.planes[:-1], old, dtype="F32")
    with pytest.raises(DeltaFormatError, match="reverse flag"):
        codec.decode(enc.codec, 4, len(new), b"\x07" + enc.payload[1:], enc.planes, old, dtype="F32")
    with pytest.raises(DeltaFormatError, match="zdiff-pred record for a I32"):
        codec.decode(enc.codec, 4, len(new), enc.payload, enc.planes, old, dtype="I32")


def test_flipped_bytes_give_a_format_error_or_bytes_never_a_crash() -> None:
    """Record digests refuse damaged records before decoding; the decoder itself still fails cleanly
    on any damaged byte (a wrong result is then refused by the output file's sha256)."""
    old, new = _decay_pair("F32", seed=9)
    enc = codec.encode_diff(new, old, 4, 3, dtype="F32", reversible=True)
    assert enc.codec == codec.ZDIFF_PRED
    rng = np.random.default_rng(1)
    for _ in range(150):
        damaged = bytearray(enc.payload)
        damaged[int(rng.integers(len(damaged)))] ^= 1 << int(rng.integers(8))
        for base, reverse in ((old, False), (new, True)):
            try:
                out = codec.decode(enc.codec, 4, len(new), bytes(damaged), enc.planes, base, reverse=reverse,
                                   dtype="F32")
            except DeltaFormatError:
                continue
            assert len(out) == len(new)
