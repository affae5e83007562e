"""Streaming encrypt/decrypt with bounded memory: chunks flow through a small thread pool (AES-GCM in
``cryptography`` releases the GIL) with at most ``2 * workers`` chunks in flight, written in order."""

from __future__ import annotations

import functools
import hashlib
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, cast

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from airlock.crypto.errors import EncryptedFormatError, KeyProviderError, WrongKeyError
from airlock.crypto.format import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_SLOT_SIZE,
    FIXED_HEADER_LEN,
    FORMAT_VERSION,
    KEY_LEN,
    MAX_CHUNK_SIZE,
    MAX_CHUNKS,
    MIN_CHUNK_SIZE,
    NONCE_PREFIX_LEN,
    TAG_LEN,
    EncryptedHeader,
    FileIdentity,
    FixedHeader,
    KeySlot,
    check_commitment,
    chunk_aad,
    chunk_nonce,
    key_commitment,
    parse_header,
)
from airlock.crypto.providers import KeyProvider, ProviderRegistry
from airlock.crypto.workspace import FILE_TMP_TAG
from airlock.errors import IntegrityError
from airlock.faults import fault_point
from airlock.fsutil import fsync_dir
from airlock.parallel import ordered_map

# Measured (benchmarks/crypto.py, docs/security.md): AES-GCM calls in `cryptography` get ~5x slower
# when two threads share them, yet a second thread pays for file encryption (it overlaps reading the
# next chunk with sealing this one: ~1.2x); for decryption one thread is fastest.
ENCRYPT_WORKERS = 2
DECRYPT_WORKERS = 1
DEFAULT_WORKERS = DECRYPT_WORKERS
Progress = Callable[[int], None]
KeySource = KeyProvider | ProviderRegistry



class HashingWriter:
    """Writes through to ``out`` while hashing (sha256) and counting what was written: the plaintext a
    decrypt hands out is checked against the catalog's hash without a second read."""

    def __init__(self, out: BinaryIO) -> None:
        self.out, self.hash, self.size = out, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self.out.write(data)

def _read_exact(src: BinaryIO, n: int) -> bytes:
    parts: list[bytes] = []
    while n > 0:
        block = src.read(n)
        if not block:
            break
        parts.append(block)
        n -= len(block)
    return b"".join(parts)


def _ordered(jobs: Iterator[Callable[[], bytes]], workers: int) -> Iterator[bytes]:
    """Run jobs on a pool, yield results in submission order, keep at most 2*workers pending."""
    return ordered_map(_call, jobs, workers, window=2 * workers)


def _call(job: Callable[[], bytes]) -> bytes:
    return job()


def _source_size(src: BinaryIO) -> int:
    try:
        return os.fstat(src.fileno()).st_size - src.tell()
    except (OSError, AttributeError, ValueError):
        pos = src.tell()
        end = src.seek(0, os.SEEK_END)
        src.seek(pos)
        return end - pos


def encrypt_stream(
    src: BinaryIO,
    dst: BinaryIO,
    key_provider: KeyProvider,
    key_id: str,
    *,
    plaintext_size: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    slot_size: int = DEFAULT_SLOT_SIZE,
    workers: int = ENCRYPT_WORKERS,
    progress: Progress | None = None,
    identity: FileIdentity | None = None,
    version: int = FORMAT_VERSION,
) -> EncryptedHeader:
    """Encrypt ``src`` (from its current position to its end, or exactly ``plaintext_size`` bytes)
    into ``dst`` under a fresh data key wrapped by ``key_provider``/``key_id``; returns the header.
    ``identity`` (model, relative path) is bound into the header (format version 2; ``version=1``
    writes the old format, for compatibility tests)."""
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise EncryptedFormatError(f"chunk size must be in [{MIN_CHUNK_SIZE}, {MAX_CHUNK_SIZE}]")
    size = _source_size(src) if plaintext_size is None else plaintext_size
    data_key = bytearray(AESGCM.generate_key(bit_length=256))
    try:
        nonce_prefix = secrets.token_bytes(NONCE_PREFIX_LEN)
        ident = (identity or FileIdentity("", "")).pack() if version >= 2 else None
        commitment = key_commitment(bytes(data_key), nonce_prefix, ident)
        fixed = FixedHeader(chunk_size, size, nonce_prefix, commitment, slot_size, version,
                            header_len=FIXED_HEADER_LEN + len(ident or b""))
        if fixed.chunk_count > MAX_CHUNKS:
            raise EncryptedFormatError("plaintext too large for this chunk size (2^32 chunks)")
        raw_fixed = fixed.pack() + (ident or b"")
        slot = KeySlot(1, key_provider.name, key_id, key_provider.wrap(key_id, bytes(data_key)))
        check_wrap(key_provider, key_id, slot.wrapped, data_key)
        if version >= 2:
            slot = slot.sealed(bytes(data_key), raw_fixed)
        aead = AESGCM(bytes(data_key))
    finally:
        data_key[:] = bytes(len(data_key))
    dst.write(raw_fixed + slot.pack(slot_size) + bytes(slot_size))
    count = fixed.chunk_count

    def jobs() -> Iterator[Callable[[], bytes]]:
        for index in range(count):
            want = fixed.chunk_plain_len(index)
            plain = _read_exact(src, want)
            if len(plain) != want:
                raise EncryptedFormatError(
                    f"source ended after {index * chunk_size + len(plain)} of {size} "
                    "bytes (changed while reading?)"
                )
            nonce, aad = chunk_nonce(nonce_prefix, index), chunk_aad(raw_fixed, index, index == count - 1)
            yield functools.partial(aead.encrypt, nonce, plain, aad)

    for index, sealed in enumerate(_ordered(jobs(), workers)):
        dst.write(sealed)
        if progress:
            progress(len(sealed) - TAG_LEN)
        if index == 0:
            fault_point("crypto.encrypt.mid-stream")
    if src.read(1):
        raise EncryptedFormatError(
            f"source is longer than the declared {size} bytes (changed while reading?)"
        )
    return EncryptedHeader(fixed, raw_fixed, (slot, None), 0, identity if version >= 2 else None)


def check_wrap(provider: KeyProvider, key_id: str, wrapped: bytes, data_key: bytes | bytearray) -> None:
    """After wrapping: the KEK unwraps the slot back to the same data key (a KEK that can wrap but
    not unwrap, e.g. a PKCS#11 key without CKA_UNWRAP, is refused before anything is written)."""
    back = bytearray(provider.unwrap(key_id, wrapped))
    try:
        if back != data_key:
            raise KeyProviderError(f"{provider.name}: key {key_id!r} does not unwrap what it wrapped; "
                                   "refusing to store data under it")
    finally:
        back[:] = bytes(len(back))


def check_identity(header: EncryptedHeader, expected: FileIdentity | None, path: str | None = None) -> None:
    """Refuse a version-2 file whose bound identity is not ``expected`` (a ciphertext moved or
    swapped into another file's place). Version-1 files carry no identity: callers compare
    plaintext hashes with the catalog instead."""
    if expected is None or header.identity is None:
        return
    if header.identity != expected:
        raise EncryptedFormatError(
            f"encrypted file belongs to {header.identity}, not {expected} (moved or swapped ciphertext)",
            path=path,
        )


def read_header(src: BinaryIO, path: str | None = None) -> EncryptedHeader:
    """Read and parse the header at the start of ``src`` (leaves the position after the key slots)."""
    head = _read_exact(src, FIXED_HEADER_LEN)
    fixed = FixedHeader.unpack(head, path)
    rest = _read_exact(src, fixed.data_offset - FIXED_HEADER_LEN)
    return parse_header(head + rest, path)


def unwrap_data_key(header: EncryptedHeader, keys: KeySource, path: str | None = None) -> bytes:
    """Unwrap the active slot's data key and check it against the authenticated key commitment."""
    slot = header.active
    provider = keys.get(slot.provider) if isinstance(keys, ProviderRegistry) else keys
    if provider.name != slot.provider:
        raise WrongKeyError(
            f"file is wrapped by provider {slot.provider!r}, not {provider.name!r}", path=path
        )
    data_key = provider.unwrap(slot.key_id, slot.wrapped)
    if len(data_key) != KEY_LEN or not check_commitment(data_key, header.fixed, header.raw_fixed):
        # The KEK opened the slot, so this is not a wrong key: the header or the slot was tampered with.
        raise EncryptedFormatError(
            f"data key from {slot.provider}:{slot.key_id} fails the key commitment "
            "(header edited or key slot substituted)",
            path=path,
        )
    if header.fixed.version >= 2 and not slot.mac_ok(data_key, header.raw_fixed):
        raise EncryptedFormatError(
            f"key slot {header.active_index} ({slot.provider}:{slot.key_id}, generation {slot.generation}) "
            "fails its MAC (slot edited, relabelled or restored from another copy)",
            path=path,
        )
    return data_key


def aead_for(data_key: bytes) -> AESGCM:
    """The cipher for a data key; the key copy handed in is overwritten where Python allows."""
    buf = bytearray(data_key)
    try:
        return AESGCM(bytes(buf))
    finally:
        buf[:] = bytes(len(buf))


def decrypt_chunk(
    aead: AESGCM, header: EncryptedHeader, index: int, sealed: bytes, path: str | None = None
) -> bytes:
    fixed = header.fixed
    if len(sealed) != fixed.chunk_plain_len(index) + TAG_LEN:
        raise EncryptedFormatError(f"chunk {index} is truncated ({len(sealed)} bytes)", path=path)
    final = index == fixed.chunk_count - 1
    try:
        return aead.decrypt(
            chunk_nonce(fixed.nonce_prefix, index), sealed, chunk_aad(header.raw_fixed, index, final)
        )
    except InvalidTag:
        raise EncryptedFormatError(
            f"chunk {index} fails authentication (tampered, reordered, swapped, truncated or header edited)",
            path=path,
        ) from None


def decrypt_stream(
    src: BinaryIO,
    dst: BinaryIO,
    keys: KeySource,
    *,
    workers: int = DEFAULT_WORKERS,
    path: str | None = None,
    progress: Progress | None = None,
    identity: FileIdentity | None = None,
) -> EncryptedHeader:
    """Decrypt all of ``src`` into ``dst`` (refused before any output when ``identity`` is given and
    the file is bound to another). Chunks are verified before they are written, but a later
    chunk can still fail: callers writing to a file use ``decrypt_file`` (temp + rename)."""
    header = read_header(src, path)
    check_identity(header, identity, path)
    aead = aead_for(unwrap_data_key(header, keys, path))
    fixed = header.fixed

    def jobs() -> Iterator[Callable[[], bytes]]:
        for index in range(fixed.chunk_count):
            sealed = _read_exact(src, fixed.chunk_plain_len(index) + TAG_LEN)
            yield functools.partial(decrypt_chunk, aead, header, index, sealed, path)

    for plain in _ordered(jobs(), workers):
        dst.write(plain)
        if progress:
            progress(len(plain))
    if src.read(1):
        raise EncryptedFormatError("trailing bytes after the final chunk", path=path)
    return header


def encrypt_file(
    src: Path, dst: Path, key_provider: KeyProvider, key_id: str, **kw: object
) -> EncryptedHeader:
    """Encrypt a file; ``dst`` appears (atomically, fsynced, mode 0600) only when complete."""
    return _atomic(dst, lambda out: _encrypt_from(src, out, key_provider, key_id, kw))


def decrypt_file(src: Path, dst: Path, keys: KeySource, *, expect: tuple[int, str] | None = None,
                 **kw: object) -> EncryptedHeader:
    """Decrypt a file; ``dst`` appears only when every chunk verified (nothing left on failure) and,
    with ``expect`` (size, sha256: the catalog's), the plaintext is exactly that."""

    def run(out: BinaryIO) -> EncryptedHeader:
        sink = HashingWriter(out)
        with open(src, "rb") as f:
            header = decrypt_stream(f, cast(BinaryIO, sink), keys, path=str(src), **kw)  # type: ignore[arg-type]
        if expect is not None and (sink.size, sink.hash.hexdigest()) != expect:
            raise IntegrityError("plaintext differs from the recorded hash (catalog): an older or other "
                                 "file's ciphertext in this place; refusing to hand it out", path=str(src),
                                 rule="plaintext-hash")
        return header

    return _atomic(dst, run)


def _encrypt_from(
    src: Path, out: BinaryIO, provider: KeyProvider, key_id: str, kw: dict[str, object]
) -> EncryptedHeader:
    with open(src, "rb") as f:
        return encrypt_stream(f, out, provider, key_id, **kw)  # type: ignore[arg-type]


def _atomic(dst: Path, body: Callable[[BinaryIO], EncryptedHeader]) -> EncryptedHeader:
    tmp = dst.with_name(f".{dst.name}{FILE_TMP_TAG}{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            header = body(out)
            out.flush()
            os.fsync(out.fileno())
        fault_point("crypto.file.before-rename")
        os.replace(tmp, dst)
        fsync_dir(dst.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return header
