"""Compressed full bundles (issue 18): lossless per-dtype coding, the signed manifest still names the
uncompressed files, staging decodes, hashes and writes in one pass, and a damaged compressed part is
refused exactly like a damaged raw part (exit 13)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

from airlock.bundle import pack_bundle, stage_bundle, verify_archive, verify_bundle
from airlock.bundle.manifest import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    Coding,
    PartEntry,
    canonical_bytes,
    parse_manifest,
)
from airlock.bundle.pack import stage_archive
from airlock.bundle.safeio import COMPLETE_MARKER
from airlock.bundle.signing import Trust
from airlock.codec.frame import DTYPES, FrameError, Segment, decode_block, encode_block, split_block
from airlock.errors import IntegrityError, ManifestError
from airlock.safetensors_io import build_header
from tests.bundle.conftest import BundleFactory, Keys, airlock_cmd

BLOCK = 64 * 1024
SPLIT = 100_000
W = "models/minilm/1.0.0/model.safetensors"


def _tensor(dtype: str, n: int, rng: np.random.Generator) -> bytes:
    x = rng.standard_normal(n).astype(np.float32) * 0.02
    if dtype == "BF16":
        return x.astype(ml_dtypes.bfloat16).tobytes()
    if dtype == "F16":
        return x.astype(np.float16).tobytes()
    if dtype == "F32":
        return x.tobytes()
    if dtype == "F64":
        return x.astype(np.float64).tobytes()
    if dtype == "F8_E4M3":
        return (x * 400).astype(ml_dtypes.float8_e4m3fn).tobytes()
    if dtype == "F8_E5M2":
        return (x * 400).astype(ml_dtypes.float8_e5m2).tobytes()
    if dtype == "I64":
        return np.arange(n, dtype=np.int64).tobytes()
    if dtype == "I32":
        return rng.integers(-1000, 1000, n, dtype=np.int32).tobytes()
    return rng.integers(0, 256, n, dtype=np.uint8).tobytes()


TENSORS = [("embed", "BF16", 30001), ("norm", "F16", 4097), ("dense", "F32", 20003), ("q8", "F8_E4M3", 50001),
           ("q5", "F8_E5M2", 9000), ("pos", "I64", 513), ("ids", "I32", 777), ("mask", "U8", 333)]


def _safetensors() -> bytes:
    rng = np.random.default_rng(18)
    specs = [(name, dtype, [n]) for name, dtype, n in TENSORS]
    return build_header(specs) + b"".join(_tensor(d, n, rng) for _name, d, n in TENSORS)


MODEL = {"config.json": b'{"hidden": 8}\n', "model.safetensors": _safetensors(), "empty.txt": b"",
         "tokenizer.json": json.dumps({"vocab": {f"tok{i}": i for i in range(2000)}}).encode()}


def _build(factory: BundleFactory, compress: bool) -> Path:
    return factory.build(f"bundle-{'z' if compress else 'raw'}", model_files=MODEL, split_size=SPLIT,
                         block_size=BLOCK, compress=compress)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> tuple[Path, Path]:
    factory = BundleFactory(keys, tmp_path_factory.mktemp("compressed"))
    return _build(factory, False), _build(factory, True)


@pytest.fixture
def zbundle(built: tuple[Path, Path], tmp_path: Path) -> Path:
    copy = tmp_path / "z"
    shutil.copytree(built[1], copy)
    return copy


def _manifest(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / MANIFEST_NAME).read_bytes())


def _stage_cli(bundle: Path, staging: Path, keys: Keys) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*airlock_cmd(), "bundle", "stage", str(bundle), "--to", str(staging), "--trust",
                           keys.fpr["signer"], "--keyring", str(keys.keyring("signer")), "--json"],
                          capture_output=True, text=True)


def _stored_bytes(bundle: Path) -> int:
    return sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file() and "MANIFEST" not in p.name)


# ------------------------------------------------------------------------------------------- codec


@pytest.mark.parametrize("code", sorted(DTYPES))
def test_every_dtype_roundtrips_through_a_frame_cut_mid_element(code: int) -> None:
    name, width, _rot = DTYPES[code]
    rng = np.random.default_rng(code)
    realistic = {"BF16", "F16", "F32", "F64", "F8_E4M3", "F8_E5M2", "I64", "I32"}
    data = _tensor(name, 5000, rng) if name in realistic else rng.bytes(5000 * width)
    file = b"HEADER" + data + b"tail"
    layout = [Segment(0, 6), Segment(6, 6 + len(data), name), Segment(6 + len(data), len(file))]
    cut = 6 + 1001 * width + (width > 1)  # a block edge inside an element
    for start, end in ((0, cut), (cut, len(file))):
        segs = list(split_block(layout, start, end))
        frame = encode_block(file[start:end], segs, start)
        assert bytes(decode_block(frame, end - start)) == file[start:end]
    tensor_frame = encode_block(data, [Segment(0, len(data), name)], 0)
    if name in realistic:
        assert len(tensor_frame) < 0.95 * len(data), name  # float and int tensors really compress


def test_a_frame_that_lies_about_its_lengths_is_refused() -> None:
    data = _tensor("BF16", 4096, np.random.default_rng(1))
    frame = encode_block(data, [Segment(0, len(data), "BF16")], 0)
    with pytest.raises(FrameError):
        decode_block(frame, len(data) - 2)  # the block is not what the frame holds
    with pytest.raises(FrameError):
        decode_block(frame[:-1], len(data))
    with pytest.raises(FrameError):
        decode_block(b"XXXX" + frame[4:], len(data))


# --------------------------------------------------------------------------------- bundle and stage


def test_compressed_bundle_is_smaller_names_the_uncompressed_files_and_stages_them(
        built: tuple[Path, Path], trust: Trust, tmp_path: Path) -> None:
    raw, z = built
    mraw, mz = _manifest(raw), _manifest(z)
    assert mraw["format_version"] == 1 and mz["format_version"] == 2  # raw bundles stay readable by v1
    for rel, e in mraw["files"].items():  # same uncompressed size, sha256 and block hashes
        assert {k: mz["files"][rel][k] for k in ("size", "sha256", "blocks")} == \
            {k: e[k] for k in ("size", "sha256", "blocks")}
    wz = mz["files"][W]
    assert wz["coding"]["codec"] == "alz1" and len(wz["coding"]["frames"]) == len(wz["blocks"])
    assert sum(p["size"] for p in wz["parts"]) == wz["coding"]["size"] < 0.8 * wz["size"]  # split on FAT32
    assert _stored_bytes(z) < 0.8 * _stored_bytes(raw)
    assert verify_bundle(z, trust).files_checked == len(MODEL)
    staged = stage_bundle(z, tmp_path / "st", trust)
    for rel, data in MODEL.items():
        got = (staged.path / "models/minilm/1.0.0" / rel).read_bytes()
        assert got == data
        assert hashlib.sha256(got).hexdigest() == mz["files"][f"models/minilm/1.0.0/{rel}"]["sha256"]
    assert staged.counters.blocks_copied == sum(len(e["blocks"]) for e in mz["files"].values())
    again = stage_bundle(z, tmp_path / "st", trust)  # a complete stage is re-checked and kept
    assert again.counters.blocks_copied == 0 and again.counters.files_reused == len(MODEL)


def test_damaged_staged_block_is_repaired_from_its_frame(zbundle: Path, trust: Trust, tmp_path: Path) -> None:
    staged = stage_bundle(zbundle, tmp_path / "st", trust)
    victim = staged.path / W
    victim.chmod(0o644)
    data = bytearray(victim.read_bytes())
    data[BLOCK + 10] ^= 1
    victim.write_bytes(bytes(data))
    again = stage_bundle(zbundle, tmp_path / "st", trust)
    assert again.counters.blocks_copied == 1 and again.counters.bytes_copied == BLOCK
    assert victim.read_bytes() == MODEL["model.safetensors"]


def test_flipped_byte_in_a_compressed_part_is_exit_13_like_a_raw_part(
        built: tuple[Path, Path], keys: Keys, tmp_path: Path) -> None:
    codes = []
    for bundle in built:
        copy = tmp_path / bundle.name
        shutil.copytree(bundle, copy)
        part = copy / f"{W}.part001"
        data = bytearray(part.read_bytes())
        data[len(data) // 2] ^= 0x40
        part.write_bytes(bytes(data))
        r = _stage_cli(copy, tmp_path / f"st-{bundle.name}", keys)
        out = json.loads(r.stdout or r.stderr)
        codes.append((r.returncode, out["rule"]))
        assert W in out["message"]
    assert codes == [(13, "block-hash"), (13, "block-hash")]


def test_truncated_compressed_part_is_refused_before_any_copy(zbundle: Path, trust: Trust,
                                                              tmp_path: Path) -> None:
    part = zbundle / f"{W}.part000"
    part.write_bytes(part.read_bytes()[:-7])
    with pytest.raises(IntegrityError) as exc:
        stage_bundle(zbundle, tmp_path / "st", trust)
    assert exc.value.rule == "size" and exc.value.exit_code == 13
    with pytest.raises(IntegrityError):
        verify_bundle(zbundle, trust)


def test_signed_frame_that_decodes_to_wrong_bytes_is_refused(zbundle: Path, keys: Keys, trust: Trust,
                                                             tmp_path: Path) -> None:
    """A buggy (or hostile) builder: frame 1 replaced by a valid frame of other bytes, its hash, the
    part hashes and the stored hash all signed. Staging still refuses: block 1 decodes to bytes that
    are not the signed block."""
    m = parse_manifest((zbundle / MANIFEST_NAME).read_bytes())
    e = m.files[W]
    assert e.coding is not None and len(e.parts) > 1
    stored = b"".join((zbundle / f"{W}.part{i:03d}").read_bytes() for i in range(len(e.parts)))
    offsets = np.cumsum([0] + [f.size for f in e.coding.frames])
    wrong = encode_block(bytes(BLOCK), [Segment(0, BLOCK)], 0)  # zeros: a valid frame, the wrong block
    stored = stored[:offsets[1]] + wrong + stored[offsets[2]:]
    frames = list(e.coding.frames)
    frames[1] = PartEntry(len(wrong), hashlib.sha256(wrong).hexdigest())
    e.coding = Coding(e.coding.codec, len(stored), hashlib.sha256(stored).hexdigest(), frames)
    for p in zbundle.glob("models/minilm/1.0.0/model.safetensors.part*"):
        p.unlink()
    parts: list[PartEntry] = []
    for i in range(0, len(stored), SPLIT):
        piece = stored[i:i + SPLIT]
        (zbundle / f"{W}.part{len(parts):03d}").write_bytes(piece)
        parts.append(PartEntry(len(piece), hashlib.sha256(piece).hexdigest()))
    e.parts = parts
    data = canonical_bytes(m)
    (zbundle / MANIFEST_NAME).write_bytes(data)
    (zbundle / SIGNATURE_NAME).write_bytes(keys.sign(data, "signer"))
    verify_bundle(zbundle, trust)  # the stored bytes are what was signed
    with pytest.raises(IntegrityError) as exc:
        stage_bundle(zbundle, tmp_path / "st", trust)
    assert exc.value.rule == "block-hash" and "block 1 " in str(exc.value) and exc.value.exit_code == 13
    assert not (tmp_path / "st" / W).exists()


def test_coding_needs_format_version_2_and_one_frame_per_block(built: tuple[Path, Path]) -> None:
    doc = _manifest(built[1])
    v1 = dict(doc, format_version=1)
    with pytest.raises(ManifestError, match="format_version 2"):
        parse_manifest(json.dumps(v1).encode())
    short = json.loads(json.dumps(doc))
    short["files"][W]["coding"]["frames"].pop()
    with pytest.raises(ManifestError, match="frames for"):
        parse_manifest(json.dumps(short).encode())
    future = dict(doc, format_version=3)
    with pytest.raises(ManifestError) as exc:
        parse_manifest(json.dumps(future).encode())
    assert exc.value.rule == "manifest-version"


def test_packed_compressed_bundle_verifies_and_stages(built: tuple[Path, Path], trust: Trust,
                                                      tmp_path: Path) -> None:
    tar = tmp_path / "z.tar"
    pack_bundle(built[1], tar, trust)
    assert tar.stat().st_size < 0.8 * _stored_bytes(built[0])
    verify_archive(tar, trust)
    staged = stage_archive(tar, tmp_path / "st", trust)
    for rel, data in MODEL.items():
        assert (staged.path / "models/minilm/1.0.0" / rel).read_bytes() == data


def test_packed_compressed_bundle_with_a_flipped_frame_byte_is_refused_mid_stream(
        built: tuple[Path, Path], trust: Trust, tmp_path: Path) -> None:
    """Frames of a packed bundle are checked and decoded on worker threads while later frames stream
    in: a flipped byte in a later frame still fails the stage (exit 13, block-hash, naming the frame's
    block), no decoder sees it, and only the verified blocks before it reached the disk (the stage is
    left incomplete: not marked complete, so nothing installs from it)."""
    tar = tmp_path / "z.tar"
    pack_bundle(built[1], tar, trust)
    m = parse_manifest((built[1] / MANIFEST_NAME).read_bytes())
    coding = m.files[W].coding
    assert coding is not None and len(coding.frames) > 3
    stored = b"".join((built[1] / f"{W}.part{i:03d}").read_bytes() for i in range(len(m.files[W].parts)))
    at = sum(f.size for f in coding.frames[:3]) + coding.frames[3].size // 2  # inside frame 3
    data = bytearray(tar.read_bytes())
    where = data.find(stored[at - 200:at + 200])
    assert where > 0
    data[where + 200] ^= 0x10
    tar.write_bytes(bytes(data))
    with pytest.raises(IntegrityError) as exc:
        stage_archive(tar, tmp_path / "st", trust)
    assert exc.value.rule == "block-hash" and "coded block 3 " in str(exc.value) and exc.value.exit_code == 13
    assert (tmp_path / "st" / W).read_bytes() == MODEL["model.safetensors"][:3 * m.files[W].block_size]
    assert not (tmp_path / "st" / COMPLETE_MARKER).exists()


def test_the_codec_imports_on_its_own() -> None:
    """airlock.codec.stored imports airlock.bundle, which imports it back (by module)."""
    r = subprocess.run([sys.executable, "-c", "import airlock.codec.stored"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
