"""The encrypted file format: round trips, random access, every tamper class, wrong keys."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airlock.crypto import (
    EncryptedFormatError,
    KeyProviderError,
    ProviderRegistry,
    WrongKeyError,
    decrypt_file,
    decrypt_stream,
    encrypt_file,
    encrypt_stream,
    is_encrypted,
    open_decrypted,
    plaintext_sha256,
    read_encrypted_header,
)
from airlock.crypto.format import TAG_LEN, KeySlot
from tests.crypto.conftest import KeyEnv

CHUNK = 4096


def _encrypt_bytes(
    env: KeyEnv, data: bytes, key_id: str = "k1", chunk: int = CHUNK, workers: int = 2
) -> bytes:
    out = io.BytesIO()
    encrypt_stream(io.BytesIO(data), out, env.registry.get("dev"), key_id, chunk_size=chunk, workers=workers)
    return out.getvalue()


def _decrypt_bytes(env: KeyEnv, blob: bytes, workers: int = 2) -> bytes:
    out = io.BytesIO()
    decrypt_stream(io.BytesIO(blob), out, env.registry, workers=workers)
    return out.getvalue()


def _chunk_span(blob: bytes, index: int, chunk: int = CHUNK) -> slice:
    hdr = read_header_bytes(blob)
    start = hdr.fixed.chunk_offset(index)
    return slice(start, start + hdr.fixed.chunk_plain_len(index) + TAG_LEN)


def read_header_bytes(blob: bytes):  # type: ignore[no-untyped-def]
    from airlock.crypto.format import parse_header

    return parse_header(blob[: 64 << 10])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.binary(max_size=5 * CHUNK + 17),
    chunk=st.sampled_from([CHUNK, 5000]),
    workers=st.sampled_from([1, 2]),
)
def test_round_trip_property(keyfile_env: KeyEnv, data: bytes, chunk: int, workers: int) -> None:
    blob = _encrypt_bytes(keyfile_env, data, chunk=chunk, workers=workers)
    hdr = read_header_bytes(blob)
    assert len(blob) == hdr.fixed.encrypted_size
    assert hdr.plaintext_size == len(data) and hdr.provider == "dev" and hdr.key_id == "k1"
    assert _decrypt_bytes(keyfile_env, blob, workers=3 - workers) == data
    if len(data) >= 64:
        assert data[:64] not in blob  # no plaintext leaks into the ciphertext


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_access_matches_slices(keyfile_env: KeyEnv, tmp_path: Path, data: st.DataObject) -> None:
    payload = hashlib.sha256(b"seed").digest() * 700  # 22400 bytes, 6 chunks
    path = tmp_path / "ra.enc"
    if not path.exists():
        path.write_bytes(_encrypt_bytes(keyfile_env, payload))
    offset = data.draw(st.integers(0, len(payload) + 10))
    length = data.draw(st.integers(0, 3 * CHUNK))
    with open_decrypted(path, keyfile_env.registry) as reader:
        assert reader.read_range(offset, length) == payload[offset : offset + length]
        reader.seek(-5, io.SEEK_END)
        assert reader.read() == payload[-5:]


def test_random_access_decrypts_only_covering_chunks(keyfile_env: KeyEnv, tmp_path: Path) -> None:
    payload = os.urandom(10 * CHUNK)
    blob = bytearray(_encrypt_bytes(keyfile_env, payload))
    blob[_chunk_span(bytes(blob), 8).start + 3] ^= 0x40  # chunk 8 is bad; chunks 0-7 and 9 are fine
    path = tmp_path / "partial.enc"
    path.write_bytes(blob)
    with open_decrypted(path, keyfile_env.registry) as reader:
        assert reader.read_range(CHUNK + 100, 3 * CHUNK) == payload[CHUNK + 100 : 4 * CHUNK + 100]
        assert reader.read_range(9 * CHUNK, CHUNK) == payload[9 * CHUNK :]
        with pytest.raises(EncryptedFormatError, match="chunk 8 fails authentication"):
            reader.read_range(8 * CHUNK + 10, 1)


def test_file_api_and_is_encrypted(keyfile_env: KeyEnv, tmp_path: Path) -> None:
    src = tmp_path / "plain.bin"
    src.write_bytes(os.urandom(3 * CHUNK + 1))
    enc, dec = tmp_path / "x.enc", tmp_path / "x.out"
    hdr = encrypt_file(src, enc, keyfile_env.registry.get("dev"), "k2", chunk_size=CHUNK)
    assert is_encrypted(enc) and not is_encrypted(src) and not is_encrypted(tmp_path)
    assert os.stat(enc).st_mode & 0o777 == 0o600
    assert read_encrypted_header(enc).key_id == "k2" == hdr.key_id
    decrypt_file(enc, dec, keyfile_env.registry)
    assert dec.read_bytes() == src.read_bytes()
    assert plaintext_sha256(enc, keyfile_env.registry) == (
        src.stat().st_size,
        hashlib.sha256(src.read_bytes()).hexdigest(),
    )
    assert sorted(p.name for p in tmp_path.iterdir() if "airlock-tmp" in p.name) == []


def test_streaming_memory_is_bounded(keyfile_env: KeyEnv, tmp_path: Path) -> None:
    """16 MiB through 256 KiB chunks: peak Python allocation stays a few chunks, not the file."""
    src = tmp_path / "big.bin"
    with open(src, "wb") as f:
        for i in range(16):
            f.write(hashlib.sha256(bytes([i])).digest() * (1 << 15))
    chunk = 256 << 10
    tracemalloc.start()
    try:
        encrypt_file(src, tmp_path / "big.enc", keyfile_env.registry.get("dev"), "k1", chunk_size=chunk)
        _, peak_enc = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        decrypt_file(tmp_path / "big.enc", tmp_path / "big.out", keyfile_env.registry)
        _, peak_dec = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert max(peak_enc, peak_dec) < 12 * chunk, (peak_enc, peak_dec)
    assert (tmp_path / "big.out").read_bytes() == src.read_bytes()


# --- tampering: every class must be refused with a clear error ------------------------------------


@pytest.fixture
def two_files(keyfile_env: KeyEnv) -> tuple[bytes, bytes, bytes]:
    data = os.urandom(4 * CHUNK + 100)
    return data, _encrypt_bytes(keyfile_env, data), _encrypt_bytes(keyfile_env, os.urandom(4 * CHUNK + 100))


def _assert_refused(
    env: KeyEnv, blob: bytes, tmp_path: Path, match: str, exc: type[Exception] = EncryptedFormatError
) -> None:
    with pytest.raises(exc, match=match):
        _decrypt_bytes(env, blob)
    work = tmp_path / "refused"
    work.mkdir(exist_ok=True)
    enc, out = work / "t.enc", work / "t.out"
    enc.write_bytes(blob)
    with pytest.raises(exc, match=match):
        decrypt_file(enc, out, env.registry)
    assert not out.exists(), "a refused file must leave no output"
    assert [p.name for p in work.iterdir()] == ["t.enc"]
    enc.unlink()


@pytest.mark.parametrize(
    "field,offset",
    [
        ("magic", 0),
        ("version", 9),
        ("header_len", 11),
        ("cipher", 13),
        ("flags", 15),
        ("chunk_size", 18),
        ("plaintext_size", 23),
        ("nonce_prefix", 30),
        ("commitment", 40),
        ("slot_size", 70),
        ("reserved", 95),
    ],
)
def test_header_edit_detected(
    keyfile_env: KeyEnv, two_files: tuple[bytes, bytes, bytes], tmp_path: Path, field: str, offset: int
) -> None:
    blob = bytearray(two_files[1])
    blob[offset] ^= 0x01
    _assert_refused(
        keyfile_env,
        bytes(blob),
        tmp_path,
        match="magic|version|reserved|range|authentication|commitment|truncated|chunk|slot|identity|"
        "header length",
        exc=EncryptedFormatError,
    )


def test_chunk_swap_within_file(
    keyfile_env: KeyEnv, two_files: tuple[bytes, bytes, bytes], tmp_path: Path
) -> None:
    blob = bytearray(two_files[1])
    a, b = _chunk_span(bytes(blob), 1), _chunk_span(bytes(blob), 2)
    blob[a], blob[b] = bytes(blob[b]), bytes(blob[a])
    _assert_refused(keyfile_env, bytes(blob), tmp_path, match="chunk 1 fails authentication")


def test_chunk_reordering(keyfile_env: KeyEnv, two_files: tuple[bytes, bytes, bytes], tmp_path: Path) -> None:
    blob = two_files[1]
    spans = [_chunk_span(blob, i) for i in range(4)]
    head = blob[: spans[0].start]
    reordered = (
        head + blob[spans[0]] + blob[spans[2]] + blob[spans[3]] + blob[spans[1]] + blob[_chunk_span(blob, 4)]
    )
    _assert_refused(keyfile_env, reordered, tmp_path, match="chunk 1 fails authentication")


def test_chunk_swap_between_files(
    keyfile_env: KeyEnv, two_files: tuple[bytes, bytes, bytes], tmp_path: Path
) -> None:
    _, one, other = two_files
    blob = bytearray(one)
    span = _chunk_span(one, 2)
    blob[span] = other[span]
    _assert_refused(keyfile_env, bytes(blob), tmp_path, match="chunk 2 fails authentication")


def test_truncation_at_chunk_boundary(
    keyfile_env: KeyEnv, two_files: tuple[bytes, bytes, bytes], tmp_path: Path
) -> None:
    blob = two_files[1]
    cut = blob[: _chunk_span(blob, 4).start]  # drop the final chunk exactly at a boundary
    _assert_refused(keyfile_env, cut, tmp_path, match="truncated|chunk 4")


def test_final_flag_removal_via_size_edit(
    keyfile_env: KeyEnv, two_files: tuple[bytes, bytes, bytes], tmp_path: Path
) -> None:
    """Truncate to 4 full chunks and rewrite the plaintext size so chunk 3 *looks* final: the header
    is AAD and chunk 3 was sealed with final=0, so this fails."""
    blob = bytearray(two_files[1][: _chunk_span(two_files[1], 4).start])
    struct.pack_into(">Q", blob, 20, 4 * CHUNK)
    _assert_refused(keyfile_env, bytes(blob), tmp_path, match="chunk 0 fails authentication|fails its MAC")


def test_appended_chunk_and_trailing_bytes(
    keyfile_env: KeyEnv, two_files: tuple[bytes, bytes, bytes], tmp_path: Path
) -> None:
    blob = two_files[1]
    _assert_refused(keyfile_env, blob + blob[_chunk_span(blob, 1)], tmp_path, match="trailing")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pos=st.integers(min_value=0), bit=st.integers(0, 7))
def test_bit_flip_in_chunks_detected(keyfile_env: KeyEnv, pos: int, bit: int) -> None:
    data = bytes(range(256)) * 40
    blob = bytearray(_encrypt_bytes(keyfile_env, data))
    start = read_header_bytes(bytes(blob)).fixed.data_offset
    pos = start + pos % (len(blob) - start)
    blob[pos] ^= 1 << bit
    with pytest.raises(EncryptedFormatError, match="fails authentication"):
        _decrypt_bytes(keyfile_env, bytes(blob))


def test_corrupt_key_slot_falls_back_or_fails(
    keyfile_env: KeyEnv, two_files: tuple[bytes, bytes, bytes], tmp_path: Path
) -> None:
    blob = bytearray(two_files[1])
    # slot A (the only valid one) torn -> no valid slot
    blob[read_header_bytes(two_files[1]).fixed.slot_offset(0) + 20] ^= 0xFF
    _assert_refused(keyfile_env, bytes(blob), tmp_path, match="no valid key slot")


# --- keys: wrong key, substituted key, refused development keys ------------------------------------


def _replace_slot(blob: bytes, slot: KeySlot) -> bytes:
    out = bytearray(blob)
    at = read_header_bytes(blob).fixed.slot_offset(0)
    out[at : at + 1024] = slot.pack(1024)
    return bytes(out)


def test_wrong_key_refused(
    keyfile_env: KeyEnv, two_files: tuple[bytes, bytes, bytes], tmp_path: Path
) -> None:
    hdr = read_header_bytes(two_files[1])
    forged = _replace_slot(two_files[1], KeySlot(1, "dev", "k2", hdr.active.wrapped, bytes(32)))  # claims k2
    _assert_refused(keyfile_env, forged, tmp_path, match="does not unwrap", exc=WrongKeyError)


def test_key_substitution_refused_by_commitment(
    keyfile_env: KeyEnv, two_files: tuple[bytes, bytes, bytes], tmp_path: Path
) -> None:
    """A validly wrapped *other* data key (copied from another file's slot) unwraps fine but fails
    the key commitment before any chunk is decrypted."""
    other_slot = read_header_bytes(two_files[2]).active
    forged = _replace_slot(two_files[1], other_slot)
    _assert_refused(keyfile_env, forged, tmp_path, match="key commitment")


def test_provider_mismatch_and_unknown_provider(
    keyfile_env: KeyEnv, two_files: tuple[bytes, bytes, bytes], tmp_path: Path
) -> None:
    forged = _replace_slot(two_files[1], KeySlot(1, "nosuch", "k1", b"x" * 40, bytes(32)))
    _assert_refused(
        keyfile_env, forged, tmp_path, match="no key provider named 'nosuch'", exc=KeyProviderError
    )


def test_keyfile_provider_refuses_unsafe_setups(tmp_path: Path, keyfile_env: KeyEnv) -> None:
    with pytest.raises(KeyProviderError, match="development only"):
        ProviderRegistry({"providers": {"d": {"type": "keyfile", "dir": str(tmp_path)}}}).get("d")
    kek = keyfile_env.keydir / "k1.kek"
    os.chmod(kek, 0o644)
    src = tmp_path / "p"
    src.write_bytes(b"hello")
    with pytest.raises(KeyProviderError, match="mode 0600"):
        encrypt_file(src, tmp_path / "p.enc", keyfile_env.registry.get("dev"), "k1")
    assert not (tmp_path / "p.enc").exists()
    with pytest.raises(KeyProviderError, match="invalid key id"):
        keyfile_env.registry.get("dev").wrap("../etc/passwd", b"\0" * 32)
