"""Build -> verify -> stage -> pack -> unpack on a small real bundle."""

from __future__ import annotations

from pathlib import Path

from airlock.bundle import pack_bundle, stage_bundle, unpack_bundle, verify_archive, verify_bundle
from airlock.bundle.signing import Trust
from tests.bundle.conftest import BundleFactory


def test_build_verify_stage_pack_unpack(factory: BundleFactory, trust: Trust, tmp_path: Path) -> None:
    bundle = factory.build()
    report = verify_bundle(bundle, trust, compatible="appliance-test", installed_sequence=5)
    m = report.manifest
    assert report.files_checked == 3 and report.extra_files == []
    assert [p.size for p in m.files["models/minilm/1.0.0/big.bin"].parts] == [10_000, 10_000, 5_000]
    assert (bundle / "models/minilm/1.0.0/big.bin.part002").stat().st_size == 5_000
    assert m.models[0].target_files["big.bin"]["size"] == 25_000
    assert m.models[0].golden == {"input": "hello", "expected": [0.1, 0.2], "tolerance": 0.01}

    staged = stage_bundle(bundle, tmp_path / "stage", trust)
    src = factory.tmp / "src-1" / "model"
    for rel in ("config.json", "model.safetensors", "big.bin"):
        assert (staged.path / "models/minilm/1.0.0" / rel).read_bytes() == (src / rel).read_bytes()
    assert staged.counters.bytes_copied == m.total_bytes

    tar = tmp_path / "b.tar"
    pack_bundle(bundle, tar, trust)
    assert verify_archive(tar, trust).bytes_checked == m.total_bytes
    out = unpack_bundle(tar, tmp_path / "unpacked", trust)
    assert verify_bundle(out.path, trust).files_checked == 3


def test_empty_and_exact_multiple_payloads(factory: BundleFactory, trust: Trust, tmp_path: Path) -> None:
    from tests.bundle.conftest import BLOCK, payload

    files = {"config.json": b"{}", "empty.txt": b"", "exact.bin": payload(4 * BLOCK, 3),
             "split-exact.bin": payload(20_000, 4)}
    bundle = factory.build(model_files=files)
    m = verify_bundle(bundle, trust).manifest
    base = "models/minilm/1.0.0"
    assert m.files[f"{base}/empty.txt"].blocks == [] and len(m.files[f"{base}/exact.bin"].blocks) == 4
    assert [p.size for p in m.files[f"{base}/split-exact.bin"].parts] == [10_000, 10_000]
    staged = stage_bundle(bundle, tmp_path / "st", trust)
    for rel, data in files.items():
        assert (staged.path / base / rel).read_bytes() == data
    pack_bundle(bundle, tmp_path / "t.tar")
    out = unpack_bundle(tmp_path / "t.tar", tmp_path / "u", trust)
    assert (out.path / base / "empty.txt").read_bytes() == b""
