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
