"""Errors of the encryption-at-rest layer (exit codes documented in docs/security.md)."""

from __future__ import annotations

from airlock.errors import AirlockError, IntegrityError


class EncryptedFormatError(IntegrityError):
    """An encrypted file is corrupt, truncated, reordered, tampered with or not ours (exit 13)."""

    rule = "encrypted-format"


class KeyProviderError(AirlockError):
    """A key provider is unavailable, misconfigured or refuses an operation (HSM token missing,
    Vault sealed, key file with unsafe mode)."""

    exit_code = 34
    rule = "key-provider"


class WrongKeyError(KeyProviderError):
    """The key-encryption key does not unwrap this file's data key (or the key commitment fails)."""

    exit_code = 35
    rule = "wrong-key"
