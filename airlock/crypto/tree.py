"""Encrypted model directories: encrypt/decrypt a whole version, and delta apply on encrypted sources.

The delta engine reads its source by path, so ``apply_delta_encrypted`` decrypts the source into a
private plaintext workspace (tmpfs by default: plaintext never reaches a persistent disk), applies
the delta there, encrypts the result into a staging directory beside the output and renames it in.
The workspace needs room for the source and the target in plaintext and must be a RAM filesystem
(tmpfs/ramfs, checked by statfs magic; ``airlock.crypto.workspace``): there is no disk fallback.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

from airlock.crypto.errors import EncryptedFormatError
from airlock.crypto.format import FileIdentity
from airlock.crypto.providers import KeyProvider
from airlock.crypto.reader import is_encrypted
from airlock.crypto.stream import (
    DEFAULT_WORKERS,
    ENCRYPT_WORKERS,
    HashingWriter,
    KeySource,
    check_identity,
    decrypt_file,
    decrypt_stream,
    encrypt_stream,
)
from airlock.crypto.workspace import (
    STAGE_PREFIX,
    WORKSPACE_PREFIX,
    require_ram_fs,
    sweep_dead,
    warn_unencrypted_swap,
)
from airlock.errors import IntegrityError
from airlock.faults import fault_point
from airlock.fsutil import fsync_dir, staging_dir

TMPFS = Path("/dev/shm")


@dataclass(frozen=True)
class PlainFile:
    """Size and sha256 of a file's plaintext (what the signed manifest's target_files record)."""

    size: int
    sha256: str


class _HashingReader:
    def __init__(self, src: BinaryIO) -> None:
        self.src, self.hash = src, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.src.read(n)
        self.hash.update(data)
        return data

    def tell(self) -> int:
        return self.src.tell()

    def fileno(self) -> int:
        return self.src.fileno()


def _files(root: Path) -> Iterator[tuple[str, Path]]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if p.is_symlink() or not p.is_file():
                raise EncryptedFormatError("only regular files can be encrypted in a model tree", path=str(p))
            yield p.relative_to(root).as_posix(), p


def _build(out_dir: Path, body: Callable[[Path], dict[str, PlainFile]]) -> dict[str, PlainFile]:
    if out_dir.exists() or out_dir.is_symlink():
        raise EncryptedFormatError(
            "output directory already exists; refusing to overwrite", path=str(out_dir)
        )
    with staging_dir(out_dir, prefix=f"{STAGE_PREFIX}{os.getpid()}-") as stage:
        os.chmod(stage, 0o700)
        result = body(stage)
        fault_point("crypto.tree.before-rename")
        os.rename(stage, out_dir)
    fsync_dir(out_dir.parent)
    return result


def encrypt_hashing(
    src: Path, dst: Path, provider: KeyProvider, key_id: str, *, workers: int = ENCRYPT_WORKERS,
    identity: FileIdentity | None = None, **kw: Any
) -> PlainFile:
    """Encrypt plaintext file ``src`` into new file ``dst`` (0600, fsynced), hashing the plaintext
    while encrypting (one read of the source); returns the plaintext size and sha256. ``identity``
    (model, relative path) is bound into the header."""
    with open(src, "rb") as f, open(dst, "xb") as out:
        reader = _HashingReader(f)
        size = os.fstat(f.fileno()).st_size
        encrypt_stream(
            cast(BinaryIO, reader), out, provider, key_id, plaintext_size=size, workers=workers,
            identity=identity, **kw
        )
        out.flush()
        os.fsync(out.fileno())
    os.chmod(dst, 0o600)
    return PlainFile(size, reader.hash.hexdigest())


def check_expected(found: dict[str, PlainFile], expect: dict[str, tuple[int, str]] | None,
                   where: Path) -> None:
    """Refuse plaintext that differs from the recorded hashes (the catalog's), naming the first file."""
    if expect is None:
        return
    for rel in sorted(set(found) | set(expect)):
        have = (found[rel].size, found[rel].sha256) if rel in found else None
        if have != expect.get(rel):
            what = "missing" if have is None else "unexpected" if rel not in expect else "differs"
            raise IntegrityError(f"{rel}: plaintext {what} from the recorded hashes (catalog); refusing "
                                 "to hand it out", path=str(where / rel), rule="plaintext-hash")


def encrypt_tree(
    plain_dir: Path,
    out_dir: Path,
    provider: KeyProvider,
    key_id: str,
    *,
    expect: dict[str, tuple[int, str]] | None = None,
    workers: int = ENCRYPT_WORKERS,
    model: str = "",
    **kw: Any,
) -> dict[str, PlainFile]:
    """Encrypt every file of ``plain_dir`` into new ``out_dir`` (same relative names, one fresh data key
    per file, each bound to ``model`` and its relative path); returns the plaintext size and sha256
    per relative path, hashed while encrypting. With ``expect`` ({relpath: (size, sha256)}) a
    mismatch aborts before ``out_dir`` appears."""

    def body(stage: Path) -> dict[str, PlainFile]:
        result: dict[str, PlainFile] = {}
        for rel, src in _files(plain_dir):
            dst = stage / rel
            dst.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            result[rel] = encrypt_hashing(src, dst, provider, key_id, workers=workers,
                                          identity=FileIdentity(model, rel), **kw)
        if expect is not None and {r: (f.size, f.sha256) for r, f in result.items()} != expect:
            raise IntegrityError(
                "plaintext being encrypted does not match the expected hashes", path=str(plain_dir)
            )
        return result

    return _build(out_dir, body)


def decrypt_tree(
    enc_dir: Path, out_dir: Path, keys: KeySource, *, workers: int = DEFAULT_WORKERS,
    model: str | None = None, expect: dict[str, tuple[int, str]] | None = None,
) -> dict[str, PlainFile]:
    """Decrypt every file of ``enc_dir`` into new ``out_dir`` (0700/0600); files that are not encrypted
    are refused (an encrypted version is encrypted throughout). Nothing appears unless every file is
    where it belongs: a version-2 file bound to another relative path (or to another ``model``, or
    to a model other than its siblings') is refused, and with ``expect`` ({relpath: (size, sha256)},
    the catalog's plaintext hashes) the plaintext must match it exactly (an older version's valid
    ciphertext in a newer one's place is refused)."""

    def body(stage: Path) -> dict[str, PlainFile]:
        result: dict[str, PlainFile] = {}
        models: set[str] = set()
        for rel, src in _files(enc_dir):
            if not is_encrypted(src):
                raise EncryptedFormatError("file in an encrypted model tree is not encrypted", path=str(src))
            dst = stage / rel
            dst.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with open(src, "rb") as f, os.fdopen(fd, "wb") as out:
                writer = HashingWriter(out)
                header = decrypt_stream(f, cast(BinaryIO, writer), keys, workers=workers, path=str(src),
                                        identity=None if model is None else FileIdentity(model, rel))
            if header.identity is not None and header.identity.path:  # "" : encrypted unbound (one file)
                check_identity(header, FileIdentity(header.identity.model, rel), str(src))
                models.add(header.identity.model)
            result[rel] = PlainFile(writer.size, writer.hash.hexdigest())
        if len(models) > 1:
            names = ", ".join(sorted(models))
            raise EncryptedFormatError(f"files of one tree belong to different models ({names})",
                                       path=str(enc_dir))
        check_expected(result, expect, enc_dir)
        return result

    return _build(out_dir, body)


@contextmanager
def plaintext_workspace(base: Path | None = None) -> Iterator[Path]:
    """A private (0700) scratch directory for plaintext on a checked RAM filesystem (``/dev/shm`` or
    ``base``; see ``airlock.crypto.workspace``); removed on exit whatever happens, and by
    ``sweep_workspaces`` after a kill -9 (its name carries the pid). No disk fallback."""
    parent = require_ram_fs(base or TMPFS)
    warn_unencrypted_swap()
    path = Path(tempfile.mkdtemp(prefix=f"{WORKSPACE_PREFIX}{os.getpid()}-", dir=parent))
    try:
        os.chmod(path, 0o700)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def sweep_workspaces(base: Path | None = None) -> list[Path]:
    """Remove plaintext workspaces and temporary names (``TEMP_PREFIXES``) left in ``base`` (default
    ``/dev/shm``) by processes that died (kill -9, power loss on a persistent ``base``); those of a
    live process are left alone. Returns what was removed."""
    return sweep_dead(base or TMPFS)


def _decrypt_delta(path: Path, keys: KeySource | None, ws: Path) -> Path:
    """``path`` itself when it is a plaintext delta, else its plaintext decrypted into ``ws``."""
    if not is_encrypted(path):
        return path
    if keys is None:
        raise EncryptedFormatError("kept delta is stored encrypted; key providers are needed to read it",
                                   path=str(path))
    ddir = ws / "deltas"
    ddir.mkdir(mode=0o700, exist_ok=True)
    out = ddir / path.name
    if not out.exists():
        decrypt_file(path, out, keys, identity=kept_delta_identity(path.parent.name, path.name))
    return out


def kept_delta_identity(model: str, name: str) -> FileIdentity:
    """What a delta kept for rollback in ``update_packages/<model>/<name>`` is bound to."""
    return FileIdentity(model, f"update_packages/{name}")


@contextmanager
def delta_view(delta_dir: Path, keys: KeySource | None) -> Iterator[Path]:
    """A directory where every delta of ``delta_dir`` reads as plaintext (same names): ``delta_dir``
    itself when none is encrypted, else a tmpfs workspace holding the encrypted ones decrypted and
    symlinks to the others. For searching a chain (``airlock.delta.find_chain_steps``)."""
    entries = sorted(p for p in delta_dir.iterdir() if p.is_file() and not p.name.startswith(".")) \
        if delta_dir.is_dir() else []
    if not any(is_encrypted(p) for p in entries):
        yield delta_dir
        return
    with plaintext_workspace() as ws:
        view = ws / "deltas"
        view.mkdir(mode=0o700)
        for p in entries:
            if is_encrypted(p):
                _decrypt_delta(p, keys, ws)
            else:
                (view / p.name).symlink_to(p)
        yield view


def apply_delta_encrypted(
    src_enc_dir: Path,
    delta_path: Path,
    out_enc_dir: Path,
    keys: KeySource,
    provider: KeyProvider,
    key_id: str,
    *,
    reverse: bool = False,
    workspace: Path | None = None,
    model: str = "",
) -> dict[str, PlainFile]:
    """Apply a delta to an encrypted model version and write the result encrypted under
    ``provider``/``key_id``. The decrypted source must match the delta's recorded source hashes and
    the plaintext of the result its target hashes before the encrypted output is renamed into place."""
    from airlock.delta import ChainStep, read_delta_header

    header = read_delta_header(delta_path)
    expected = header.source_files if reverse else header.target_files
    source = header.target_files if reverse else header.source_files
    want = {rel: (f.size, f.sha256) for rel, f in expected.items()}
    out = apply_chain_encrypted(src_enc_dir, [ChainStep(Path(delta_path), reverse, "", "")], out_enc_dir,
                                keys, src_encrypted=True, out_key=(provider, key_id), expect=want,
                                workspace=workspace, model=model,
                                src_expect={rel: (f.size, f.sha256) for rel, f in source.items()})
    assert out is not None
    return out


def apply_chain_encrypted(
    src_dir: Path,
    steps: list[Any],
    out_dir: Path,
    keys: KeySource | None,
    *,
    src_encrypted: bool,
    out_key: tuple[KeyProvider, str] | None,
    expect: dict[str, tuple[int, str]] | None = None,
    workspace: Path | None = None,
    model: str = "",
    src_expect: dict[str, tuple[int, str]] | None = None,
) -> dict[str, PlainFile] | None:
    """Apply delta chain ``steps`` (``airlock.delta.ChainStep``) to ``src_dir`` where the source, the
    output, a delta or several are stored encrypted: encrypted sources and deltas are decrypted into
    a private tmpfs workspace, the chain is applied there; with ``out_key`` the result is encrypted
    under it (checked against ``expect``), otherwise copied in plaintext to ``out_dir``. ``keys``
    opens the encrypted inputs. Returns the plaintext hashes when encrypting."""
    from airlock.delta import ChainStep, apply_chain

    with plaintext_workspace(workspace) as ws:
        # kept deltas of encrypted versions are stored encrypted: their plaintext lives here only
        steps = [ChainStep(_decrypt_delta(Path(s.path), keys, ws), s.reverse, s.from_version, s.to_version)
                 for s in steps]
        src = src_dir
        if src_encrypted:
            if keys is None:
                raise EncryptedFormatError("encrypted delta source needs key providers", path=str(src_dir))
            decrypt_tree(src_dir, ws / "src", keys, model=model or None, expect=src_expect)
            src = ws / "src"
        # intermediate versions of a chain are plaintext too: they are built in the workspace
        apply_chain(src, steps, ws / "out", link_unchanged=False)
        if out_key is None:
            _copy_tree(ws / "out", out_dir)
            return None
        return encrypt_tree(ws / "out", out_dir, out_key[0], out_key[1], expect=expect, model=model)


def _copy_tree(src: Path, dst: Path) -> None:
    """A plaintext result (the target version is stored in plaintext) copied out of the workspace."""
    def body(stage: Path) -> dict[str, PlainFile]:
        for rel, p in _files(src):
            (stage / rel).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            shutil.copyfile(p, stage / rel)
        return {}

    _build(dst, body)
