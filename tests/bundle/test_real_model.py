"""The demo specs with the real all-MiniLM-L6-v2 pair: a full bundle of 1.0.0 and a delta bundle to the
fine-tuned 1.1.0, both signed, verified, staged; the staged delta applied to the staged 1.0.0 gives
files whose hashes are the signed ones and whose bytes are the real 1.1.0."""

from __future__ import annotations

from pathlib import Path

import pytest

from airlock.bundle import build_bundle, stage_bundle, verify_bundle
from airlock.bundle.signing import Trust
from airlock.delta import apply_delta
from airlock.hashing import digest_file, tree_files
from tests.bundle.conftest import Keys

REPO = Path(__file__).resolve().parents[2]


def test_demo_specs_with_the_real_minilm(keys: Keys, trust: Trust, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from airlock.fixtures import ensure_minilm_pair

    pair = ensure_minilm_pair("fp32")
    monkeypatch.setenv("AIRLOCK_MINILM_OLD", str(pair.old))
    monkeypatch.setenv("AIRLOCK_MINILM_NEW", str(pair.new))
    full = build_bundle(REPO / "bundle/demo-full.yml", tmp_path / "full", signer=keys.fpr["signer"],
                        gnupghome=keys.home)
    built = build_bundle(REPO / "bundle/demo-delta.yml", tmp_path / "delta", signer=keys.fpr["signer"],
                         gnupghome=keys.home)
    assert built.kind == "delta" and built.sequence == 2
    assert "models/minilm/1.0.0/model.safetensors" in full.files
    checked = verify_bundle(tmp_path / "full", trust, compatible="airlock-demo-cpu").files_checked
    assert checked == len(full.files)
    report = verify_bundle(tmp_path / "delta", trust, compatible="airlock-demo-cpu", installed_sequence=1)
    entry = report.manifest.models[0]
    delta_size = report.manifest.files[entry.path].size
    model_size = sum(int(v["size"]) for v in entry.target_files.values())
    assert delta_size < model_size  # a fine-tune delta is smaller than the model it produces

    s_full = stage_bundle(tmp_path / "full", tmp_path / "stage-full", trust)
    s_delta = stage_bundle(tmp_path / "delta", tmp_path / "stage-delta", trust, installed_sequence=1)
    out = tmp_path / "minilm-1.1.0"
    apply_delta(s_full.path / "models/minilm/1.0.0", s_delta.path / entry.path, out)
    for rel in tree_files(out):
        d = digest_file(out / rel)
        assert {"size": d.size, "sha256": d.sha256} == entry.target_files[rel]
        assert d.sha256 == digest_file(pair.new / rel).sha256
    assert sorted(tree_files(out)) == sorted(entry.target_files)
