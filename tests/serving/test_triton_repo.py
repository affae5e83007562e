"""Triton repository generation and config validation (no server needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from airlock.errors import ManifestError, RepositoryError
from airlock.serving.golden import compare, golden_record, parse_golden
from airlock.serving.triton_repo import (
    BACKENDS,
    ModelOptions,
    TritonModel,
    generate,
    render_config,
    validate_config,
)
from tests.serving.conftest import Pair, add_model, ids


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"<dir>")
            for p in sorted(root.rglob("*"))} if root.exists() else {}


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_config_parses_with_tritons_schema(tmp_path: Path, backend: str) -> None:
    text = render_config("llm", [3, 1], ModelOptions(backend=backend))
    cfg = validate_config(text, name="llm")
    assert cfg.backend == backend
    assert list(cfg.version_policy.specific.versions) == [1, 3]
    assert cfg.parameters["airlock_model"].string_value == "llm"


def test_invalid_configs_are_rejected(tmp_path: Path) -> None:
    good = render_config("m", [1], ModelOptions())
    with pytest.raises(ManifestError, match="not a valid Triton ModelConfig"):
        validate_config(good + "no_such_field: 1\n", name="m")
    with pytest.raises(ManifestError, match="differs from the directory"):
        validate_config(good, name="other")
    (tmp_path / "m").mkdir()
    with pytest.raises(ManifestError, match="version 1 but"):
        validate_config(good, name="m", model_dir=tmp_path / "m")
    with pytest.raises(ManifestError, match="unknown Triton backend"):
        render_config("m", [1], ModelOptions(backend="onnx-magic"))


def test_generate_creates_validated_entry_and_is_idempotent(tmp_path: Path, airlock_root: Path) -> None:
    add_model(airlock_root, "gen_a")
    triton = tmp_path / "triton"
    check = generate(airlock_root, triton, models=["gen_a"], check=True)
    assert check.changed and check.models["gen_a"]["would_add_version"]
    assert not triton.exists(), "check mode must not write"

    report = generate(airlock_root, triton, models=["gen_a"])
    assert report.changed and report.models["gen_a"]["served"] == [1]
    vdir = triton / "gen_a" / "1"
    info = json.loads((vdir / "version.json").read_text())
    assert info == {"model": "gen_a", "version": "1.0.0",
                    "path": str((airlock_root / "model_repo" / "gen_a" / "1.0.0").resolve())}
    assert (vdir / "model.py").read_bytes() == Path("airlock/serving/python_model/model.py").read_bytes()
    cfg = validate_config((triton / "gen_a" / "config.pbtxt").read_text(), name="gen_a",
                          model_dir=triton / "gen_a")
    assert cfg.output[0].dims == [-1, 384]

    before = _snapshot(triton)
    again = generate(airlock_root, triton, models=["gen_a"])
    assert not again.changed and _snapshot(triton) == before


def test_version_numbers_are_stable_and_never_reused(tmp_path: Path, airlock_root: Path) -> None:
    model = add_model(airlock_root, "gen_b")
    entry = TritonModel(tmp_path / "gen_b")
    assert entry.ensure_version("1.0.0", model / "1.0.0") == 1
    assert entry.ensure_version("1.1.0", model / "1.1.0") == 2
    assert entry.ensure_version("1.0.0", model / "1.0.0") == 1
    entry.write_config([2])
    entry.remove_version(1)
    assert entry.ensure_version("1.0.0", model / "1.0.0") == 3, "a removed number is not reused"
    with pytest.raises(RepositoryError, match=r"still named by config\.pbtxt"):
        entry.remove_version(2)
    with pytest.raises(RepositoryError, match="recorded at"):
        entry.ensure_version("1.1.0", model / "1.0.0")


def test_generate_refuses_a_dangling_current_and_changes_nothing(tmp_path: Path, airlock_root: Path) -> None:
    model = airlock_root / "model_repo" / "gen_dangling"
    model.mkdir(parents=True)
    (model / "current").symlink_to("9.9.9")
    triton = tmp_path / "triton"
    try:
        with pytest.raises(RepositoryError, match="dangling current symlink"):
            generate(airlock_root, triton)
        assert not triton.exists()
    finally:
        (model / "current").unlink()
        model.rmdir()


def test_kill_before_version_rename_leaves_no_partial_version(tmp_path: Path, airlock_root: Path) -> None:
    add_model(airlock_root, "gen_fault")
    triton = tmp_path / "triton"
    code = ("import sys; from pathlib import Path; from airlock.serving.triton_repo import generate; "
            "generate(Path(sys.argv[1]), Path(sys.argv[2]), models=['gen_fault'])")
    env = {**os.environ, "AIRLOCK_FAULT": "serving.version_dir.before_rename"}
    proc = subprocess.run([sys.executable, "-c", code, str(airlock_root), str(triton)], env=env, check=False)
    assert proc.returncode == -9
    assert not (triton / "gen_fault" / "1").exists() and not (triton / "gen_fault" / "config.pbtxt").exists()
    env["AIRLOCK_FAULT"] = "serving.config.before_write"
    proc = subprocess.run([sys.executable, "-c", code, str(airlock_root), str(triton)], env=env, check=False)
    assert proc.returncode == -9
    assert (triton / "gen_fault" / "1" / "version.json").is_file()
    assert not (triton / "gen_fault" / "config.pbtxt").exists()
    # a clean re-run completes from either state
    report = generate(airlock_root, triton, models=["gen_fault"])
    assert report.models["gen_fault"]["served"] == [1]
    assert sorted(p.name for p in (triton / "gen_fault").iterdir() if not p.name.startswith(".")) == \
        ["1", "config.pbtxt"]


def test_numpy_forward_pass_matches_the_torch_reference(minilm_pair: Pair) -> None:
    from airlock.fixtures.bert import embed
    from airlock.serving.python_model.model import MiniLM

    for model_dir in (minilm_pair.old, minilm_pair.new):
        ours = MiniLM(str(model_dir)).embed(ids())
        ref = embed(model_dir, ids())
        assert ours.shape == (2, 384)
        np.testing.assert_allclose(ours, ref, atol=2e-6)
    old = MiniLM(str(minilm_pair.old)).embed(ids())
    new = MiniLM(str(minilm_pair.new)).embed(ids())
    assert np.abs(old - new).max() > 1e-3, "v1.1 must really differ from v1.0"


def test_golden_records(minilm_pair: Pair) -> None:
    g10 = parse_golden(golden_record(minilm_pair.old))
    g11 = parse_golden(golden_record(minilm_pair.new))
    assert compare(g10, dict(g10.expected)).ok
    bad = compare(g11, dict(g10.expected))
    assert not bad.ok and "differs from the golden output" in bad.detail
    assert not compare(g10, {"EMBEDDING": g10.expected["EMBEDDING"][:1]}).ok
    assert not compare(g10, {}).ok
    for record in ({}, {"inputs": {"INPUT_IDS": [[1]]}},
                   {"inputs": {"X": [[1], [1, 2]]}, "expected": {"Y": [1.0]}},
                   {"inputs": {"X": [1]}, "expected": {"Y": [1.0]}, "atol": -1},
                   {"inputs": {"X": ["a"]}, "expected": {"Y": [1.0]}}):
        with pytest.raises(ManifestError):
            parse_golden(record)


def test_golden_record_fits_the_bundle_spec_and_short_forms_parse(minilm_pair: Pair, tmp_path: Path) -> None:
    import yaml

    from airlock.bundle.spec import load_spec

    record = golden_record(minilm_pair.new)
    assert {"input", "expected", "tolerance"} <= set(record)
    # the bundle spec accepts the record as a model entry's golden
    spec = tmp_path / "spec.yml"
    spec.write_text(yaml.safe_dump({"bundle_id": "t", "compatible": "test", "sequence": 1, "models": [
        {"name": "minilm", "version": "1.1.0", "path": str(minilm_pair.new), "golden": record}]}))
    assert load_spec(spec).models[0].golden == record
    g = parse_golden(record)
    assert g.atol == record["tolerance"] and g.inputs["INPUT_IDS"].shape == (2, 10)

    # canonical names, and the short forms: bare token ids, bare expected vector, text input
    emb = g.expected["EMBEDDING"]
    canonical = parse_golden({"inputs": {"INPUT_IDS": record["input"]["INPUT_IDS"]},
                              "expected": record["expected"], "atol": 1e-5, "rtol": 0})
    assert canonical.atol == 1e-5 and np.array_equal(canonical.expected["EMBEDDING"], emb)
    short = parse_golden({"input": record["input"]["INPUT_IDS"][0], "expected": emb[0].tolist(),
                          "tolerance": 1e-3})
    assert short.inputs["INPUT_IDS"].shape == (1, 10) and short.expected["EMBEDDING"].shape == (1, 384)
    assert short.rtol == 0.0
    text = parse_golden({"input": "hello world", "expected": emb[0].tolist(), "tolerance": 1e-3},
                        tokenizer=minilm_pair.new / "tokenizer.json")
    assert text.inputs["INPUT_IDS"].tolist() == [[101, 7592, 2088, 102]]
    with pytest.raises(ManifestError, match="give token ids instead"):
        parse_golden({"input": "hello world", "expected": [0.1], "tolerance": 1e-3})


def test_candidate_suffix_is_reserved(tmp_path: Path, airlock_root: Path) -> None:
    from airlock.serving.client import TritonClient
    from airlock.serving.reload import CANDIDATE_SUFFIX, Reloader

    model = add_model(airlock_root, "gen_x" + CANDIDATE_SUFFIX)
    try:
        with pytest.raises(RepositoryError, match="reserved"):
            generate(airlock_root, tmp_path / "triton", models=["gen_x" + CANDIDATE_SUFFIX])
        with pytest.raises(RepositoryError, match="reserved"):
            Reloader(TritonClient("http://127.0.0.1:9"), tmp_path / "triton").reload(
                "gen_x" + CANDIDATE_SUFFIX, "1.0.0", model / "1.0.0")
        assert not (tmp_path / "triton").exists()
    finally:
        (model / "current").unlink()


def test_vllm_entry_points_the_engine_at_the_immutable_version(tmp_path: Path, airlock_root: Path) -> None:
    model = add_model(airlock_root, "gen_llm")
    entry = TritonModel(tmp_path / "gen_llm", ModelOptions(backend="vllm", tensor_parallel_size=8))
    number = entry.ensure_version("1.0.0", model / "1.0.0")
    engine = json.loads((entry.root / str(number) / "model.json").read_text())
    assert engine["model"] == str((model / "1.0.0").resolve()) and engine["tensor_parallel_size"] == 8
    assert not (entry.root / str(number) / "model.py").exists()
    assert entry.write_config([number])
    cfg = validate_config(entry.config_path.read_text(), name="gen_llm", model_dir=entry.root)
    assert cfg.backend == "vllm" and cfg.model_transaction_policy.decoupled
    assert not entry.write_config([number]), "unchanged config is not rewritten"
