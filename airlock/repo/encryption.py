"""Encryption at rest for repository versions: which key a version is (to be) stored under.

A version is stored either in plaintext or with every file encrypted (docs/encryption-format.md)
under one key reference ``provider:key_id``; the catalog keeps the PLAINTEXT hashes either way, plus
the key reference (``versions.encryption``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airlock.crypto import KeyProvider, KeyRef, ProviderRegistry, is_encrypted, plaintext_sha256
from airlock.crypto.reader import read_encrypted_header
from airlock.errors import RepositoryError
from airlock.repo.layout import KEEP_PREFIX


@dataclass(frozen=True)
class Encryption:
    """A key reference resolved against the provider registry (the provider must exist)."""

    ref: KeyRef
    keys: ProviderRegistry

    @property
    def provider(self) -> KeyProvider:
        return self.keys.get(self.ref.provider)

    @property
    def key_id(self) -> str:
        return self.ref.key_id

    def __str__(self) -> str:
        return str(self.ref)


def resolve(ref: KeyRef | str | None, keys: ProviderRegistry | None, what: str) -> Encryption | None:
    """``None`` for plaintext; otherwise the reference checked to name a configured provider, so a
    wrong provider is refused before anything is written."""
    if ref is None:
        return None
    kref = ref if isinstance(ref, KeyRef) else KeyRef.parse(ref)
    if keys is None:
        raise RepositoryError(f"{what}: stored encrypted under {kref}, but no key provider config was "
                              "given (--keys-config)", path=what, rule="encryption-keys")
    enc = Encryption(kref, keys)
    enc.provider  # noqa: B018 - raises KeyProviderError naming the config when the provider is unknown
    return enc


def stored_size(path: Path, encrypted: bool) -> int:
    """Plaintext size of a stored file (from the encrypted header when encrypted; no key needed)."""
    return read_encrypted_header(path).plaintext_size if encrypted else path.lstat().st_size


def stored_sha256(path: Path, keys: ProviderRegistry | None, *, model: str | None = None,
                  rel: str | None = None, key_ref: str | None = None) -> str:
    """sha256 of a stored file's plaintext: decrypted (and authenticated) when encrypted. With
    ``model``/``rel`` the file must be bound to that place; with ``key_ref`` (the catalog's) its
    active key slot must be under that key (a restored pre-rotation slot is refused)."""
    from airlock.crypto.format import FileIdentity
    from airlock.hashing import sha256_file

    if keys is not None and is_encrypted(path):
        if key_ref is not None:
            check_key_ref(path, key_ref)
        ident = FileIdentity(model, rel) if model is not None and rel is not None else None
        return plaintext_sha256(path, keys, identity=ident)[1]
    return sha256_file(path)


def check_key_ref(path: Path, key_ref: str) -> None:
    """The file's active key slot must be under ``key_ref``, the key the catalog records for its
    version (rotation updates both): a slot restored from before a rotation is refused."""
    from airlock.crypto.errors import EncryptedFormatError

    header = read_encrypted_header(path)
    have = f"{header.provider}:{header.key_id}"
    if have != key_ref:
        raise EncryptedFormatError(f"active key slot is under {have}, the catalog records {key_ref} (a key "
                                   "slot restored from before a rotation?)", path=str(path))


def keep_encrypted(src: Path, tmp: Path, enc: Encryption, model: str, name: str) -> str:
    """Store a copy of ``src`` (a delta kept for rollback) encrypted under ``enc`` at new file ``tmp``;
    returns the sha256 of the plaintext, hashed while encrypting."""
    from airlock.crypto.tree import encrypt_hashing, kept_delta_identity

    ident = kept_delta_identity(model, name)
    return encrypt_hashing(src, tmp, enc.provider, enc.key_id, identity=ident).sha256


def kept_matches(kept: Path, sha256: str, enc: Encryption | None) -> bool:
    """True when the kept file already holds plaintext ``sha256`` in the stored form ``enc`` asks for
    (encrypted under a key the registry opens, or plaintext)."""
    from airlock.crypto.errors import EncryptedFormatError, KeyProviderError
    from airlock.hashing import sha256_file

    if enc is None:
        return not is_encrypted(kept) and sha256_file(kept) == sha256
    if not is_encrypted(kept):
        return False
    try:
        return plaintext_sha256(kept, enc.keys)[1] == sha256
    except (EncryptedFormatError, KeyProviderError):
        return False


def check_usable(enc: Encryption | None) -> None:
    """Before anything is staged or written: the KEK wraps a fresh random key and unwraps it back
    (a missing token, sealed Vault or unusable key fails here with the key-provider exit code)."""
    import secrets

    from airlock.crypto.errors import KeyProviderError

    if enc is None:
        return
    probe = bytearray(secrets.token_bytes(32))
    try:
        back = bytearray(enc.provider.unwrap(enc.key_id, enc.provider.wrap(enc.key_id, bytes(probe))))
        if back != probe:
            raise KeyProviderError(f"{enc.ref}: the key-encryption key does not round-trip a data key")
    finally:
        probe[:] = bytes(len(probe))


@dataclass(frozen=True)
class StoredPlace:
    """Where an encrypted file lies in a repository: what it must be bound to (model, relative path)
    and, for a version's file, the plaintext the catalog recorded for it."""

    model: str
    rel: str
    expected: tuple[int, str] | None  # catalog (size, sha256); None for a kept delta
    key_ref: str | None = None  # the key the catalog records for the version


def stored_place(path: Path) -> StoredPlace | None:
    """The repository place of ``path`` (``.../model_repo/<model>/<version>/<rel>`` or a kept delta
    ``.../model_repo/update_packages/<model>/<name>``), read from the catalog read-only; None outside
    a repository or for a version the catalog does not know."""
    from airlock.crypto.tree import kept_delta_identity
    from airlock.repo.catalog import Catalog

    p = Path(os.path.realpath(path))
    for up in p.parents:
        if up.name != "model_repo" or not (up / "metadata" / "model_catalog.db").is_file():
            continue
        parts = p.relative_to(up).parts
        if len(parts) == 3 and parts[0] == "update_packages":
            ident = kept_delta_identity(parts[1], parts[2])
            return StoredPlace(ident.model, ident.path, None)
        if len(parts) < 3 or parts[0] in ("metadata", "update_packages"):
            return None
        model, version, rel = parts[0], parts[1], "/".join(parts[2:])
        cat = Catalog(up / "metadata" / "model_catalog.db", readonly=True)
        try:
            row = cat.version(model, version)
        finally:
            cat.close()
        if row is None:
            return None
        f = row.files.get(rel)
        want = (f.size, f.sha256) if f else (-1, "not in the catalog")
        return StoredPlace(model, rel, want, row.encryption)
    return None


def version_places(vdir: Path) -> tuple[str, dict[str, tuple[int, str]]] | None:
    """(model, catalog plaintext hashes) when ``vdir`` is a version directory of a repository."""
    from airlock.repo.catalog import Catalog

    p = Path(os.path.realpath(vdir))
    up = p.parent.parent
    if up.name != "model_repo" or not (up / "metadata" / "model_catalog.db").is_file():
        return None
    cat = Catalog(up / "metadata" / "model_catalog.db", readonly=True)
    try:
        row = cat.version(p.parent.name, p.name)
    finally:
        cat.close()
    if row is None:
        return None
    return p.parent.name, {r: (f.size, f.sha256) for r, f in row.files.items()}


def verify_file(path: Path, keys: ProviderRegistry, under: Path | None = None) -> tuple[int, str]:
    """(size, sha256) of an encrypted file's plaintext, refused (exit 13) when the file is not where
    it belongs: in a repository, bound to another model/path or not the plaintext the catalog
    recorded; elsewhere, a version-2 file whose bound path is not its path below ``under``."""
    from airlock.crypto.format import FileIdentity
    from airlock.crypto.stream import check_identity
    from airlock.errors import IntegrityError

    place = stored_place(path)
    if place is None:
        size, sha = plaintext_sha256(path, keys)
        header = read_encrypted_header(path)
        if under is not None and under.is_dir() and header.identity is not None and header.identity.path:
            rel = Path(path).relative_to(under).as_posix()
            if rel != header.identity.path and not rel.endswith("/" + header.identity.path):
                check_identity(header, FileIdentity(header.identity.model, rel), str(path))
        return size, sha
    if place.key_ref is not None:
        check_key_ref(path, place.key_ref)
    size, sha = plaintext_sha256(path, keys, identity=FileIdentity(place.model, place.rel))
    if place.expected is not None and (size, sha) != place.expected:
        raise IntegrityError(f"{place.model} {place.rel}: plaintext differs from the catalog's hash (an "
                             "older or other file's ciphertext in this place)", path=str(path),
                             rule="plaintext-hash")
    return size, sha


def tree_context(src: Path) -> dict[str, Any]:
    """Keyword arguments for ``decrypt_tree`` of ``src``: a repository version directory is bound to
    its model and checked against the catalog's plaintext hashes (``keys decrypt`` of a directory)."""
    ctx = version_places(src)
    return {"model": ctx[0], "expect": ctx[1]} if ctx else {}


def file_context(src: Path) -> dict[str, Any]:
    """Keyword arguments for ``decrypt_file`` of ``src``: a file of a repository must be bound to its
    place and hold the plaintext the catalog recorded (``keys decrypt`` of a file)."""
    from airlock.crypto.format import FileIdentity

    place = stored_place(src)
    if place is None:
        return {}
    return {"identity": FileIdentity(place.model, place.rel), "expect": place.expected}


@dataclass
class RepositoryRotation:
    """What ``rotate_repository`` did: per-file results, the catalog rows that now record the new key
    reference, and the provider key version below which decryption is now refused (Vault)."""

    results: list[Any]
    versions: list[str]
    min_decryption_version: int | None = None
    sealed_deltas: list[str] | None = None  # plaintext kept deltas of encrypted versions, now encrypted


def rotate_repository(root: Path, keys: ProviderRegistry, new: KeyRef, *, reencrypt: bool = False,
                      rewrap_latest: bool = False, audit: Any = None,
                      lock_timeout: float | None = None) -> RepositoryRotation:
    """``keys rotate --root`` / ``keys reencrypt --root``: under the repository lock, every encrypted
    file of the repository (versions and kept deltas) is re-wrapped under ``new`` (or re-encrypted
    under fresh data keys, for a compromised KEK); then the catalog records ``new`` for every
    encrypted version, so updates, rollbacks and re-rotations use the current key. With
    ``rewrap_latest`` a provider that keeps key versions (Vault transit) stops decrypting older
    versions afterwards (``min_decryption_version`` raised)."""
    from airlock.crypto.format import FileIdentity
    from airlock.crypto.rotate import reencrypt_tree, rotate_tree
    from airlock.repo.catalog import Catalog
    from airlock.repo.layout import Layout
    from airlock.repo.lock import repo_lock

    layout = Layout(root)
    if not layout.repo.is_dir():
        raise RepositoryError(f"{layout.repo}: no model repository under this root", path=str(layout.repo),
                              rule="repository-missing")
    keys.get(new.provider)

    def identity_of(path: Path) -> FileIdentity | None:
        place = stored_place(path)
        return FileIdentity(place.model, place.rel) if place else None

    with repo_lock(layout.lock, lock_timeout):
        sealed = seal_kept_deltas(layout, Encryption(new, keys))
        if reencrypt:
            results = reencrypt_tree(layout.repo, keys, new, identity_of=identity_of, audit=audit)
        else:
            results = rotate_tree(layout.repo, keys, new, rewrap_latest=rewrap_latest, audit=audit)
        done: list[str] = []
        if layout.catalog.exists():
            cat = Catalog(layout.catalog)
            try:
                with cat.transaction():
                    for model in cat.models():
                        for row in cat.versions(model):
                            if row.encryption is not None and row.encryption != str(new):
                                cat.set_encryption(model, row.version, str(new))
                                done.append(f"{model} {row.version}")
            finally:
                cat.close()
        floor = keys.get(new.provider).retire_old_versions(new.key_id) if rewrap_latest else None
    return RepositoryRotation(results, done, floor, sealed)


def seal_kept_deltas(layout: Any, enc: Encryption) -> list[str]:
    """Kept deltas left in plaintext by Airlock before issue 21 for versions stored encrypted are
    encrypted under ``enc`` (atomically, mode 0444): a plaintext delta rebuilds the version from a
    public base. Caller holds the repository lock. Returns the files sealed."""
    import uuid

    from airlock.delta import read_delta_header
    from airlock.fsutil import fsync_dir
    from airlock.hashing import sha256_file
    from airlock.repo.catalog import Catalog

    if not layout.catalog.exists() or not layout.packages.is_dir():
        return []
    cat = Catalog(layout.catalog, readonly=True)
    try:
        encrypted = {(m, r.version) for m in cat.models() for r in cat.versions(m) if r.encryption}
    finally:
        cat.close()
    sealed: list[str] = []
    for model in sorted({m for m, _v in encrypted}):
        pk = layout.model_packages(model)
        for kept in layout.kept_deltas(model):
            if kept.is_symlink() or not kept.is_file() or is_encrypted(kept):
                continue
            h = read_delta_header(kept)
            if (model, h.from_version) not in encrypted and (model, h.to_version) not in encrypted:
                continue
            tmp = pk / f"{KEEP_PREFIX}{uuid.uuid4().hex}"
            try:
                if keep_encrypted(kept, tmp, enc, model, kept.name) != sha256_file(kept):
                    raise RepositoryError(f"{kept}: changed while being sealed", path=str(kept),
                                          rule="delta-changed")
                os.chmod(tmp, 0o444)
                os.replace(tmp, kept)
            finally:
                tmp.unlink(missing_ok=True)
            fsync_dir(pk)
            sealed.append(str(kept))
    return sealed


PLAINTEXT_STAGE_TAG = ".airlock-encrypt-stage-"


def mark_plaintext_stage(stage: Path) -> Path:
    """Before a bundle is staged for ``install-bundle --encrypt``: a marker beside the stage naming
    this process, so that if it is killed (kill -9, power loss) ``sweep_plaintext_stages`` removes
    the staged plaintext at the next repository operation. Remove it with ``clear_plaintext_stage``."""
    stage.parent.mkdir(parents=True, exist_ok=True)
    marker = stage.parent / f".{stage.name}{PLAINTEXT_STAGE_TAG}{os.getpid()}"
    marker.touch()
    return marker


def clear_plaintext_stage(stage: Path) -> None:
    for marker in stage.parent.glob(f".{stage.name}{PLAINTEXT_STAGE_TAG}*"):
        marker.unlink(missing_ok=True)


def sweep_plaintext_stages(staged_root: Path) -> list[Path]:
    """Remove stages of ``install-bundle --encrypt`` runs that died (their process is gone): staged
    plaintext of a version meant to be stored encrypted never outlives the run."""
    from airlock.crypto.workspace import pid_alive
    from airlock.fsutil import rmtree_writable

    removed: list[Path] = []
    if not staged_root.is_dir():
        return removed
    for marker in staged_root.glob(f".*{PLAINTEXT_STAGE_TAG}*"):
        name, _, pid = marker.name[1:].rpartition(PLAINTEXT_STAGE_TAG)
        if not pid.isdigit() or pid_alive(int(pid)):
            continue
        stage = staged_root / name
        if stage.exists() or stage.is_symlink():
            rmtree_writable(stage)
            removed.append(stage)
        marker.unlink(missing_ok=True)
    return removed


def check_stored_headers(vdir: Path, row: Any) -> None:
    """Before a rollback swaps ``current`` to a present encrypted version (no key needed): every
    file's header names this model and path (format 2), is under the catalog's key reference and
    declares the catalog's plaintext size. A moved or swapped ciphertext, or a file restored from
    before a rotation, is refused here (exit 13); an older version's ciphertext of the same file
    with the same size is caught by the plaintext hash (``airlock model verify``)."""
    from airlock.crypto.errors import EncryptedFormatError
    from airlock.crypto.format import FileIdentity
    from airlock.crypto.stream import check_identity

    if row is None or row.encryption is None:
        return
    for rel, f in sorted(row.files.items()):
        path = vdir / rel
        if not is_encrypted(path):
            raise EncryptedFormatError(f"{row.model} {row.version}: {rel} is not encrypted", path=str(path))
        header = read_encrypted_header(path)
        if header.identity is not None and header.identity.path:
            check_identity(header, FileIdentity(row.model, rel), str(path))
        check_key_ref(path, row.encryption)
        if header.plaintext_size != f.size:
            raise EncryptedFormatError(f"{row.model} {row.version}: {rel} holds {header.plaintext_size} "
                                       f"plaintext bytes, the catalog records {f.size}", path=str(path))
