"""Encryption at rest: the chunked AES-256-GCM file format, envelope keys from providers
(PKCS#11 HSM, Vault transit, development key file), random-access decryption and key rotation.

Integration API (repository, delta engine, serving)::

    from airlock.crypto import encrypt_stream, encrypt_file, open_decrypted, is_encrypted, plaintext_sha256
"""

from __future__ import annotations

from airlock.crypto.errors import EncryptedFormatError, KeyProviderError, WrongKeyError
from airlock.crypto.format import EncryptedHeader
from airlock.crypto.providers import KeyProvider, KeyRef, ProviderRegistry
from airlock.crypto.reader import (
    DecryptingReader,
    is_encrypted,
    open_decrypted,
    plaintext_sha256,
    read_encrypted_header,
)
from airlock.crypto.rotate import KeyAuditLog, RotationResult, rotate_file, rotate_tree
from airlock.crypto.stream import decrypt_file, decrypt_stream, encrypt_file, encrypt_stream

Header = EncryptedHeader

__all__ = [
    "DecryptingReader",
    "EncryptedFormatError",
    "EncryptedHeader",
    "Header",
    "KeyAuditLog",
    "KeyProvider",
    "KeyProviderError",
    "KeyRef",
    "ProviderRegistry",
    "RotationResult",
    "WrongKeyError",
    "decrypt_file",
    "decrypt_stream",
    "encrypt_file",
    "encrypt_stream",
    "is_encrypted",
    "open_decrypted",
    "plaintext_sha256",
    "read_encrypted_header",
    "rotate_file",
    "rotate_tree",
]
