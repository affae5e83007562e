"""Byte layout of the Airlock encrypted file format, version 1 (spec: docs/encryption-format.md).

    fixed header (96 bytes, authenticated: AAD of every chunk)
    key slot A   (slot_size bytes, NOT authenticated: holds the wrapped data key, rewritten by rotation)
    key slot B   (slot_size bytes, same)
    chunk 0 .. chunk n-1, each = AES-256-GCM(chunk plaintext) || 16-byte tag

The data key is bound to the authenticated header by a key commitment (HMAC-SHA256 under the
data key), so a substituted wrapped key is refused before any chunk is decrypted, and two slots
with a generation counter make re-wrapping crash-safe without a journal.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

from airlock.crypto.errors import EncryptedFormatError

MAGIC = b"AIRLKENC"
FORMAT_VERSION = 1
CIPHER_AES_256_GCM = 1
FIXED_HEADER_LEN = 96
DEFAULT_CHUNK_SIZE = 1 << 20
MIN_CHUNK_SIZE = 4096
MAX_CHUNK_SIZE = 64 << 20
DEFAULT_SLOT_SIZE = 1024
TAG_LEN = 16
KEY_LEN = 32
NONCE_PREFIX_LEN = 8
MAX_CHUNKS = 1 << 32
SLOT_MAGIC = b"ASLT"
SLOT_DIGEST_LEN = 32
COMMIT_LABEL = b"airlock/enc/v1/key-commitment"

# magic, version, header_len, cipher, flags, chunk_size, plaintext_size, nonce_prefix, commitment, slot_size
_FIXED = struct.Struct(">8sHHHHIQ8s32sI")
_RESERVED = FIXED_HEADER_LEN - _FIXED.size


@dataclass(frozen=True)
class FixedHeader:
    """The authenticated, immutable part of the header."""

    chunk_size: int
    plaintext_size: int
    nonce_prefix: bytes
    commitment: bytes
    slot_size: int = DEFAULT_SLOT_SIZE
    version: int = FORMAT_VERSION
    cipher: int = CIPHER_AES_256_GCM

    @property
    def chunk_count(self) -> int:
        """At least one chunk: an empty file still has one (empty) final chunk."""
        return max(1, -(-self.plaintext_size // self.chunk_size))

    @property
    def data_offset(self) -> int:
        return FIXED_HEADER_LEN + 2 * self.slot_size

    @property
    def encrypted_size(self) -> int:
        return self.data_offset + self.plaintext_size + self.chunk_count * TAG_LEN

    def chunk_offset(self, index: int) -> int:
        return self.data_offset + index * (self.chunk_size + TAG_LEN)

    def chunk_plain_len(self, index: int) -> int:
        if index == self.chunk_count - 1:
            return self.plaintext_size - index * self.chunk_size
        return self.chunk_size

    def slot_offset(self, which: int) -> int:
        return FIXED_HEADER_LEN + which * self.slot_size

    def pack(self) -> bytes:
        return _FIXED.pack(
            MAGIC,
            self.version,
            FIXED_HEADER_LEN,
            self.cipher,
            0,
            self.chunk_size,
            self.plaintext_size,
            self.nonce_prefix,
            self.commitment,
            self.slot_size,
        ) + bytes(_RESERVED)

    @classmethod
    def unpack(cls, raw: bytes, path: str | None = None) -> FixedHeader:
        if len(raw) < FIXED_HEADER_LEN or raw[:8] != MAGIC:
            raise EncryptedFormatError("not an Airlock encrypted file (bad magic or short header)", path=path)
        (
            _magic,
            version,
            header_len,
            cipher,
            flags,
            chunk_size,
            plaintext_size,
            nonce_prefix,
            commitment,
            slot_size,
        ) = _FIXED.unpack_from(raw)
        if version != FORMAT_VERSION or header_len != FIXED_HEADER_LEN:
            raise EncryptedFormatError(f"unsupported encrypted format version {version}", path=path)
        if cipher != CIPHER_AES_256_GCM or flags != 0 or any(raw[_FIXED.size : FIXED_HEADER_LEN]):
            raise EncryptedFormatError("unknown cipher, flags or non-zero reserved header bytes", path=path)
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE or not 128 <= slot_size <= 65536:
            raise EncryptedFormatError("chunk size or key slot size out of range", path=path)
        hdr = cls(chunk_size, plaintext_size, nonce_prefix, commitment, slot_size, version, cipher)
        if hdr.chunk_count > MAX_CHUNKS:
            raise EncryptedFormatError("plaintext size exceeds the 2^32 chunk limit", path=path)
        return hdr


def chunk_nonce(nonce_prefix: bytes, index: int) -> bytes:
    """96-bit GCM nonce: 64-bit random file prefix || 32-bit big-endian chunk index."""
    return nonce_prefix + struct.pack(">I", index)


def chunk_aad(fixed: bytes, index: int, final: bool) -> bytes:
    """AAD of one chunk: the whole fixed header, the chunk index and the final-chunk flag."""
    return fixed + struct.pack(">IB", index, 1 if final else 0)


def key_commitment(data_key: bytes, nonce_prefix: bytes) -> bytes:
    """HMAC-SHA256(data_key, label || nonce prefix): binds exactly one data key to this header."""
    return hmac.new(data_key, COMMIT_LABEL + nonce_prefix, hashlib.sha256).digest()


def check_commitment(data_key: bytes, fixed: FixedHeader) -> bool:
    return hmac.compare_digest(key_commitment(data_key, fixed.nonce_prefix), fixed.commitment)


@dataclass(frozen=True)
class KeySlot:
    """One wrapped copy of the data key: which provider and key-encryption key wrapped it."""

    generation: int
    provider: str
    key_id: str
    wrapped: bytes

    def pack(self, slot_size: int) -> bytes:
        prov, kid = self.provider.encode(), self.key_id.encode()
        if len(prov) > 255 or len(kid) > 65535:
            raise EncryptedFormatError("provider name or key id too long for a key slot")
        body = (
            SLOT_MAGIC
            + struct.pack(">IB", self.generation, len(prov))
            + prov
            + struct.pack(">H", len(kid))
            + kid
            + struct.pack(">H", len(self.wrapped))
            + self.wrapped
        )
        room = slot_size - SLOT_DIGEST_LEN
        if len(body) > room:
            raise EncryptedFormatError(
                f"wrapped key and key id need {len(body)} bytes, the key slot holds {room}"
            )
        body += bytes(room - len(body))
        return body + hashlib.sha256(body).digest()

    @classmethod
    def unpack(cls, raw: bytes) -> KeySlot | None:
        """The slot, or None when it is empty or torn (digest mismatch): such a slot is ignored."""
        body, digest = raw[:-SLOT_DIGEST_LEN], raw[-SLOT_DIGEST_LEN:]
        if body[:4] != SLOT_MAGIC or not hmac.compare_digest(hashlib.sha256(body).digest(), digest):
            return None
        try:
            generation, plen = struct.unpack_from(">IB", body, 4)
            pos = 9
            provider = body[pos : pos + plen].decode()
            pos += plen
            (klen,) = struct.unpack_from(">H", body, pos)
            key_id = body[pos + 2 : pos + 2 + klen].decode()
            pos += 2 + klen
            (wlen,) = struct.unpack_from(">H", body, pos)
            wrapped = bytes(body[pos + 2 : pos + 2 + wlen])
        except (struct.error, UnicodeDecodeError):
            return None
        if len(wrapped) != wlen:
            return None
        return cls(generation, provider, key_id, wrapped)


def active_slot(slots: list[KeySlot | None], path: str | None = None) -> tuple[int, KeySlot]:
    """Index and slot with the highest generation among the valid ones."""
    valid = [(s.generation, i, s) for i, s in enumerate(slots) if s is not None]
    if not valid:
        raise EncryptedFormatError("no valid key slot (both wrapped-key slots empty or corrupt)", path=path)
    _gen, index, slot = max(valid)
    return index, slot


@dataclass(frozen=True)
class EncryptedHeader:
    """Everything before the first chunk: the fixed header, its raw bytes (the AAD) and both slots."""

    fixed: FixedHeader
    raw_fixed: bytes
    slots: tuple[KeySlot | None, KeySlot | None]
    active_index: int

    @property
    def active(self) -> KeySlot:
        slot = self.slots[self.active_index]
        assert slot is not None
        return slot

    @property
    def provider(self) -> str:
        return self.active.provider

    @property
    def key_id(self) -> str:
        return self.active.key_id

    @property
    def plaintext_size(self) -> int:
        return self.fixed.plaintext_size

    @property
    def chunk_size(self) -> int:
        return self.fixed.chunk_size


def parse_header(raw: bytes, path: str | None = None) -> EncryptedHeader:
    """Parse the first ``data_offset`` bytes of an encrypted file (raises on anything malformed)."""
    fixed = FixedHeader.unpack(raw[:FIXED_HEADER_LEN], path)
    if len(raw) < fixed.data_offset:
        raise EncryptedFormatError("truncated header (key slots incomplete)", path=path)
    slot_a = KeySlot.unpack(raw[fixed.slot_offset(0) : fixed.slot_offset(1)])
    slot_b = KeySlot.unpack(raw[fixed.slot_offset(1) : fixed.data_offset])
    index, _slot = active_slot([slot_a, slot_b], path)
    return EncryptedHeader(fixed, bytes(raw[:FIXED_HEADER_LEN]), (slot_a, slot_b), index)
