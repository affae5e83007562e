"""Round trips on hand-built cases: every piece kind, both directions, byte-identical."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from airlock.delta import apply_delta, make_delta, read_delta_header
from tests.delta.helpers import nudge, rand_tensor, tree_digest, write_model


def _pair(tmp: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(1)
    emb = rand_tensor(rng, "embed.weight", "BF16", (64, 16))
    w1 = rand_tensor(rng, "layers.0.w", "F32", (32, 32))
    w2 = rand_tensor(rng, "layers.1.w", "F8_E4M3", (40, 8))
    s2 = rand_tensor(rng, "layers.1.w_scale_inv", "F32", (4,))
    gone = rand_tensor(rng, "old.bias", "F16", (10,))
    old = write_model(tmp / "old", {"model-1.safetensors": [emb, w1], "model-2.safetensors": [w2, s2, gone]},
                      {"config.json": b'{"a": 1, "layers": 2}', "tokenizer.json": b"tok" * 100}, index=True)
    grown = ("embed.weight", "BF16", (70, 16), emb[3] + rng.integers(0, 256, 6 * 16 * 2, np.uint8).tobytes())
    w1n = ("layers.0.w", "F32", (32, 32), nudge(w1[3], "F32", rng))
    new_t = rand_tensor(rng, "layers.2.w", "I64", (3, 3))
    new = write_model(tmp / "new",
                      {"model-1.safetensors": [grown, w2], "model-2.safetensors": [w1n, s2, new_t]},
                      {"config.json": b'{"a": 2, "layers": 3}', "tokenizer.json": b"tok" * 100}, index=True)
    return old, new


def test_roundtrip_both_directions(tmp_path: Path) -> None:
    old, new = _pair(tmp_path)
    delta = tmp_path / "d.aldelta"
    summary = make_delta(old, new, delta, from_version="1.0", to_version="1.1")
    assert summary.tensors == {"unchanged": 2, "diff": 1, "grown": 1, "new": 1, "removed": 1}
    h = read_delta_header(delta)
    assert (h.from_version, h.to_version, h.reversible) == ("1.0", "1.1", True)
    assert set(h.target_files) == set(tree_digest(new))
    fwd = apply_delta(old, delta, tmp_path / "out")
    assert tree_digest(tmp_path / "out") == tree_digest(new)
    assert fwd.linked == 1  # tokenizer.json is unchanged: hard link
    assert (tmp_path / "out" / "tokenizer.json").stat().st_ino == (old / "tokenizer.json").stat().st_ino
    apply_delta(new, delta, tmp_path / "back", reverse=True, link_unchanged=False)
    assert tree_digest(tmp_path / "back") == tree_digest(old)
    assert (tmp_path / "back" / "tokenizer.json").stat().st_ino != (new / "tokenizer.json").stat().st_ino
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
