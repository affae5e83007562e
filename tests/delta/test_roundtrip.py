"""Round trips on hand-built cases: every piece kind, both directions, byte-identical."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

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


def test_large_non_tensor_file_is_streamed_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Above the prefix limit a non-tensor file is stored as independent zstd chunks (bounded memory)."""
    import airlock.delta.make as make_mod

    monkeypatch.setattr(make_mod, "PREFIX_LIMIT", 1000)
    rng = np.random.default_rng(2)
    blob = rng.integers(0, 4, 5000, dtype=np.uint8).tobytes()
    old = write_model(tmp_path / "old", {}, {"data/vocab.bin": blob})
    new = write_model(tmp_path / "new", {}, {"data/vocab.bin": blob[:4000] + b"changed"})
    delta = tmp_path / "d.aldelta"
    make_delta(old, new, delta, chunk_bytes=1024, level=3)
    h = read_delta_header(delta)
    assert [p[0] for p in h.forward[0].pieces] == ["rec"] * 4
    apply_delta(old, delta, tmp_path / "out")
    assert tree_digest(tmp_path / "out") == tree_digest(new)
    apply_delta(new, delta, tmp_path / "back", reverse=True)
    assert tree_digest(tmp_path / "back") == tree_digest(old)


def test_resharded_and_renamed_tensors_are_references(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    ts = [rand_tensor(rng, f"w{i}", "BF16", (16, 8)) for i in range(4)]
    old = write_model(tmp_path / "old", {"a.safetensors": ts[:2], "b.safetensors": ts[2:]})
    renamed = ("renamed", *ts[3][1:])
    new = write_model(tmp_path / "new", {"x.safetensors": [ts[2], ts[0]], "y.safetensors": [ts[1], renamed]})
    delta = tmp_path / "d.aldelta"
    summary = make_delta(old, new, delta)
    assert summary.tensors["unchanged"] == 4 and summary.tensors["new"] == 0
    h = read_delta_header(delta)
    kinds = {p[0] for r in h.forward + (h.reverse or []) for p in r.pieces}
    assert kinds == {"rec", "copy"}  # headers as records, every tensor a reference
    apply_delta(old, delta, tmp_path / "out")
    assert tree_digest(tmp_path / "out") == tree_digest(new)
    apply_delta(new, delta, tmp_path / "back", reverse=True)
    assert tree_digest(tmp_path / "back") == tree_digest(old)
