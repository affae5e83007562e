"""Error classes; each maps to a documented CLI exit code (see README, "Exit codes")."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path


class AirlockError(Exception):
    """Base class. ``rule`` names the violated rule, ``path`` the file concerned."""

    exit_code = 1
    rule = "error"

    def __init__(self, message: str, *, path: str | None = None, rule: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        if rule is not None:
            self.rule = rule

    def as_dict(self) -> dict[str, object]:
        return {"error": type(self).__name__, "rule": self.rule, "path": self.path, "message": str(self),
                "exit_code": self.exit_code}


class SignatureError(AirlockError):
    """No signature, bad signature, unknown / untrusted / expired / revoked signer."""

    exit_code = 10
    rule = "signature"


class ManifestError(AirlockError):
    """Manifest cannot be parsed or violates the schema."""

    exit_code = 11
    rule = "manifest"


class UnsafePathError(AirlockError):
    """Traversal, absolute path, symlink, device file, duplicate or non-UTF-8 name."""

    exit_code = 12
    rule = "path"


class IntegrityError(AirlockError):
    """Missing file, size, hash or block-hash mismatch."""

    exit_code = 13
    rule = "integrity"


class CompatibilityError(AirlockError):
    """Bundle built for another appliance profile."""

    exit_code = 14
    rule = "compatible"


class DowngradeError(AirlockError):
    """Bundle sequence lower than the installed one and not a signed rollback."""

    exit_code = 15
    rule = "downgrade"


class ReplayError(AirlockError):
    """A site receipt whose sequence is not above the last one accepted from that site."""

    exit_code = 16
    rule = "replay"


class DeltaSourceError(AirlockError):
    """The source model does not match what the delta was made against."""

    exit_code = 20
    rule = "delta-source"


class DeltaFormatError(AirlockError):
    """A corrupt, truncated or foreign delta file."""

    exit_code = 21
    rule = "delta-format"


class TensorFormatError(AirlockError):
    """A malformed safetensors file."""

    exit_code = 22
    rule = "safetensors"


class RepositoryError(AirlockError):
    """Model repository state conflict (unknown version, content differs, ...)."""

    exit_code = 30
    rule = "repository"


class DiskSpaceError(AirlockError):
    """Not enough free space for an operation (preflight)."""

    exit_code = 31
    rule = "disk-space"


class LockBusyError(AirlockError):
    """Another operation holds the repository lock."""

    exit_code = 32
    rule = "lock"


class AuditError(AirlockError):
    """The audit chain is broken (edited, deleted or reordered record)."""

    exit_code = 33
    rule = "audit"


class BackupError(AirlockError):
    """restic failed: backup repository unreachable, not initialised, locked, or a snapshot missing."""

    exit_code = 60
    rule = "backup"


class FleetError(AirlockError):
    """A playbook run failed on one or more hosts."""

    exit_code = 40
    rule = "fleet"


class MediaGoneError(AirlockError):
    """The medium went away mid-operation: USB stick pulled, FUSE or network mount lost, I/O error."""

    exit_code = 36
    rule = "media-gone"


class PermissionDeniedError(AirlockError):
    """The operating system refused access (not root, read-only file system, wrong owner)."""

    exit_code = 37
    rule = "permission"


class UnsupportedOperationError(AirlockError):
    """The target file system cannot do what was asked (chmod on FAT32, hard links, files > 4 GiB)."""

    exit_code = 38
    rule = "fs-unsupported"


class Interrupted(AirlockError):
    """Stopped by SIGINT (Ctrl-C) or SIGTERM; what was half-done is resumed or cleaned by a re-run."""

    exit_code = 130
    rule = "interrupted"


class InternalError(AirlockError):
    """An unexpected exception: a bug, reported as one line instead of a traceback."""

    exit_code = 1
    rule = "internal"


GONE_ERRNOS = frozenset({errno.ENOTCONN, errno.EIO, errno.ENODEV, errno.ESTALE, errno.ENXIO,
                         errno.ENOMEDIUM, errno.ESHUTDOWN})
SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
PERMISSION_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
UNSUPPORTED_ERRNOS = frozenset({errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EFBIG, errno.EMLINK})


def human_bytes(n: int | float) -> str:
    """``1536`` -> ``1.5 KiB``; binary units, as ``--split-size`` and ``--block-size`` take them."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _free(path: str | None) -> int | None:
    p = Path(path) if path else None
    while p is not None and not p.exists():
        p = p.parent if p.parent != p else None
    try:
        return shutil.disk_usage(p).free if p is not None else None
    except OSError:
        return None


def from_os_error(exc: OSError, *, what: str | None = None) -> AirlockError:
    """The one mapping from an operating-system error to an Airlock error with an exit code and a
    message that says what to do. ``what`` names the operation ("chmod", "staging") when known."""
    path = exc.filename if isinstance(exc.filename, str) else (str(exc.filename) if exc.filename else None)
    where = f"{path}: " if path else ""
    doing = f" during {what}" if what else ""
    reason = exc.strerror or type(exc).__name__
    code = exc.errno
    if code in SPACE_ERRNOS:
        free = _free(path)
        left = f" ({human_bytes(free)} free there)" if free is not None else ""
        return DiskSpaceError(f"{where}no space left on device{doing}{left}: free space or use --stage-dir "
                              "on another disk, then re-run to resume", path=path, rule="disk-space-enospc")
    if code in GONE_ERRNOS:
        return MediaGoneError(f"{where}{reason}{doing}: the device went away (USB stick pulled or mount "
                              "lost?); plug it back in, mount it again and re-run to resume", path=path)
    if code in UNSUPPORTED_ERRNOS or (code == errno.EPERM and what == "chmod"):
        return UnsupportedOperationError(f"{where}{reason}{doing}: the file system does not support this "
                                         "(FAT32/exFAT have no permissions, links or files over 4 GiB); "
                                         "use a directory on ext4/xfs", path=path)
    if code == errno.EROFS:
        return PermissionDeniedError(f"{where}read-only file system{doing}: write to another directory "
                                     "(the stick stays read-only at the site: use --stage-dir or the "
                                     "appliance's disk)", path=path, rule="read-only")
    if code in PERMISSION_ERRNOS:
        return PermissionDeniedError(f"{where}permission denied{doing}: run as root (sudo airlock ...) or "
                                     "choose a directory you can write", path=path)
    return AirlockError(f"{where}{reason}{doing} (errno {code})", path=path, rule="os-error")


def from_exception(exc: BaseException) -> AirlockError:
    """Any exception as an Airlock error: OS errors mapped, Ctrl-C as interrupted, the rest internal."""
    if isinstance(exc, AirlockError):
        return exc
    if isinstance(exc, KeyboardInterrupt):
        return Interrupted("interrupted (Ctrl-C): no half-written file was kept; re-run the same "
                                "command to resume")
    if isinstance(exc, OSError):
        return from_os_error(exc)
    return InternalError(f"unexpected {type(exc).__name__}: {exc} (a bug in Airlock: please report it "
                         "with the command line)")
