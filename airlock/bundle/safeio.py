"""Opening untrusted bundle files: component by component with O_NOFOLLOW, regular files only,
and a reader that concatenates the parts of a split payload transparently."""

from __future__ import annotations

import bisect
import io
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from airlock.bundle.manifest import part_name
from airlock.errors import AirlockError, IntegrityError, UnsafePathError
from airlock.fsutil import rmtree_writable, safe_relpath

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
STAGING_MARKER = ".airlock-staging"  # written into every staging directory Airlock makes
COMPLETE_MARKER = ".airlock-staged"  # written last by a completed stage: sha256 of the staged manifest
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def _describe(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    if stat.S_ISFIFO(mode):
        return "a fifo"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def open_beneath(root: Path, rel: str) -> int:
    """Open ``root/rel`` read-only without following any symlink below ``root``; regular files only.

    Returns a file descriptor. Missing -> IntegrityError; symlink/device/fifo -> UnsafePathError.
    """
    parts = safe_relpath(rel).parts
    try:
        dfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise IntegrityError(f"{root}: bundle directory missing", path=str(root), rule="missing") from exc
    try:
        for comp in parts[:-1]:
            try:
                st = os.stat(comp, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError as exc:
                raise IntegrityError(f"{rel}: missing file", path=rel, rule="missing") from exc
            if not stat.S_ISDIR(st.st_mode):
                raise UnsafePathError(f"{rel}: component {comp!r} is {_describe(st.st_mode)}", path=rel,
                                      rule="path-type")
            nfd = os.open(comp, _DIR_FLAGS, dir_fd=dfd)
            dfd, old = nfd, dfd  # one statement: Ctrl-C cannot leave dfd naming a closed descriptor
            os.close(old)
        try:
            st = os.stat(parts[-1], dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError as exc:
            raise IntegrityError(f"{rel}: missing file", path=rel, rule="missing") from exc
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePathError(f"{rel}: is {_describe(st.st_mode)}, not a regular file", path=rel,
                                  rule="path-type")
        fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=dfd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped between stat and open
            os.close(fd)
            raise UnsafePathError(f"{rel}: changed type while opening", path=rel, rule="path-type")
        os.set_blocking(fd, True)
        return fd
    finally:
        os.close(dfd)


def remove_stale(final: Path, prefix: str) -> None:
    """Remove ``<prefix><final.name>-*`` temp dirs a killed earlier run left beside ``final``."""
    parent = final.parent
    if not parent.is_dir():
        return
    for entry in parent.glob(f"{prefix}{final.name}-*"):
        if entry.is_dir() and not entry.is_symlink():
            rmtree_writable(entry)


def read_limited(root: Path, rel: str, limit: int, error: type[AirlockError], rule: str) -> bytes:
    """Read a whole small file (manifest, signature), refusing it when larger than ``limit``."""
    fd = open_beneath(root, rel)
    with os.fdopen(fd, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > limit:
            raise error(f"{rel}: {size} bytes exceeds the {limit} byte limit", path=rel, rule=rule)
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise error(f"{rel}: grew past the {limit} byte limit", path=rel, rule=rule)
    return data


class PartsReader(io.RawIOBase):
    """Read-only file-like over consecutive parts; each part must have exactly its expected size."""

    def __init__(self, root: Path, names: Sequence[str], sizes: Sequence[int], logical: str) -> None:
        super().__init__()
        self._root = root
        self._names = list(names)
        self._sizes = list(sizes)
        self._logical = logical
        self._starts = [sum(self._sizes[:i]) for i in range(len(self._sizes))]
        self._index = -1
        self._fh: io.BufferedReader | None = None
        self._left = 0
        self._pos = 0

    def readable(self) -> bool:
        return True

    def _next(self) -> bool:
        if self._fh is not None:
            if self._fh.read(1):
                raise IntegrityError(f"{self._names[self._index]}: larger than its manifest size",
                                     path=self._names[self._index], rule="size")
            self._fh.close()
            self._fh = None
        self._index += 1
        if self._index >= len(self._names):
            return False
        self._fh = os.fdopen(open_beneath(self._root, self._names[self._index]), "rb")
        self._left = self._sizes[self._index]
        return True

    def seek_to(self, offset: int) -> None:
        """Position at logical ``offset`` (resume and repair read single blocks anywhere)."""
        if not 0 <= offset <= sum(self._sizes):
            raise ValueError(f"offset {offset} outside {self._logical}")
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        index = bisect.bisect_right(self._starts, offset) - 1
        while index > 0 and self._starts[index] == offset and self._sizes[index - 1] == 0:
            index -= 1
        index = min(index, len(self._names) - 1)
        self._index = index
        self._fh = os.fdopen(open_beneath(self._root, self._names[index]), "rb")
        within = offset - self._starts[index]
        self._fh.seek(within)
        self._left = self._sizes[index] - within
        self._pos = offset

    def readinto(self, buf: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buf).cast("B")
        while True:
            if self._fh is None or self._left == 0:
                if not self._next():
                    return 0
                continue
            n = self._fh.readinto(view[: min(len(view), self._left)])
            if not n:
                name = self._names[self._index]
                raise IntegrityError(f"{name}: truncated ({self._left} bytes short of its manifest size)",
                                     path=name, rule="size")
            self._left -= n
            self._pos += n
            return n

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        super().close()


def staged_layout(root: Path) -> bool:
    """A staged bundle (marked by ``STAGING_MARKER``: a staging directory, a site depot entry) holds
    each payload whole, its parts reassembled; a bundle as built (on a stick) holds the parts the
    manifest lists. Either way every byte read is checked against the signed block hashes."""
    try:
        return stat.S_ISREG(os.lstat(root / STAGING_MARKER).st_mode)
    except OSError:
        return False


def payload_files(root: Path, rel: str, size: int, part_sizes: Sequence[int] | None) -> list[tuple[str, int]]:
    """The files under ``root`` holding payload ``rel``, with their sizes, in order."""
    if part_sizes and not staged_layout(root):
        return [(part_name(rel, i), s) for i, s in enumerate(part_sizes)]
    return [(rel, size)]


def open_payload(root: Path, rel: str, size: int, part_sizes: Sequence[int] | None) -> io.BufferedReader:
    """A reader of the logical payload ``rel`` (reassembling parts) that fails on size mismatch."""
    files = payload_files(root, rel, size, part_sizes)
    names, sizes = [n for n, _ in files], [s for _, s in files]
    return io.BufferedReader(PartsReader(root, names, sizes, rel), buffer_size=1024 * 1024)
