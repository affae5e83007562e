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

    def retire_old_versions(self, key_id: str) -> int | None:
        """After every data key was re-wrapped to the newest version of ``key_id``: refuse decryption
        under older versions inside the provider (Vault ``min_decryption_version``). Returns the
        new floor, or None when the provider keeps no key versions."""
        return None

    def created(self, key_id: str) -> float | None:
        """When ``key_id`` was created (Unix time; airlock metrics: the key's age before its first
        rotation). None when the provider does not say."""
        return None

    def rewrap(self, key_id: str, wrapped: bytes) -> bytes | None:
        """Provider-side re-wrap to the newest version of the same KEK without exposing the data key
        (Vault transit). None when the provider has no such operation."""
        return None


def check_private(path: Path, what: str, *, secret: bool) -> None:
    """``path`` (a secret, a key file or the key provider config) and its directory must belong to
    this user or root and be writable by no one else (another user could substitute a KEK, a PIN,
    the PKCS#11 library to load or the Vault URL); a secret must also be unreadable by others."""
    import stat as _stat

    me = os.geteuid()
    for p, kind in ((path, what), (path.parent, f"directory of the {what}")):
        try:
            st = p.stat()
        except OSError as exc:
            raise KeyProviderError(f"cannot read {kind} ({exc.strerror})", path=str(p)) from exc
        mode = _stat.S_IMODE(st.st_mode)
        if st.st_uid not in (me, 0):
            raise KeyProviderError(f"{kind} belongs to uid {st.st_uid}, not to this user ({me}) or root; "
                                   "refusing it", path=str(p))
        if mode & 0o022:
            raise KeyProviderError(f"{kind} is writable by group/others (mode {mode:o}); chmod go-w it",
                                   path=str(p))
    if secret:
        mode = _stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise KeyProviderError(f"{what} is readable by group/others (mode {mode:o}); chmod 0600 it",
                                   path=str(path))


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
        check_private(path, f"{provider}: {what} file", secret=True)
        return path.read_text().strip()
    if config.get(env_key):
        value = os.environ.get(str(config[env_key]))
        if value is None:
            raise KeyProviderError(
                f"{provider}: environment variable {config[env_key]} for {what} is not set"
            )
        return value
    raise KeyProviderError(f"{provider}: no {what} configured (set {file_key} or {env_key})")
