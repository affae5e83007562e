"""Key providers: a key-encryption key (KEK) held elsewhere wraps and unwraps per-file data keys.

Providers never log key material; secrets (PINs, tokens) come from files or environment
variables named in the provider config, never from a command line.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airlock.crypto.errors import KeyProviderError


@dataclass
class ProviderStatus:
    """Result of a provider health check (no secrets)."""

    name: str
    kind: str
    available: bool
    detail: str
    keys: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "available": self.available,
            "detail": self.detail,
            "keys": self.keys,
        }


class KeyProvider(ABC):
    """A named source of key-encryption keys. ``name`` is what an encrypted file's key slot records."""

    kind: str = "abstract"

    def __init__(self, name: str) -> None:
        self.name = name

    @abstractmethod
    def wrap(self, key_id: str, data_key: bytes) -> bytes:
        """Encrypt ``data_key`` under the KEK ``key_id``; the result is opaque and stored in a key slot."""

    @abstractmethod
    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        """Inverse of wrap. Raises WrongKeyError if the KEK does not open it, KeyProviderError if the
        provider cannot be reached."""

    @abstractmethod
    def generate(self, key_id: str) -> None:
        """Create a new KEK ``key_id`` inside the provider (refuses to overwrite an existing one)."""

    @abstractmethod
    def check(self) -> ProviderStatus:
        """Reachability and the key ids visible (never raises for an unavailable provider)."""

    def rewrap(self, key_id: str, wrapped: bytes) -> bytes | None:
        """Provider-side re-wrap to the newest version of the same KEK without exposing the data key
        (Vault transit). None when the provider has no such operation."""
        return None


def read_secret(config: dict[str, Any], what: str, provider: str) -> str:
    """A secret from ``<what>_file`` (mode must not be group/world readable) or ``<what>_env``."""
    file_key, env_key = f"{what}_file", f"{what}_env"
    if config.get(file_key):
        path = Path(str(config[file_key]))
        try:
            st = path.stat()
        except OSError as exc:
            raise KeyProviderError(
                f"{provider}: cannot read {what} file ({exc.strerror})", path=str(path)
            ) from exc
        if st.st_mode & 0o077:
            raise KeyProviderError(
                f"{provider}: {what} file is readable by group/others (mode "
                f"{st.st_mode & 0o777:o}); chmod 0600 it",
                path=str(path),
            )
        return path.read_text().strip()
    if config.get(env_key):
        value = os.environ.get(str(config[env_key]))
        if value is None:
            raise KeyProviderError(
                f"{provider}: environment variable {config[env_key]} for {what} is not set"
            )
        return value
    raise KeyProviderError(f"{provider}: no {what} configured (set {file_key} or {env_key})")
