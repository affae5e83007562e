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
        raise UnsafePathError(f"{name}: absolute path", path=name, rule="path-absolute")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise UnsafePathError(f"{name}: traversal or non-normalised path", path=name, rule="path-traversal")
    return PurePosixPath(name)


def free_bytes(path: Path) -> int:
    """Bytes available to an unprivileged writer on the filesystem holding ``path``."""
    p = path
    while not p.exists():
        p = p.parent
    st = os.statvfs(p)
    return st.f_bavail * st.f_frsize
