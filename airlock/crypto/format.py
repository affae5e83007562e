"""Byte layout of the Airlock encrypted file format, versions 1 and 2 (spec: docs/encryption-format.md).

    fixed header (96 bytes, authenticated: AAD of every chunk)
    identity     (version 2: model and relative path of the file; authenticated with the fixed header)
    key slot A   (slot_size bytes: the wrapped data key, rewritten by rotation; version 2: MACed)
    key slot B   (slot_size bytes, same)
    chunk 0 .. chunk n-1, each = AES-256-GCM(chunk plaintext) || 16-byte tag

The data key is bound to the authenticated header by a key commitment (HMAC-SHA256 under the
data key), so a substituted wrapped key is refused before any chunk is decrypted, and two slots
with a generation counter make re-wrapping crash-safe without a journal. Version 2 binds which file
this is (model, relative path: not the version, unchanged files are hard-linked between versions)
into the AAD and the commitment, and MACs each key slot under a key derived from the data key.
Version 1 files stay readable; new files are written as version 2.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

from airlock.crypto.errors import EncryptedFormatError

MAGIC = b"AIRLKENC"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
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
COMMIT_LABEL_V2 = b"airlock/enc/v2/key-commitment"
SLOT_MAC_LABEL = b"airlock/enc/v2/slot-mac"
SLOT_MAC_LEN = 32
MAX_GENERATION = 0xFFFFFFFF
MAX_IDENTITY_LEN = 4096


@dataclass(frozen=True)
class FileIdentity:
    """Which file an encrypted file is (version 2): its model and its path relative to the version
    directory. Authenticated, so a ciphertext moved to another file's place is refused."""

    model: str
    path: str

    def pack(self) -> bytes:
        m, p = self.model.encode(), self.path.encode()
        if len(m) + len(p) + 4 > MAX_IDENTITY_LEN:
            raise EncryptedFormatError("model name and relative path too long for the identity field")
        return struct.pack(">H", len(m)) + m + struct.pack(">H", len(p)) + p

    @classmethod
    def unpack(cls, raw: bytes, path: str | None = None) -> FileIdentity:
        try:
            (mlen,) = struct.unpack_from(">H", raw, 0)
            model = raw[2 : 2 + mlen].decode()
            (plen,) = struct.unpack_from(">H", raw, 2 + mlen)
            rel = raw[4 + mlen : 4 + mlen + plen].decode()
        except (struct.error, UnicodeDecodeError):
            raise EncryptedFormatError("malformed file identity in the header", path=path) from None
        if 4 + mlen + plen != len(raw):
            raise EncryptedFormatError("malformed file identity in the header", path=path)
        return cls(model, rel)

    def __str__(self) -> str:
        return f"{self.model or '-'}:{self.path}"

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
    header_len: int = FIXED_HEADER_LEN  # version 2: the fixed header plus the identity field

    @property
    def chunk_count(self) -> int:
        """At least one chunk: an empty file still has one (empty) final chunk."""
        return max(1, -(-self.plaintext_size // self.chunk_size))

    @property
    def data_offset(self) -> int:
        return self.header_len + 2 * self.slot_size

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
        return self.header_len + which * self.slot_size

    def pack(self) -> bytes:
        return _FIXED.pack(
            MAGIC,
            self.version,
            self.header_len,
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
        if version not in READABLE_VERSIONS:
            raise EncryptedFormatError(f"unsupported encrypted format version {version}", path=path)
        if (version == 1 and header_len != FIXED_HEADER_LEN) or (
            version >= 2 and not FIXED_HEADER_LEN + 4 <= header_len <= FIXED_HEADER_LEN + MAX_IDENTITY_LEN
        ):
            raise EncryptedFormatError(f"bad header length {header_len} for format version {version}",
                                       path=path)
        if cipher != CIPHER_AES_256_GCM or flags != 0 or any(raw[_FIXED.size : FIXED_HEADER_LEN]):
            raise EncryptedFormatError("unknown cipher, flags or non-zero reserved header bytes", path=path)
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE or not 128 <= slot_size <= 65536:
            raise EncryptedFormatError("chunk size or key slot size out of range", path=path)
        hdr = cls(chunk_size, plaintext_size, nonce_prefix, commitment, slot_size, version, cipher,
                  header_len)
        if hdr.chunk_count > MAX_CHUNKS:
            raise EncryptedFormatError("plaintext size exceeds the 2^32 chunk limit", path=path)
        return hdr


def chunk_nonce(nonce_prefix: bytes, index: int) -> bytes:
    """96-bit GCM nonce: 64-bit random file prefix || 32-bit big-endian chunk index."""
    return nonce_prefix + struct.pack(">I", index)


def chunk_aad(fixed: bytes, index: int, final: bool) -> bytes:
    """AAD of one chunk: the whole fixed header, the chunk index and the final-chunk flag."""
    return fixed + struct.pack(">IB", index, 1 if final else 0)


def key_commitment(data_key: bytes, nonce_prefix: bytes, identity: bytes | None = None) -> bytes:
    """HMAC-SHA256(data_key, label || nonce prefix [|| identity]): binds exactly one data key to this
    header (version 2: and to the file identity)."""
    if identity is None:
        return hmac.new(data_key, COMMIT_LABEL + nonce_prefix, hashlib.sha256).digest()
    return hmac.new(data_key, COMMIT_LABEL_V2 + nonce_prefix + identity, hashlib.sha256).digest()


def check_commitment(data_key: bytes, fixed: FixedHeader, raw_header: bytes = b"") -> bool:
    """``raw_header``: the authenticated header bytes (the identity field follows the fixed part)."""
    identity = raw_header[FIXED_HEADER_LEN : fixed.header_len] if fixed.version >= 2 else None
    return hmac.compare_digest(key_commitment(data_key, fixed.nonce_prefix, identity), fixed.commitment)


def slot_mac(data_key: bytes, raw_header: bytes, body: bytes) -> bytes:
    """Version 2: HMAC-SHA256 of a key slot's content and the authenticated header, under a key
    derived from the data key: a slot cannot be edited (generation, key id) without the data key."""
    mac_key = hmac.new(data_key, SLOT_MAC_LABEL, hashlib.sha256).digest()
    return hmac.new(mac_key, raw_header + body, hashlib.sha256).digest()


@dataclass(frozen=True)
class KeySlot:
    """One wrapped copy of the data key: which provider and key-encryption key wrapped it."""

    generation: int
    provider: str
    key_id: str
    wrapped: bytes
    mac: bytes = b""  # version 2: slot_mac over content() and the header

    def content(self) -> bytes:
        prov, kid = self.provider.encode(), self.key_id.encode()
        if len(prov) > 255 or len(kid) > 65535:
            raise EncryptedFormatError("provider name or key id too long for a key slot")
        if not 0 <= self.generation <= MAX_GENERATION:
            raise EncryptedFormatError(f"key slot generation {self.generation} out of range")
        return (
            SLOT_MAGIC
            + struct.pack(">IB", self.generation, len(prov))
            + prov
            + struct.pack(">H", len(kid))
            + kid
            + struct.pack(">H", len(self.wrapped))
            + self.wrapped
        )

    def sealed(self, data_key: bytes, raw_header: bytes) -> KeySlot:
        """This slot with its version-2 MAC."""
        return KeySlot(self.generation, self.provider, self.key_id, self.wrapped,
                       slot_mac(data_key, raw_header, self.content()))

    def mac_ok(self, data_key: bytes, raw_header: bytes) -> bool:
        return len(self.mac) == SLOT_MAC_LEN and hmac.compare_digest(
            self.mac, slot_mac(data_key, raw_header, self.content()))

    def pack(self, slot_size: int) -> bytes:
        body = self.content() + self.mac
        room = slot_size - SLOT_DIGEST_LEN
        if len(body) > room:
            raise EncryptedFormatError(
                f"wrapped key and key id need {len(body)} bytes, the key slot holds {room}"
            )
        body += bytes(room - len(body))
        return body + hashlib.sha256(body).digest()

    @classmethod
    def unpack(cls, raw: bytes, version: int = 1) -> KeySlot | None:
        """The slot, or None when it is empty or torn (digest mismatch): such a slot is ignored.
        Version 2 slots carry a MAC, checked once the data key is unwrapped."""
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
            pos += 2 + wlen
            mac = bytes(body[pos : pos + SLOT_MAC_LEN]) if version >= 2 else b""
        except (struct.error, UnicodeDecodeError):
            return None
        if len(wrapped) != wlen or (version >= 2 and len(mac) != SLOT_MAC_LEN):
            return None
        return cls(generation, provider, key_id, wrapped, mac)


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
    raw_fixed: bytes  # the authenticated header: fixed part and (version 2) the identity field
    slots: tuple[KeySlot | None, KeySlot | None]
    active_index: int
    identity: FileIdentity | None = None  # version 2

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
    identity = (FileIdentity.unpack(bytes(raw[FIXED_HEADER_LEN : fixed.header_len]), path)
                if fixed.version >= 2 else None)
    slot_a = KeySlot.unpack(raw[fixed.slot_offset(0) : fixed.slot_offset(1)], fixed.version)
    slot_b = KeySlot.unpack(raw[fixed.slot_offset(1) : fixed.data_offset], fixed.version)
    index, _slot = active_slot([slot_a, slot_b], path)
    return EncryptedHeader(fixed, bytes(raw[: fixed.header_len]), (slot_a, slot_b), index, identity)
