"""Key rotation: re-wrap each file's data key under a new key-encryption key, in place, without
touching the encrypted chunks.

Crash safety comes from the two key slots: the new wrapped key goes into the *inactive* slot with
generation+1 and is fsynced; only then is the old slot wiped. A torn slot fails its digest and is
ignored, so at every instant one valid slot opens the file; re-running finishes the job.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from airlock.crypto.errors import EncryptedFormatError, WrongKeyError
from airlock.crypto.format import (
    FIXED_HEADER_LEN,
    KEY_LEN,
    MAX_GENERATION,
    FileIdentity,
    FixedHeader,
    KeySlot,
    check_commitment,
    parse_header,
)
from airlock.crypto.providers import KeyRef, ProviderRegistry
from airlock.crypto.reader import is_encrypted
from airlock.crypto.stream import unwrap_data_key
from airlock.faults import fault_point


@dataclass
class RotationResult:
    path: str
    action: (
        str  # rewrapped | completed (finished an interrupted rotation) | unchanged | rewrapped-in-provider
    )
    old: str
    new: str
    generation: int


class KeyAuditLog:
    """Key operations in the repository's hash-chained audit log format (``airlock.repo.audit``):
    one JSON record per line, ``action: key-rotate``, the result in ``details``. Pointed at the
    repository's ``update_history.log`` it joins the repository's chain; ``airlock audit verify
    --log PATH`` checks a separate key log."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, action: str, details: dict[str, object]) -> None:
        from airlock.repo import audit

        audit.append(self.path, action, details=details)

    def records(self) -> list[dict[str, Any]]:
        from airlock.repo import audit

        return audit.records(self.path)

    def verify(self) -> bool:
        from airlock.repo import audit

        return audit.scan(self.path).ok


MODE_XATTR = "user.airlock.rotate-mode"


def _restore_mode(path: Path) -> None:
    """Finish what a killed rotation left: the mode it recorded when it made the file writable."""
    try:
        saved = os.getxattr(path, MODE_XATTR, follow_symlinks=False)
    except OSError:
        return  # none recorded (or no xattr support)
    os.chmod(path, int(saved.decode(), 8))
    with contextlib.suppress(OSError):
        os.removexattr(path, MODE_XATTR, follow_symlinks=False)


@contextmanager
def _writable(path: Path) -> Iterator[int]:
    """An O_RDWR descriptor; a read-only file (immutable model version) is made owner-writable for
    the duration and its mode restored. The original mode is recorded in an extended attribute
    first, so a rotation killed in between restores it when re-run."""
    _restore_mode(path)
    mode = stat.S_IMODE(os.lstat(path).st_mode)
    changed = False
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    except PermissionError:
        os.chmod(path, mode | stat.S_IWUSR)
        changed = True
        # recorded once writable (user xattrs need write permission); best effort without xattrs
        with contextlib.suppress(OSError):
            os.setxattr(path, MODE_XATTR, f"{mode:o}".encode(), follow_symlinks=False)
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    try:
        yield fd
    finally:
        os.close(fd)
        if changed:
            os.chmod(path, mode)
            with contextlib.suppress(OSError):
                os.removexattr(path, MODE_XATTR, follow_symlinks=False)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


def rotate_file(
    path: Path,
    keys: ProviderRegistry,
    new: KeyRef,
    *,
    rewrap_latest: bool = False,
    audit: KeyAuditLog | None = None,
) -> RotationResult:
    """Re-wrap ``path``'s data key under ``new``. Idempotent: a file already under ``new`` is left
    alone (or its stale second slot wiped); with ``rewrap_latest`` a file already under ``new`` is
    moved to the provider's newest key version (Vault transit rewrap)."""
    spath = str(path)
    with _writable(path) as fd:
        fixed_raw = os.pread(fd, FIXED_HEADER_LEN, 0)
        head = os.pread(fd, FixedHeader.unpack(fixed_raw, spath).data_offset, 0)
        header = parse_header(head, spath)
        fixed, active_i, slot = header.fixed, header.active_index, header.active
        other_i = 1 - active_i
        other_raw = head[fixed.slot_offset(other_i) : fixed.slot_offset(other_i) + fixed.slot_size]
        old = f"{slot.provider}:{slot.key_id}"
        already = slot.provider == new.provider and slot.key_id == new.key_id
        if already and not rewrap_latest:
            action = "unchanged"
            if any(other_raw):
                _pwrite_all(fd, bytes(fixed.slot_size), fixed.slot_offset(other_i))
                os.fsync(fd)
                action = "completed"
            result = RotationResult(spath, action, old, str(new), slot.generation)
            if audit and action == "completed":
                audit.append("key-rotate", asdict(result))
            return result

        if slot.generation >= MAX_GENERATION:
            raise EncryptedFormatError(
                f"key slot generation is at its maximum ({MAX_GENERATION}); re-encrypt the file "
                "(airlock keys reencrypt) instead of re-wrapping it",
                path=spath,
            )
        target = keys.get(new.provider)
        wrapped: bytes | None = None
        action = "rewrapped"
        if already:
            wrapped = target.rewrap(new.key_id, slot.wrapped)
            action = "rewrapped-in-provider"
        if wrapped is None:
            data_key = unwrap_data_key(header, keys, spath)
            wrapped = target.wrap(new.key_id, data_key)
            del data_key
        check = bytearray(target.unwrap(new.key_id, wrapped))
        try:
            if len(check) != KEY_LEN or not check_commitment(bytes(check), fixed, header.raw_fixed):
                raise WrongKeyError(
                    f"new wrap under {new} does not reproduce the data key; file unchanged", path=spath
                )
            slot_obj = KeySlot(slot.generation + 1, new.provider, new.key_id, wrapped)
            if fixed.version >= 2:
                slot_obj = slot_obj.sealed(bytes(check), header.raw_fixed)
        finally:
            check[:] = bytes(len(check))
        new_slot = slot_obj.pack(fixed.slot_size)
        at = fixed.slot_offset(other_i)
        half = len(new_slot) // 2
        _pwrite_all(fd, new_slot[:half], at)
        fault_point("crypto.rotate.mid-slot")  # a torn slot: digest fails, the old slot stays active
        _pwrite_all(fd, new_slot[half:], at + half)
        os.fsync(fd)
        fault_point("crypto.rotate.slot-written")  # both slots valid; the higher generation wins
        _pwrite_all(fd, bytes(fixed.slot_size), fixed.slot_offset(active_i))
        os.fsync(fd)
        fault_point("crypto.rotate.old-wiped")
    result = RotationResult(spath, action, old, str(new), slot.generation + 1)
    if audit:
        audit.append("key-rotate", asdict(result))
    return result


def encrypted_files(root: Path) -> Iterator[Path]:
    """Every regular (non-symlink) encrypted file under ``root`` (or ``root`` itself), sorted."""
    if root.is_file() and not root.is_symlink():
        if is_encrypted(root):
            yield root
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if not p.is_symlink() and p.is_file() and is_encrypted(p):
                yield p


def rotate_tree(
    root: Path,
    keys: ProviderRegistry,
    new: KeyRef,
    *,
    rewrap_latest: bool = False,
    audit: KeyAuditLog | None = None,
) -> list[RotationResult]:
    """Rotate every encrypted file under ``root``. Hard-linked copies share one inode and are
    re-wrapped once. Stops at the first failure (already rotated files stay rotated and valid)."""
    results: list[RotationResult] = []
    seen: set[tuple[int, int]] = set()
    for path in encrypted_files(root):
        st = path.stat()
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        results.append(rotate_file(path, keys, new, rewrap_latest=rewrap_latest, audit=audit))
    return results


def reencrypt_file(
    paths: list[Path],
    keys: ProviderRegistry,
    new: KeyRef,
    *,
    identity: FileIdentity | None = None,
    audit: KeyAuditLog | None = None,
) -> RotationResult:
    """Re-encrypt one file (all of its hard-linked ``paths``) under a FRESH data key wrapped by ``new``:
    for a compromised KEK, where re-wrapping the old data key would not help (whoever held the KEK
    may have unwrapped it). Plaintext flows from the decrypting reader into the encryptor in memory
    (one chunk at a time), never to disk; the new file is checked (its plaintext hash), given the old
    mode and owner, then renamed over every path. A file already under ``new`` is left alone, so a
    re-run after a crash finishes the job (use a KEK never used before). ``identity`` binds the file
    (format version 2) where the old file had none (version 1)."""
    import hashlib
    import secrets

    from airlock.crypto.reader import open_decrypted, plaintext_sha256, read_encrypted_header
    from airlock.crypto.stream import encrypt_stream
    from airlock.crypto.workspace import FILE_TMP_TAG
    from airlock.fsutil import fsync_dir

    first = paths[0]
    spath = str(first)
    header = read_encrypted_header(first)
    old = f"{header.provider}:{header.key_id}"
    if header.provider == new.provider and header.key_id == new.key_id:
        return RotationResult(spath, "unchanged", old, str(new), header.active.generation)
    bind = header.identity if header.identity is not None and header.identity.path else identity
    st = first.lstat()
    tmp = first.with_name(f".{first.name}{FILE_TMP_TAG}{os.getpid()}-{secrets.token_hex(4)}")

    class _Hashing:
        def __init__(self, src: Any) -> None:
            self.src, self.hash = src, hashlib.sha256()

        def read(self, n: int = -1) -> bytes:
            data = self.src.read(n)
            self.hash.update(data)
            return bytes(data)

        def tell(self) -> int:
            return int(self.src.tell())

    try:
        with open_decrypted(first, keys) as src, \
                open(tmp, "xb") as out:
            reader = _Hashing(src)
            encrypt_stream(reader, out, keys.get(new.provider), new.key_id,  # type: ignore[arg-type]
                           plaintext_size=header.plaintext_size, chunk_size=header.chunk_size,
                           slot_size=header.fixed.slot_size, identity=bind or FileIdentity("", ""))
            out.flush()
            os.fsync(out.fileno())
        if plaintext_sha256(tmp, keys) != (header.plaintext_size, reader.hash.hexdigest()):
            raise EncryptedFormatError("re-encrypted file does not reproduce the plaintext; unchanged",
                                       path=spath)
        fault_point("crypto.reencrypt.written")
        if os.geteuid() == 0:
            os.chown(tmp, st.st_uid, st.st_gid)
        os.chmod(tmp, stat.S_IMODE(st.st_mode))
        for other in paths[1:]:  # every hard link of the old file moves to the new one
            link = other.with_name(f".{other.name}{FILE_TMP_TAG}{os.getpid()}-{secrets.token_hex(4)}")
            os.link(tmp, link)
            os.replace(link, other)
            fsync_dir(other.parent)
        os.replace(tmp, first)
        fsync_dir(first.parent)
    finally:
        tmp.unlink(missing_ok=True)
    result = RotationResult(spath, "reencrypted", old, str(new), 1)
    if audit:
        audit.append("key-reencrypt", asdict(result))
    return result


def reencrypt_tree(
    root: Path,
    keys: ProviderRegistry,
    new: KeyRef,
    *,
    identity_of: Callable[[Path], FileIdentity | None] | None = None,
    audit: KeyAuditLog | None = None,
) -> list[RotationResult]:
    """``reencrypt_file`` for every encrypted file under ``root`` (hard links re-encrypted once and
    kept linked). Stops at the first failure; a re-run continues."""
    groups: dict[tuple[int, int], list[Path]] = {}
    for path in encrypted_files(root):
        st = path.stat()
        groups.setdefault((st.st_dev, st.st_ino), []).append(path)
    return [reencrypt_file(paths, keys, new, identity=identity_of(paths[0]) if identity_of else None,
                           audit=audit) for paths in groups.values()]
