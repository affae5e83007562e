"""Durable, atomic filesystem primitives shared by bundle staging, delta apply and the repository."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from airlock.errors import UnsafePathError


def fsync_dir(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_SYNC_FILE_RANGE_WRITE = 2
_libc: ctypes.CDLL | None = None


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing ``[offset, offset + length)`` of ``fd`` to disk now, without
    waiting (Linux ``sync_file_range(SYNC_FILE_RANGE_WRITE)``): the disk writes while the next blocks
    are decoded and hashed, so the one fsync per file at the end has little left to wait for (without
    it nothing is written back before that fsync: the dirty-page thresholds are GBs). Durability still
    comes from that fsync; a no-op where the call does not exist."""
    global _libc
    if not hasattr(os, "sched_getaffinity") or length <= 0:  # Linux only
        return
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(_libc, "sync_file_range", None)
    if fn is not None:
        fn(ctypes.c_int(fd), ctypes.c_int64(offset), ctypes.c_int64(length),
           ctypes.c_uint(_SYNC_FILE_RANGE_WRITE))  # best effort: an error leaves it to the fsync


DIRECT_ALIGN = 4096
"""O_DIRECT alignment (offset, length, buffer address) that every Linux block device accepts."""


class BlockWriter:
    """Write whole blocks of one file at their offsets, bypassing the page cache (O_DIRECT) where the
    file system allows it, else through ``fd`` with writeback started at once (``start_writeback``).

    Why: staging writes the whole model once and does not read it back through the cache. Buffered,
    every byte is first copied into freshly allocated page-cache pages (a fifth of staging's CPU in a
    profile, and on a VM whose freed memory goes back to the host, a page first touched can cost ten
    times that: 0.14-1.2 s for the same 268 MB); past the dirty limits the writer is throttled anyway.
    Direct, the disk reads the block straight from our (reused, page-aligned) buffer. A block that is
    not aligned (a buffer not on a page, the short last block with no room to pad) goes through
    ``fd``; a file system that refuses O_DIRECT (tmpfs, some FUSE) or an EINVAL at the first write
    turns direct writes off for the file. The short last block is padded to the alignment from the
    buffer's spare capacity (the pad zeroed) and the caller truncates the file to its size; a copy cut
    short in between only ever holds verified blocks plus zeros past the end. ``fd`` stays the
    caller's; ``close`` closes only the direct descriptor. Durability still comes from fsync(fd)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._direct = -1
        if hasattr(os, "O_DIRECT"):
            with contextlib.suppress(OSError):  # same open file, other flags: no path, no TOCTOU
                self._direct = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)

    @property
    def direct(self) -> bool:
        return self._direct >= 0

    def write_block(self, buf: memoryview, n: int, offset: int) -> None:
        """Write ``buf[:n]`` at ``offset``. ``buf`` may be longer than ``n`` (a block buffer holding a
        short last block): its spare bytes let that block be padded for a direct write."""
        pad = -n % DIRECT_ALIGN
        if (self._direct >= 0 and n and offset % DIRECT_ALIGN == 0 and len(buf) >= n + pad
                and not buf.readonly and _address(buf) % DIRECT_ALIGN == 0):
            if pad:
                buf[n:n + pad] = bytes(pad)
            try:
                done = os.pwrite(self._direct, buf[:n + pad], offset)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self.close()  # the device wants another alignment: buffered from here on
                done = 0
            if done >= n:
                return
            buf, n, offset = buf[done:], n - done, offset + done
        start, view = offset, buf[:n]
        while view:
            k = os.pwrite(self.fd, view, offset)
            view, offset = view[k:], offset + k
        start_writeback(self.fd, start, n)

    def close(self) -> None:
        if self._direct >= 0:
            os.close(self._direct)
            self._direct = -1

    def __enter__(self) -> BlockWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _address(buf: memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


CHMOD_UNSUPPORTED = frozenset({errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM})


def chmod_where_supported(path: str | os.PathLike[str], mode: int) -> bool:
    """``chmod`` on file systems that hold modes; False where the file system refuses it (FAT32 and
    exFAT, e.g. a USB stick through fusefat or vfat: ENOSYS, EOPNOTSUPP or EPERM). Other errors raise."""
    try:
        os.chmod(path, mode)
    except OSError as exc:
        if exc.errno in CHMOD_UNSUPPORTED:
            return False
        raise
    return True


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (children first), then ``root`` itself."""
    for dirpath, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                continue
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(dirpath)


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync, rename over ``path``, fsync the dir."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_symlink(target: str, link: Path) -> None:
    """Point ``link`` at ``target`` atomically (symlink to a temp name, then rename over)."""
    tmp = link.parent / f".{link.name}.tmp-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link)
    fsync_dir(link.parent)


@contextlib.contextmanager
def staging_dir(final: Path, prefix: str = ".staging-") -> Iterator[Path]:
    """A fresh directory beside ``final`` (same filesystem); removed unless the caller renamed it."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{prefix}{final.name}-", dir=final.parent))
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def rmtree_writable(path: Path) -> None:
    """Remove a tree even when its files and directories were made read-only."""

    def onerror(func, p, _exc):  # type: ignore[no-untyped-def]
        parent = os.path.dirname(p)
        with contextlib.suppress(OSError):
            os.chmod(parent, 0o700)
        with contextlib.suppress(OSError):
            os.chmod(p, 0o700)
        func(p)

    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, onerror=onerror)


def safe_relpath(name: str) -> PurePosixPath:
    """Validate an untrusted relative path: no absolute, no ``..``, no empty or odd components."""
    if not isinstance(name, str) or not name:
        raise UnsafePathError(f"{name!r}: empty or non-string path", path=str(name), rule="path-empty")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UnsafePathError(f"{name!r}: path is not valid UTF-8", path=name, rule="path-encoding") from exc
    if "\x00" in name or "\\" in name:
        raise UnsafePathError(f"{name!r}: NUL or backslash in path", path=name, rule="path-chars")
    if name.startswith("/"):
        raise UnsafePathError(f"{name!r}: absolute path", path=name, rule="path-absolute")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise UnsafePathError(f"{name!r}: traversal or non-normalised path", path=name, rule="path-traversal")
    return PurePosixPath(name)


def free_bytes(path: Path) -> int:
    """Bytes available to an unprivileged writer on the filesystem holding ``path``."""
    p = path
    while not p.exists():
        p = p.parent
    st = os.statvfs(p)
    return st.f_bavail * st.f_frsize
