"""Random-access decrypting reader: a seekable, read-only file object over an encrypted file that
decrypts (and authenticates) only the chunks covering what is read. Memory: one chunk."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import BinaryIO, cast

from airlock.crypto.errors import EncryptedFormatError
from airlock.crypto.format import FIXED_HEADER_LEN, MAGIC, TAG_LEN, EncryptedHeader, FileIdentity
from airlock.crypto.stream import (
    DEFAULT_WORKERS,
    KeySource,
    aead_for,
    check_identity,
    decrypt_chunk,
    decrypt_stream,
    read_header,
    unwrap_data_key,
)


class DecryptingReader(io.RawIOBase):
    """``open_decrypted(path, keys)`` returns one of these. Seeking is free; each read authenticates
    every chunk it touches, so a tampered chunk raises EncryptedFormatError on read."""

    def __init__(self, path: Path, keys: KeySource, identity: FileIdentity | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self._f = open(self.path, "rb")  # noqa: SIM115 - closed in close()
        try:
            self.header: EncryptedHeader = read_header(self._f, str(self.path))
            check_identity(self.header, identity, str(self.path))
            expected = self.header.fixed.encrypted_size
            actual = os.fstat(self._f.fileno()).st_size
            if actual != expected:
                raise EncryptedFormatError(
                    f"encrypted file is {actual} bytes, header says {expected} (truncated or extended)",
                    path=str(self.path),
                )
            self.aead_for = aead_for(unwrap_data_key(self.header, keys, str(self.path)))
        except BaseException:
            self._f.close()
            raise
        self._pos = 0
        self._cached: tuple[int, bytes] | None = None

    @property
    def size(self) -> int:
        return self.header.plaintext_size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def _chunk(self, index: int) -> bytes:
        if self._cached and self._cached[0] == index:
            return self._cached[1]
        fixed = self.header.fixed
        self._f.seek(fixed.chunk_offset(index))
        sealed = self._f.read(fixed.chunk_plain_len(index) + TAG_LEN)
        plain = decrypt_chunk(self.aead_for, self.header, index, sealed, str(self.path))
        self._cached = (index, plain)
        return plain

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        want = min(len(view), max(0, self.size - self._pos))
        done = 0
        chunk_size = self.header.chunk_size
        while done < want:
            index, offset = divmod(self._pos, chunk_size)
            plain = self._chunk(index)
            n = min(want - done, len(plain) - offset)
            view[done : done + n] = plain[offset : offset + n]
            done += n
            self._pos += n
        if want == 0 and self.size == 0 and self._cached is None:
            self._chunk(0)  # an empty file still authenticates its single (empty) final chunk
        return done

    def read_range(self, offset: int, length: int) -> bytes:
        """Plaintext bytes [offset, offset+length) (short at end of file); decrypts only those chunks."""
        self.seek(offset)
        return self.read(length) or b""

    def close(self) -> None:
        if not self.closed:
            self._f.close()
            self._cached = None
        super().close()


def open_decrypted(path: Path, keys: KeySource, identity: FileIdentity | None = None) -> BinaryIO:
    """A readable, seekable file object yielding the plaintext of encrypted file ``path`` (refused
    when ``identity`` is given and a version-2 file is bound to another)."""
    return cast(BinaryIO, DecryptingReader(Path(path), keys, identity))


def is_encrypted(path: Path) -> bool:
    """True when ``path`` starts with the Airlock encrypted-file magic (cheap: reads 8 bytes)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except (IsADirectoryError, FileNotFoundError):
        return False


def read_encrypted_header(path: Path) -> EncryptedHeader:
    """Header of an encrypted file without any key (provider, key id, sizes)."""
    with open(path, "rb") as f:
        if len(f.read(FIXED_HEADER_LEN)) < FIXED_HEADER_LEN:
            raise EncryptedFormatError("not an Airlock encrypted file (short header)", path=str(path))
        f.seek(0)
        return read_header(f, str(path))


class _HashSink:
    def __init__(self) -> None:
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        return len(data)


def plaintext_sha256(path: Path, keys: KeySource, *, workers: int = DEFAULT_WORKERS,
                     identity: FileIdentity | None = None) -> tuple[int, str]:
    """(size, sha256 hex) of the plaintext, authenticating every chunk; for repository verification."""
    sink = _HashSink()
    with open(path, "rb") as f:
        decrypt_stream(f, cast(BinaryIO, sink), keys, workers=workers, path=str(path), identity=identity)
    return sink.size, sink.hash.hexdigest()
