"""Small model directories for delta tests, written with Airlock's own safetensors writer."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from airlock.hashing import tree_files
from airlock.safetensors_io import DTYPE_SIZES, write_safetensors

Tensor = tuple[str, str, tuple[int, ...], bytes]


def rand_tensor(rng: np.random.Generator, name: str, dtype: str, shape: tuple[int, ...]) -> Tensor:
    n = math.prod(shape) * DTYPE_SIZES[dtype]
    return name, dtype, shape, rng.integers(0, 256, n, dtype=np.uint8).tobytes()


def nudge(data: bytes, dtype: str, rng: np.random.Generator, frac: float = 1.0) -> bytes:
    """Move a fraction of elements by a few units in the last place (a fine-tune-like change)."""
    w = DTYPE_SIZES[dtype]
    u = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[w]
    arr = np.frombuffer(data, dtype=u).copy()
    mask = rng.random(arr.size) < frac
    step = rng.integers(-3, 4, arr.size).astype(np.int64).astype(u)
    arr[mask] += step[mask]
    return arr.tobytes()


def write_model(root: Path, shards: dict[str, list[Tensor]], extra: dict[str, bytes] | None = None,
                index: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for fname, tensors in shards.items():
        write_safetensors(root / fname, [(n, d, s, [b]) for n, d, s, b in tensors])
    for rel, data in (extra or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    if index:
        wmap = {n: f for f, ts in shards.items() for n, *_ in ts}
        (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wmap}))
    return root


def tree_digest(root: Path) -> dict[str, str]:
    return {rel: hashlib.sha256((root / rel).read_bytes()).hexdigest() for rel in tree_files(root)}
