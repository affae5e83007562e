"""Where the restic password comes from: a private file (0600/0400, owned by this user or root) or a
password wrapped by a key provider's key-encryption key (HSM, Vault transit). It is handed to
restic through a pipe (``RESTIC_PASSWORD_FILE=/dev/fd/N``): never on a command line, never in the
environment, never in a log."""

from __future__ import annotations

import base64
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from airlock.crypto.errors import KeyProviderError
from airlock.crypto.providers.base import check_private
from airlock.errors import AirlockError

MAX_PASSWORD = 4096
WRAPPED_FORMAT = "airlock-restic-password/1"


@dataclass(frozen=True)
class PasswordSource:
    """One of ``file`` (plain, private) or ``wrapped`` (opened with the key providers of ``keys_config``)."""

    file: Path | None = None
    wrapped: Path | None = None
    keys_config: Path | None = None

    def describe(self) -> str:
        return f"file {self.file}" if self.file else f"wrapped {self.wrapped}"

    def read(self) -> bytes:
        if (self.file is None) == (self.wrapped is None):
            raise AirlockError("give the restic password as --password-file FILE (mode 0600) or "
                               "--password-wrapped FILE (opened by a key provider)", rule="backup-password")
        if self.file is not None:
            return read_private(self.file, "restic password file")
        assert self.wrapped is not None
        return unwrap_password(self.wrapped, self.keys_config)


def read_private(path: Path, what: str) -> bytes:
    """The bytes of a secret file that nobody else can read or replace (exit 34 otherwise)."""
    if not path.is_file():
        raise KeyProviderError(f"{what} not found (or not a regular file)", path=str(path))
    check_private(path, what, secret=True)
    data = path.read_bytes().rstrip(b"\r\n")
    if not data or len(data) > MAX_PASSWORD or b"\n" in data:
        raise KeyProviderError(f"{what} must hold one non-empty line", path=str(path))
    return data


def _registry(keys_config: Path | None):  # type: ignore[no-untyped-def]
    from airlock.crypto.providers import load_registry

    return load_registry(keys_config, required=True)


def make_wrapped(out: Path, key: str, keys_config: Path | None) -> dict[str, str]:
    """A new random restic password, wrapped by ``key`` (PROVIDER:KEY_ID), written to ``out`` (0600,
    refused if it exists: a repository's password is never replaced by accident)."""
    from airlock.crypto.providers import KeyRef

    ref = KeyRef.parse(key)
    reg = _registry(keys_config)
    assert reg is not None
    # 32 random bytes, wrapped like a data key (an HSM wraps AES-256 keys); restic gets their hex
    wrapped = reg.get(ref.provider).wrap(ref.key_id, secrets.token_bytes(32))
    doc = {"format": WRAPPED_FORMAT, "key": str(ref), "wrapped": base64.b64encode(wrapped).decode()}
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    return {"path": str(out), "key": str(ref)}


def unwrap_password(path: Path, keys_config: Path | None) -> bytes:
    from airlock.crypto.providers import KeyRef

    raw = read_private(path, "wrapped restic password file")
    try:
        doc = json.loads(raw)
        if doc.get("format") != WRAPPED_FORMAT:
            raise ValueError(f"format {doc.get('format')!r}")
        ref = KeyRef.parse(str(doc["key"]))
        wrapped = base64.b64decode(doc["wrapped"], validate=True)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise KeyProviderError(f"not a wrapped restic password ({exc})", path=str(path)) from exc
    reg = _registry(keys_config)
    assert reg is not None
    return reg.get(ref.provider).unwrap(ref.key_id, wrapped).hex().encode()
