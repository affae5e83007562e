"""Staging compressed bundles in one pipeline across files, written past the page cache (issue 18):
``fsutil.BlockWriter`` writes verified blocks with O_DIRECT where the file system allows it and through
the page cache where it does not (the same bytes either way); a bad frame in the middle file of a
model stops there, keeping only verified blocks, and a resume copies only what is missing."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import yaml

from airlock.buffers import BUFFERS, extent
from airlock.bundle import stage_bundle
from airlock.bundle.manifest import MANIFEST_NAME
from airlock.bundle.signing import Trust
from airlock.bundle.spec import load_spec
from airlock.errors import IntegrityError
from airlock.fsutil import DIRECT_ALIGN, BlockWriter
from airlock.hashing import CODED_BLOCK_SIZE, DEFAULT_BLOCK_SIZE
from airlock.safetensors_io import build_header
from tests.bundle.conftest import BundleFactory, Keys
from tests.support import flip_byte, resident_bytes

BLOCK = 2 << 20  # pooled (page-aligned) block buffers start at 1 MiB
SHARD_ELEMENTS = (2 * BLOCK + 3 * BLOCK // 4) // 2  # bf16: 2.75 blocks a shard, a short last block
SHARDS = [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
VERSION_DIR = "models/minilm/1.0.0"


def _fs_type(path: Path) -> str:
    out = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def _direct_expected(path: Path) -> bool:
    """ext4 (shown as ext2/ext3), xfs and btrfs take O_DIRECT; tmpfs only on newer kernels."""
    return _fs_type(path) in ("ext2/ext3", "xfs", "btrfs")


def _shard(seed: int) -> bytes:
    x = np.random.default_rng(seed).standard_normal(SHARD_ELEMENTS).astype(np.float32) * 0.02
    header = build_header([(f"layer{seed}.weight", "BF16", [SHARD_ELEMENTS])])
    return header + x.astype(ml_dtypes.bfloat16).tobytes()


MODEL = {name: _shard(i) for i, name in enumerate(SHARDS)} | {"config.json": b'{"hidden": 8}\n'}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> dict[str, Path]:
    factory = BundleFactory(keys, tmp_path_factory.mktemp("direct"))
    # one stored file per payload (no FAT32 parts): the tests find frames by offset
    return {kind: factory.build(f"bundle-{kind}", model_files=MODEL, block_size=BLOCK, split_size=1 << 30,
                                compress=kind == "compressed") for kind in ("compressed", "raw")}


@pytest.fixture
def zbundle(bundles: dict[str, Path]) -> Path:
    return bundles["compressed"]


@pytest.mark.parametrize("where", ["tmp_path", "/dev/shm"])
def test_block_writer_writes_the_same_bytes_direct_or_through_the_cache(where: str, tmp_path: Path) -> None:
    root = tmp_path if where == "tmp_path" else Path(where)
    path = root / f"airlock-blockwriter-{os.getpid()}.bin"
    want = np.random.default_rng(3).integers(0, 256, 3 * BLOCK + 5000, dtype=np.uint8)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        with BlockWriter(fd) as w:
            if _direct_expected(root):
                assert w.direct, f"O_DIRECT not taken on {_fs_type(root)}"
            for i in range(3):  # pooled, page-aligned buffers: direct where the file system allows it
                buf = BUFFERS.get(BLOCK, BLOCK)
                buf[:] = want[i * BLOCK:(i + 1) * BLOCK]
                assert buf.ctypes.data % DIRECT_ALIGN == 0
                w.write_block(buf.data, BLOCK, i * BLOCK)
            tail = bytearray(b"x" + want[3 * BLOCK:].tobytes())  # not on a page: through the cache
            w.write_block(memoryview(tail)[1:], 5000, 3 * BLOCK)
        os.ftruncate(fd, len(want))
        os.close(fd)
        if _direct_expected(root):  # the direct blocks never went through the page cache
            assert resident_bytes(path) <= 5000 + 2 * DIRECT_ALIGN
        assert path.read_bytes() == want.tobytes()
    finally:
        path.unlink(missing_ok=True)


def test_short_last_block_is_padded_for_a_direct_write_and_cut_to_size(tmp_path: Path) -> None:
    path = tmp_path / "short.bin"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    buf = BUFFERS.get(BLOCK - 100, BLOCK)  # a short last block in a block-sized buffer
    buf[:] = 7
    with BlockWriter(fd) as w:
        w.write_block(extent(buf), BLOCK - 100, 0)  # the buffer's spare room allows the pad
        direct = w.direct
    size = os.fstat(fd).st_size
    os.ftruncate(fd, BLOCK - 100)
    os.close(fd)
    assert size == (BLOCK if direct else BLOCK - 100)  # padded to the alignment, with zeros
    assert path.read_bytes() == bytes([7]) * (BLOCK - 100)


@pytest.mark.parametrize("kind", ["compressed", "raw"])
def test_staged_model_is_the_model_and_bypassed_the_page_cache(bundles: dict[str, Path], kind: str,
                                                              trust: Trust, tmp_path: Path) -> None:
    staged = stage_bundle(bundles[kind], tmp_path / "st", trust)
    blocks = sum(-(-len(d) // BLOCK) for d in MODEL.values())
    assert staged.counters.blocks_copied == blocks and staged.counters.files_copied == len(MODEL)
    for name in SHARDS:
        path = staged.path / VERSION_DIR / name
        if _direct_expected(tmp_path):  # every block was written with O_DIRECT: none is cached
            assert resident_bytes(path) == 0, name
        assert path.read_bytes() == MODEL[name]
        assert oct(path.stat().st_mode & 0o777) == "0o400"


def test_bad_frame_in_the_middle_file_stops_there_and_resume_copies_only_the_rest(
        zbundle: Path, trust: Trust, tmp_path: Path) -> None:
    bundle = tmp_path / "z"
    shutil.copytree(zbundle, bundle)
    middle = f"{VERSION_DIR}/{SHARDS[1]}"
    files = json.loads((bundle / MANIFEST_NAME).read_bytes())["files"]
    frames = files[middle]["coding"]["frames"]
    before = list(files)[:list(files).index(middle)]  # staged in manifest order
    assert f"{VERSION_DIR}/{SHARDS[0]}" in before and f"{VERSION_DIR}/{SHARDS[2]}" not in before
    good = (bundle / middle).read_bytes()
    flip_byte(bundle / middle, frames[0]["size"] + frames[1]["size"] // 2)  # inside frame 1
    st = tmp_path / "st"
    with pytest.raises(IntegrityError) as exc:
        stage_bundle(bundle, st, trust)
    assert exc.value.rule == "block-hash" and exc.value.exit_code == 13
    assert exc.value.path == middle and "coded block 1 " in str(exc.value)
    first = st / VERSION_DIR / SHARDS[0]
    assert first.read_bytes() == MODEL[SHARDS[0]]  # the file before it: staged and sealed
    partial = st / f"{middle}.airlock-partial"
    assert not (st / middle).exists()
    assert partial.read_bytes() == MODEL[SHARDS[1]][:BLOCK]  # exactly its one verified block
    assert not (st / VERSION_DIR / SHARDS[2]).exists()  # the file after it: not staged
    later = st / f"{VERSION_DIR}/{SHARDS[2]}.airlock-partial"
    assert not later.exists() or later.stat().st_size == 0

    (bundle / middle).chmod(0o644)
    (bundle / middle).write_bytes(good)  # a good copy of the stick
    again = stage_bundle(bundle, st, trust)
    kept = sum(len(files[rel]["blocks"]) for rel in before) + 1  # and the middle file's verified block
    assert again.counters.blocks_reused == kept
    assert again.counters.blocks_copied == sum(len(e["blocks"]) for e in files.values()) - kept
    for rel, data in MODEL.items():
        got = (st / VERSION_DIR / rel).read_bytes()
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest(), rel


def test_compressed_bundles_default_to_smaller_blocks(tmp_path: Path) -> None:
    spec = tmp_path / "b.yml"
    base = {"compatible": "x", "sequence": 1}
    spec.write_text(yaml.safe_dump({**base, "compress": True}))
    assert load_spec(spec).block_size == CODED_BLOCK_SIZE == 16 << 20
    assert load_spec(spec, block_size=1 << 20).block_size == 1 << 20  # --block-size wins
    spec.write_text(yaml.safe_dump({**base, "compress": True, "block_size": "32MiB"}))
    assert load_spec(spec).block_size == 32 << 20  # the spec's own wins
    spec.write_text(yaml.safe_dump(base))
    assert load_spec(spec).block_size == DEFAULT_BLOCK_SIZE  # raw bundles keep 64 MiB
    assert load_spec(spec, compress=True).block_size == CODED_BLOCK_SIZE  # --compress on a raw spec
