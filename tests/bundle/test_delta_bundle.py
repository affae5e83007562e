"""Delta bundles: a model delta payload whose signed manifest carries from/to versions and the full
hashes of the resulting version, so the applied result is checked against signed values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import yaml

from airlock.bundle import build_bundle, stage_bundle, verify_bundle
from airlock.bundle.signing import Trust
from airlock.delta import apply_delta, make_delta, read_delta_header
from airlock.errors import DeltaFormatError
from airlock.hashing import digest_file, tree_files
from tests.bundle.conftest import Keys


def _models(root: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    w = {"embed.weight": rng.standard_normal((64, 32), dtype=np.float32),
         "layer.0.weight": rng.standard_normal((32, 32), dtype=np.float32),
         "layer.0.bias": np.zeros(32, dtype=np.float32)}
    old, new = root / "v1.0", root / "v1.1"
    for d in (old, new):
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps({"hidden_size": 32, "layers": 1}))
    safetensors.numpy.save_file(w, str(old / "model.safetensors"))
    w2 = dict(w)
    w2["layer.0.weight"] = w["layer.0.weight"] + np.float32(1e-3) * rng.standard_normal((32, 32),
                                                                                         dtype=np.float32)
    safetensors.numpy.save_file(w2, str(new / "model.safetensors"))
    return old, new


def _spec(root: Path, model: dict[str, object]) -> Path:
    spec = root / "delta.yml"
    spec.write_text(yaml.safe_dump({"compatible": "appliance-test", "sequence": 7, "block_size": 4096,
                                    "models": [model]}))
    return spec


def test_delta_bundle_from_two_model_dirs(keys: Keys, trust: Trust, tmp_path: Path) -> None:
    old, new = _models(tmp_path / "m")
    spec = _spec(tmp_path, {"name": "minilm", "version": "1.1.0", "from_version": "1.0.0",
                            "delta": {"old": "m/v1.0", "new": "m/v1.1"}, "dependencies": {"torch": "2.13"}})
    m = build_bundle(spec, tmp_path / "b", signer=keys.fpr["signer"], gnupghome=keys.home)
    assert m.kind == "delta"
    entry = m.models[0]
    assert (entry.kind, entry.from_version, entry.version) == ("delta", "1.0.0", "1.1.0")
    assert entry.path == "deltas/minilm-1.0.0-1.1.0.aldelta" and list(m.files) == [entry.path]
    top = sorted(p.name for p in (tmp_path / "b").iterdir())
    assert top == ["MANIFEST.json", "MANIFEST.json.asc", "deltas"]

    report = verify_bundle(tmp_path / "b", trust)
    signed_targets = report.manifest.models[0].target_files
    expected = {rel: {"size": (new / rel).stat().st_size, "sha256": digest_file(new / rel).sha256}
                for rel in tree_files(new)}
    assert signed_targets == expected

    staged = stage_bundle(tmp_path / "b", tmp_path / "staging", trust)
    out = tmp_path / "applied"
    apply_delta(old, staged.path / entry.path, out)
    got = {rel: {"size": (out / rel).stat().st_size, "sha256": digest_file(out / rel).sha256}
           for rel in tree_files(out)}
    assert got == signed_targets


def test_delta_bundle_from_prebuilt_delta_file(keys: Keys, trust: Trust, tmp_path: Path) -> None:
    old, new = _models(tmp_path / "m")
    delta = tmp_path / "m" / "pre.aldelta"
    make_delta(old, new, delta, from_version="1.0.0", to_version="1.1.0")
    spec = _spec(tmp_path, {"name": "minilm", "version": "1.1.0", "delta_file": "m/pre.aldelta"})
    m = build_bundle(spec, tmp_path / "b", signer=keys.fpr["signer"], gnupghome=keys.home)
    header = read_delta_header(delta)
    assert m.models[0].from_version == "1.0.0"  # taken from the delta header
    assert m.models[0].target_files == {k: {"size": v.size, "sha256": v.sha256}
                                        for k, v in header.target_files.items()}
    assert (tmp_path / "b" / m.models[0].path).read_bytes() == delta.read_bytes()

    wrong = _spec(tmp_path, {"name": "minilm", "version": "2.0.0", "delta_file": "m/pre.aldelta"})
    with pytest.raises(DeltaFormatError):
        build_bundle(wrong, tmp_path / "b2", signer=keys.fpr["signer"], gnupghome=keys.home)
    assert not (tmp_path / "b2").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".building")] == []
