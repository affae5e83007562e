"""Where plaintext of encrypted versions may exist: a RAM filesystem checked by its ``statfs`` magic
(tmpfs or ramfs; a disk bind-mounted on ``/dev/shm`` is refused, there is no fallback to disk), and
the temporary names Airlock gives plaintext or half-written files, swept after a crash.

Every temporary name carries the pid of the process that made it, so a sweep removes only what a
dead process left behind.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import sys
from pathlib import Path

from airlock.errors import UnsupportedOperationError

TMPFS_MAGIC = 0x01021994
RAMFS_MAGIC = 0x858458F6
RAM_FS_MAGICS = {TMPFS_MAGIC: "tmpfs", RAMFS_MAGIC: "ramfs"}
# every temporary name Airlock uses for plaintext or partial files: prefix, then "<pid>-"
WORKSPACE_PREFIX = "airlock-plain-"
FILE_TMP_TAG = ".airlock-tmp-"  # ".<name>.airlock-tmp-<pid>-<hex>" beside an encrypt/decrypt output
STAGE_PREFIX = ".crypto-staging-"  # ".crypto-staging-<pid>-<name>-<rand>" beside a tree output
_warned_swap = False


class WorkspaceError(UnsupportedOperationError):
    """The plaintext workspace is not on a RAM filesystem (exit 38)."""

    rule = "plaintext-workspace"


def fs_magic(path: Path) -> int:
    """``f_type`` of the filesystem holding ``path`` (statfs(2); Linux)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    buf = ctypes.create_string_buffer(256)  # struct statfs; f_type is its first member (a long)
    if libc.statfs(os.fsencode(str(path)), buf) != 0:
        err = ctypes.get_errno()
        raise WorkspaceError(f"cannot statfs the plaintext workspace ({os.strerror(err)})", path=str(path))
    return int(ctypes.c_long.from_buffer(buf).value) & 0xFFFFFFFF


def require_ram_fs(path: Path) -> Path:
    """``path`` when it is a directory on tmpfs/ramfs, else WorkspaceError (plaintext never goes to
    a persistent disk)."""
    if not path.is_dir() or path.is_symlink():
        raise WorkspaceError("plaintext workspace is not a directory (mount a tmpfs there)", path=str(path))
    magic = fs_magic(path)
    if magic not in RAM_FS_MAGICS:
        raise WorkspaceError(f"plaintext workspace is not on tmpfs/ramfs (statfs magic {magic:#x}); "
                             "plaintext of encrypted versions never goes to disk: mount a tmpfs there",
                             path=str(path))
    return path


def unencrypted_swap() -> list[str]:
    """Active swap areas that are not dm-crypt devices (plaintext in RAM may be paged out to them)."""
    try:
        lines = Path("/proc/swaps").read_text().splitlines()[1:]
    except OSError:
        return []
    out = []
    for line in lines:
        dev = line.split()[0] if line.split() else ""
        real = os.path.realpath(dev)
        name = os.path.basename(real)
        dm_uuid = Path(f"/sys/block/{name}/dm/uuid")
        try:
            if name.startswith("dm-") and dm_uuid.read_text().startswith("CRYPT-"):
                continue
        except OSError:
            pass
        if name.startswith("zram"):
            continue  # compressed RAM, not a disk
        out.append(dev)
    return out


def warn_unencrypted_swap() -> None:
    """One warning per process on stderr when swap is not encrypted."""
    global _warned_swap
    if _warned_swap:
        return
    _warned_swap = True
    swaps = unencrypted_swap()
    if swaps:
        print(f"airlock: warning: swap {', '.join(swaps)} is not encrypted; plaintext held in the tmpfs "
              "workspace may be paged out to disk (use encrypted swap or none)", file=sys.stderr)


def pid_of(name: str) -> int | None:
    """The pid a temporary name of Airlock's carries, or None when ``name`` is not one."""
    for tag in (WORKSPACE_PREFIX, STAGE_PREFIX, FILE_TMP_TAG):
        if tag == FILE_TMP_TAG:
            if not name.startswith(".") or tag not in name:
                continue
            rest = name.split(tag, 1)[1]
        elif name.startswith(tag):
            rest = name[len(tag):]
        else:
            continue
        pid = rest.split("-", 1)[0]
        return int(pid) if pid.isdigit() else None
    return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def sweep_dead(directory: Path) -> list[Path]:
    """Remove Airlock temporary files and directories in ``directory`` whose process is gone."""
    removed: list[Path] = []
    if not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        pid = pid_of(entry.name)
        if pid is None or pid_alive(pid):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed
