"""Encryption at rest for repository versions: which key a version is (to be) stored under.

A version is stored either in plaintext or with every file encrypted (docs/encryption-format.md)
under one key reference ``provider:key_id``; the catalog keeps the PLAINTEXT hashes either way, plus
the key reference (``versions.encryption``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from airlock.crypto import KeyProvider, KeyRef, ProviderRegistry, is_encrypted, plaintext_sha256
from airlock.crypto.reader import read_encrypted_header
from airlock.errors import RepositoryError


@dataclass(frozen=True)
class Encryption:
    """A key reference resolved against the provider registry (the provider must exist)."""

    ref: KeyRef
    keys: ProviderRegistry

    @property
    def provider(self) -> KeyProvider:
        return self.keys.get(self.ref.provider)

    @property
    def key_id(self) -> str:
        return self.ref.key_id

    def __str__(self) -> str:
        return str(self.ref)


def resolve(ref: KeyRef | str | None, keys: ProviderRegistry | None, what: str) -> Encryption | None:
    """``None`` for plaintext; otherwise the reference checked to name a configured provider, so a
    wrong provider is refused before anything is written."""
    if ref is None:
        return None
    kref = ref if isinstance(ref, KeyRef) else KeyRef.parse(ref)
    if keys is None:
        raise RepositoryError(f"{what}: stored encrypted under {kref}, but no key provider config was "
                              "given (--keys-config)", path=what, rule="encryption-keys")
    enc = Encryption(kref, keys)
    enc.provider  # noqa: B018 - raises KeyProviderError naming the config when the provider is unknown
    return enc


def stored_size(path: Path, encrypted: bool) -> int:
    """Plaintext size of a stored file (from the encrypted header when encrypted; no key needed)."""
    return read_encrypted_header(path).plaintext_size if encrypted else path.lstat().st_size


def stored_sha256(path: Path, keys: ProviderRegistry | None) -> str:
    """sha256 of a stored file's plaintext: decrypted (and authenticated) when encrypted."""
    from airlock.hashing import sha256_file

    if keys is not None and is_encrypted(path):
        return plaintext_sha256(path, keys)[1]
    return sha256_file(path)


def keep_encrypted(src: Path, tmp: Path, enc: Encryption, name: str) -> str:
    """Store a copy of ``src`` (a delta kept for rollback) encrypted under ``enc`` at new file ``tmp``;
    returns the sha256 of the plaintext, hashed while encrypting."""
    from airlock.crypto.tree import encrypt_hashing

    del name  # identity binding arrives with format version 2
    return encrypt_hashing(src, tmp, enc.provider, enc.key_id).sha256


def kept_matches(kept: Path, sha256: str, enc: Encryption | None) -> bool:
    """True when the kept file already holds plaintext ``sha256`` in the stored form ``enc`` asks for
    (encrypted under a key the registry opens, or plaintext)."""
    from airlock.crypto.errors import EncryptedFormatError, KeyProviderError
    from airlock.hashing import sha256_file

    if enc is None:
        return not is_encrypted(kept) and sha256_file(kept) == sha256
    if not is_encrypted(kept):
        return False
    try:
        return plaintext_sha256(kept, enc.keys)[1] == sha256
    except (EncryptedFormatError, KeyProviderError):
        return False


def check_usable(enc: Encryption | None) -> None:
    """Before anything is staged or written: the KEK wraps a fresh random key and unwraps it back
    (a missing token, sealed Vault or unusable key fails here with the key-provider exit code)."""
    import secrets

    from airlock.crypto.errors import KeyProviderError

    if enc is None:
        return
    probe = bytearray(secrets.token_bytes(32))
    try:
        back = bytearray(enc.provider.unwrap(enc.key_id, enc.provider.wrap(enc.key_id, bytes(probe))))
        if back != probe:
            raise KeyProviderError(f"{enc.ref}: the key-encryption key does not round-trip a data key")
    finally:
        probe[:] = bytes(len(probe))
