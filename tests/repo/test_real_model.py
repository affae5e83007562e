"""The real all-MiniLM-L6-v2 and its real fine-tune: install with the torch loadability check,
update by delta (unchanged tokenizer/config files hard-linked), verify, roll back."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from airlock.repo import Repository, check_loadable
from tests.repo.conftest import assert_same_tree


@pytest.mark.slow
def test_minilm_install_update_rollback(tmp_path: Path) -> None:
    from airlock.delta import make_delta
    from airlock.fixtures import ensure_minilm_pair

    pair = ensure_minilm_pair()
    report = check_loadable(pair.old, use_torch=True)
    assert report.embedding == ("embeddings.word_embeddings.weight", [30522, 384]) and report.layers == 6
    assert {"embedding", "layers", "torch"} <= set(report.checks)
    delta = tmp_path / "minilm-1.0.0-1.1.0.aldelta"
    make_delta(pair.old, pair.new, delta, from_version="1.0.0", to_version="1.1.0")

    repo = Repository(tmp_path / "root", check_torch=True)
    repo.install_version("minilm", "1.0.0", pair.old)
    plan = repo.update_from_delta("minilm", delta)
    v1, v2 = (repo.layout.version_dir("minilm", v) for v in ("1.0.0", "1.1.0"))
    assert_same_tree(v2, pair.new)
    assert (v1 / "tokenizer.json").stat().st_ino == (v2 / "tokenizer.json").stat().st_ino
    model = (pair.new / "model.safetensors").stat().st_size
    assert plan.bytes_linked == sum(f.size for f in plan.files if f.how == "link")
    assert model <= plan.bytes_needed < model + delta.stat().st_size + 1024 * 1024
    assert any("torch" in n for n in plan.notes)
    assert repo.verify("minilm")["ok"]
    repo.rollback("minilm")
    assert os.readlink(repo.layout.current("minilm")) == "1.0.0"
    repo.close()
