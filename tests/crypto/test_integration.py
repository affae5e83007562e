"""Encrypted model versions: a whole tree round-trips, and a delta update applied to an encrypted
source yields an encrypted v1.1 whose plaintext is byte-identical to the real v1.1 (and back)."""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest

from airlock.crypto import is_encrypted
from airlock.crypto.tree import apply_delta_encrypted, decrypt_tree, encrypt_tree
from airlock.errors import IntegrityError
from tests.crypto.conftest import KeyEnv


def _same_tree(a: Path, b: Path) -> bool:
    cmp = filecmp.dircmp(a, b)
    names = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    _match, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    return not mismatch and not errors and not cmp.diff_files


@pytest.fixture(scope="module")
def model_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    from airlock.delta import make_delta
    from airlock.fixtures.synthetic import generate_synthetic, make_variant

    d = tmp_path_factory.mktemp("pair")
    generate_synthetic(d / "v1", size_bytes=2_000_000, seed=3)
    make_variant(d / "v1", d / "v2", "partial")
    make_delta(d / "v1", d / "v2", d / "v1-v2.aldelta", from_version="1.0", to_version="1.1")
    return d / "v1", d / "v2", d / "v1-v2.aldelta"


def test_encrypted_delta_update_round_trips(
    all_env: KeyEnv, model_pair: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    v1, v2, delta = model_pair
    enc_v1 = tmp_path / "enc-1.0"
    hashes = encrypt_tree(v1, enc_v1, all_env.registry.get("hsm"), "kek-a", chunk_size=65536)
    assert all(is_encrypted(p) for p in enc_v1.rglob("*") if p.is_file())
    assert set(hashes) == {p.relative_to(v1).as_posix() for p in v1.rglob("*") if p.is_file()}

    enc_v2 = tmp_path / "enc-1.1"
    apply_delta_encrypted(enc_v1, delta, enc_v2, all_env.registry, all_env.registry.get("vault"), "t1")
    assert all(is_encrypted(p) for p in enc_v2.rglob("*") if p.is_file())
    decrypt_tree(enc_v2, tmp_path / "plain-1.1", all_env.registry)
    assert _same_tree(tmp_path / "plain-1.1", v2)

    back = tmp_path / "enc-1.0-again"
    apply_delta_encrypted(
        enc_v2, delta, back, all_env.registry, all_env.registry.get("dev"), "k1", reverse=True
    )
    decrypt_tree(back, tmp_path / "plain-1.0", all_env.registry)
    assert _same_tree(tmp_path / "plain-1.0", v1)
    assert not list(Path("/dev/shm").glob("airlock-plain-*"))  # plaintext workspace removed


def test_wrong_expected_hashes_leave_no_output(
    keyfile_env: KeyEnv, model_pair: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    v1 = model_pair[0]
    with pytest.raises(IntegrityError, match="expected hashes"):
        encrypt_tree(v1, tmp_path / "out", keyfile_env.registry.get("dev"), "k1", expect={"x": (1, "0" * 64)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dev-keys", "keys.yaml"]  # no output, no staging


def test_tensors_read_through_decrypting_reader(
    keyfile_env: KeyEnv, model_pair: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """Serving path for in-engine readers: header and tensors from an encrypted shard, plaintext only in
    memory, equal to what the safetensors library loads from the plaintext file."""
    import struct

    import numpy as np
    from safetensors import safe_open

    from airlock.crypto import open_decrypted
    from airlock.safetensors_io import parse_header

    shard = sorted(model_pair[0].glob("*.safetensors"))[0]
    enc = tmp_path / "shard.enc"
    from airlock.crypto import encrypt_file

    encrypt_file(shard, enc, keyfile_env.registry.get("dev"), "k1", chunk_size=16384)
    with open_decrypted(enc, keyfile_env.registry) as reader:
        (n,) = struct.unpack("<Q", reader.read(8))
        tensors, _meta = parse_header(reader.read(n), reader.size - 8 - n, str(enc))
        checked = 0
        for t in tensors:
            if t.dtype not in ("F32", "F16", "I64", "I32"):
                continue
            raw = reader.read_range(8 + n + t.start, t.nbytes)
            arr = np.frombuffer(raw, dtype={"F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4"}[t.dtype])
            with safe_open(str(shard), framework="np") as plain:
                assert np.array_equal(arr.reshape(t.shape), plain.get_tensor(t.name))
            checked += 1
    assert checked > 0
