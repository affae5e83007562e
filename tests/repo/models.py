"""Small synthetic BERT-shaped safetensors models for repository tests (a few hundred KiB)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

VOCAB, HIDDEN, LAYERS = 64, 32, 2


def make_model(out: Path, *, seed: int = 0, change_layer: int | None = None, extra_bytes: int = 0,
               layers: int = LAYERS) -> Path:
    """A model directory: model.safetensors (embedding + ``layers`` layers), config.json, tokenizer.
    ``change_layer`` perturbs one layer of the seed-0 weights (a partial fine-tune)."""
    rng = np.random.default_rng(0)
    tensors = {"embeddings.word_embeddings.weight": rng.standard_normal((VOCAB, HIDDEN), dtype=np.float32)}
    for i in range(layers):
        tensors[f"encoder.layer.{i}.attention.self.query.weight"] = rng.standard_normal(
            (HIDDEN, HIDDEN), dtype=np.float32)
        tensors[f"encoder.layer.{i}.output.dense.weight"] = rng.standard_normal(
            (HIDDEN, HIDDEN), dtype=np.float32)
    if change_layer is not None:
        bump = np.random.default_rng(seed).standard_normal((HIDDEN, HIDDEN), dtype=np.float32) * 0.01
        name = f"encoder.layer.{change_layer}.output.dense.weight"
        tensors[name] = tensors[name] + bump
    if extra_bytes:
        tensors["pooler.extra"] = np.random.default_rng(seed + 100).standard_normal(
            extra_bytes // 4, dtype=np.float32)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps({"hidden_size": HIDDEN, "vocab_size": VOCAB,
                                                 "num_hidden_layers": layers, "torch_dtype": "float32"}))
    (out / "tokenizer.json").write_text(json.dumps({"vocab": [f"t{i}" for i in range(VOCAB)]}))
    return out


@dataclass
class Versions:
    src: dict[str, Path]  # version -> source directory
    deltas: dict[tuple[str, str], Path]  # (from, to) -> .aldelta


def make_versions(base: Path) -> Versions:
    """Three small versions (1.0.0, 1.1.0 and 1.2.0, one layer changed each) and the two deltas
    between them (the ``versions`` fixture in tests/conftest.py)."""
    from airlock.delta import make_delta

    src = {
        "1.0.0": make_model(base / "1.0.0"),
        "1.1.0": make_model(base / "1.1.0", change_layer=1, seed=3),
        "1.2.0": make_model(base / "1.2.0", change_layer=0, seed=4),
    }
    deltas = {}
    for a, b in (("1.0.0", "1.1.0"), ("1.1.0", "1.2.0")):
        deltas[(a, b)] = base / f"m-{a}-{b}.aldelta"
        make_delta(src[a], src[b], deltas[(a, b)], from_version=a, to_version=b)
    return Versions(src, deltas)
