"""Local key-file provider, for development only: a raw 32-byte KEK per file, AES key wrap (RFC 3394).

Refused unless the provider config says ``allow_development_keyfile: true`` and the key file is mode
0600 (or 0400) — a key on the same disk as the data protects nothing against disk theft.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from airlock.crypto.errors import KeyProviderError, WrongKeyError
from airlock.crypto.providers.base import KeyProvider, ProviderStatus, check_private

KEY_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_key_id(key_id: str, provider: str) -> str:
    if not KEY_ID_RE.match(key_id):
        raise KeyProviderError(f"{provider}: invalid key id {key_id!r} (letters, digits, . _ -; max 128)")
    return key_id


class KeyFileProvider(KeyProvider):
    kind = "keyfile"

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        super().__init__(name)
        if config.get("allow_development_keyfile") is not True:
            raise KeyProviderError(
                f"{name}: the key-file provider is for development only; enable it explicitly with "
                "allow_development_keyfile: true in the provider config"
            )
        if not config.get("dir"):
            raise KeyProviderError(f"{name}: key-file provider needs 'dir'")
        self.dir = Path(str(config["dir"]))

    def _path(self, key_id: str) -> Path:
        return self.dir / f"{check_key_id(key_id, self.name)}.kek"

    def _load(self, key_id: str) -> bytes:
        path = self._path(key_id)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            raise KeyProviderError(
                f"{self.name}: key {key_id!r} not found ({exc.strerror})", path=str(path)
            ) from exc
        try:
            st = os.fstat(fd)
            mode = stat.S_IMODE(st.st_mode)
            if st.st_uid not in (os.geteuid(), 0):
                raise KeyProviderError(f"{self.name}: key file belongs to uid {st.st_uid}, not to this user "
                                       "or root; refusing it", path=str(path))
            check_private(self.dir, f"{self.name}: key directory", secret=False)
            if not stat.S_ISREG(st.st_mode) or mode not in (0o600, 0o400):
                raise KeyProviderError(
                    f"{self.name}: key file must be a regular file with mode 0600 (is {mode:o}); refusing it",
                    path=str(path),
                )
            key = os.read(fd, 64)
        finally:
            os.close(fd)
        if len(key) != 32:
            raise KeyProviderError(f"{self.name}: key file must hold exactly 32 raw bytes", path=str(path))
        return key

    def wrap(self, key_id: str, data_key: bytes) -> bytes:
        return aes_key_wrap(self._load(key_id), data_key)

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        try:
            return aes_key_unwrap(self._load(key_id), wrapped)
        except InvalidUnwrap as exc:
            raise WrongKeyError(f"{self.name}: key {key_id!r} does not unwrap this data key") from exc

    def generate(self, key_id: str) -> None:
        path = self._path(key_id)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError as exc:
            raise KeyProviderError(f"{self.name}: key {key_id!r} already exists", path=str(path)) from exc
        try:
            os.write(fd, os.urandom(32))
            os.fsync(fd)
        finally:
            os.close(fd)

    def created(self, key_id: str) -> float | None:
        """The key file's modification time: it is written once, by ``generate`` (O_EXCL)."""
        try:
            return os.stat(self._path(key_id), follow_symlinks=False).st_mtime
        except OSError:
            return None

    def check(self) -> ProviderStatus:
        if not self.dir.is_dir():
            return ProviderStatus(self.name, self.kind, False, f"key directory {self.dir} missing")
        keys = sorted(p.stem for p in self.dir.glob("*.kek"))
        return ProviderStatus(self.name, self.kind, True, f"development key files in {self.dir}", keys)
