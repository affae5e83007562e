"""Hypothesis: random tensor sets (every dtype incl. fp8, random shapes and shard layouts) and random
changes (nudged, rewritten, grown, shrunk, added, removed, re-sharded, non-tensor files) round-trip
byte-identically in both directions."""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path

import ml_dtypes
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airlock.delta import apply_delta, make_delta
from airlock.safetensors_io import DTYPE_SIZES
from tests.delta.helpers import nudge, tree_digest, write_model

DTYPES = sorted(DTYPE_SIZES)
CHANGES = ["same", "nudge", "rewrite", "grow", "shrink", "remove", "retype"]


def _values(rng: np.random.Generator, dtype: str, n: int) -> bytes:
    """Realistic values for floats (so the exponent contexts see real exponents), random bytes else."""
    floats = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "BF16": ml_dtypes.bfloat16,
              "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2}
    if dtype in floats:
        return (rng.standard_normal(n) * 0.05).astype(floats[dtype]).tobytes()
    return rng.integers(0, 256, n * DTYPE_SIZES[dtype], dtype=np.uint8).tobytes()


@st.composite
def model_pairs(draw: st.DrawFn) -> tuple[dict[str, list[tuple[str, str, tuple[int, ...], bytes]]], ...]:
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    count = draw(st.integers(1, 6))
    old: list[tuple[str, str, tuple[int, ...], bytes]] = []
    new: list[tuple[str, str, tuple[int, ...], bytes]] = []
    for i in range(count):
        dtype = draw(st.sampled_from(DTYPES))
        shape = tuple(draw(st.lists(st.integers(0, 9), min_size=0, max_size=3)))
        data = _values(rng, dtype, math.prod(shape))
        name = f"t{i}"
        old.append((name, dtype, shape, data))
        change = draw(st.sampled_from(CHANGES))
        if change == "same":
            new.append((name, dtype, shape, data))
        elif change == "nudge":
            new.append((name, dtype, shape, nudge(data, dtype, rng, 0.5)))
        elif change == "rewrite":
            new.append((name, dtype, shape, _values(rng, dtype, math.prod(shape))))
        elif change in ("grow", "shrink") and shape:
            rows = max(0, shape[0] + (draw(st.integers(1, 4)) * (1 if change == "grow" else -1)))
            s2 = (rows, *shape[1:])
            per_row = math.prod(shape[1:]) * DTYPE_SIZES[dtype]
            keep = min(rows, shape[0]) * per_row
            extra = _values(rng, dtype, max(0, rows - shape[0]) * math.prod(shape[1:]))
            new.append((name, dtype, s2, nudge(data[:keep], dtype, rng, 0.3) + extra))
        elif change == "retype":
            d2 = draw(st.sampled_from(DTYPES))
            new.append((name, d2, shape, _values(rng, d2, math.prod(shape))))
        # "remove" (and grow/shrink of a scalar): the tensor is gone
    for j in range(draw(st.integers(0, 2))):
        dtype = draw(st.sampled_from(DTYPES))
        shape = tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=2)))
        new.append((f"added{j}", dtype, shape, _values(rng, dtype, math.prod(shape))))
    if not new:
        new.append(("only", "U8", (1,), b"\x01"))
    rng.shuffle(new)  # type: ignore[arg-type]

    def shard(tensors: list[tuple[str, str, tuple[int, ...], bytes]], n: int) -> dict[str, list[
            tuple[str, str, tuple[int, ...], bytes]]]:
        out: dict[str, list[tuple[str, str, tuple[int, ...], bytes]]] = {}
        for k, t in enumerate(tensors):
            out.setdefault(f"model-{k % n:05d}.safetensors", []).append(t)
        return out

    return shard(old, draw(st.integers(1, 3))), shard(new, draw(st.integers(1, 3)))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pair=model_pairs(), extra=st.sampled_from(["same", "edit", "new", "gone"]),
       reverse=st.booleans())
def test_roundtrip_property(pair: tuple[dict[str, list[tuple[str, str, tuple[int, ...], bytes]]], ...],
                            extra: str, reverse: bool) -> None:
    old_shards, new_shards = pair
    tmp = Path(tempfile.mkdtemp(prefix="airlock-prop-"))
    try:
        old_extra = {"config.json": b'{"hidden": 8, "layers": 2}'}
        new_extra = {"same": old_extra, "edit": {"config.json": b'{"hidden": 8, "layers": 3}'},
                     "new": {**old_extra, "tok/tokenizer.json": b"{}"}, "gone": {}}[extra]
        old = write_model(tmp / "old", old_shards, old_extra, index=True)
        new = write_model(tmp / "new", new_shards, new_extra, index=len(new_shards) > 1)
        delta = tmp / "d.aldelta"
        make_delta(old, new, delta, level=1, reverse=reverse, chunk_bytes=64)
        apply_delta(old, delta, tmp / "fwd")
        assert tree_digest(tmp / "fwd") == tree_digest(new)
        if reverse:
            apply_delta(new, delta, tmp / "back", reverse=True)
            assert tree_digest(tmp / "back") == tree_digest(old)
    finally:
        shutil.rmtree(tmp)
