"""A small two-version model pair shared by the delta tests (built once per test session)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.delta.helpers import nudge, rand_tensor, write_model


def build_pair(root: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(7)
    emb = rand_tensor(rng, "embed.weight", "BF16", (256, 64))
    w1 = rand_tensor(rng, "layers.0.w", "F32", (128, 128))
    w2 = rand_tensor(rng, "layers.1.w", "F8_E4M3", (64, 64))
    gone = rand_tensor(rng, "old.bias", "F16", (64,))
    old = write_model(root / "v1.0", {"model-1.safetensors": [emb, w1], "model-2.safetensors": [w2, gone]},
                      {"config.json": b'{"layers": 2}', "tokenizer.json": b"tokens " * 50}, index=True)
    w1n = ("layers.0.w", "F32", (128, 128), nudge(w1[3], "F32", rng))
    new = write_model(root / "v1.1", {"model-1.safetensors": [emb, w1n], "model-2.safetensors": [w2]},
                      {"config.json": b'{"layers": 3}', "tokenizer.json": b"tokens " * 50}, index=True)
    return old, new


@pytest.fixture(scope="session")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(old dir, new dir, reversible delta old -> new) -- treat as read-only."""
    root = tmp_path_factory.mktemp("pair")
    old, new = build_pair(root)
    from airlock.delta import make_delta

    make_delta(old, new, root / "d.aldelta", from_version="1.0", to_version="1.1", level=3)
    return old, new, root / "d.aldelta"
