"""Verify a bundle directory: signature over the exact manifest bytes first, then parse, then
policy (compatible, anti-downgrade), then every named payload streamed and hashed."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from airlock.bundle.manifest import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    MAX_SIGNATURE_BYTES,
    SIGNATURE_NAME,
    FileEntry,
    Manifest,
    parse_manifest,
)
from airlock.bundle.safeio import (
    open_beneath,
    open_payload,
    payload_files,
    read_limited,
    staged_layout,
)
from airlock.bundle.signing import SignerInfo, Trust, verify_signature
from airlock.codec import stored as codec  # by module: codec.stored imports airlock.bundle
from airlock.errors import (
    CompatibilityError,
    DowngradeError,
    IntegrityError,
    ManifestError,
    SignatureError,
)
from airlock.hashing import CHUNK, BlockHasher, no_progress

Progress = Callable[[int], None]


@dataclass
class VerifyReport:
    manifest: Manifest
    signer: SignerInfo
    files_checked: int = 0
    bytes_checked: int = 0
    extra_files: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        m = self.manifest
        return {
            "ok": True, "bundle_id": m.bundle_id, "kind": m.kind, "compatible": m.compatible,
            "sequence": m.sequence, "rollback": m.rollback, "signer": self.signer.primary_fingerprint,
            "signing_key": self.signer.fingerprint, "files_checked": self.files_checked,
            "bytes_checked": self.bytes_checked, "extra_files": self.extra_files,
            "models": [{"name": me.name, "version": me.version, "kind": me.kind,
                        "from_version": me.from_version} for me in m.models],
        }


@dataclass
class SignedManifest:
    manifest: Manifest
    signer: SignerInfo
    data: bytes
    signature: bytes


@dataclass(frozen=True)
class ManifestSource:
    """The manifest and signature bytes as read from where a bundle is, untrusted until
    ``load_signed``: a directory (``from_dir``: through ``safeio``, no symlinks, size-limited) or a
    packed archive's first two members (``pack.tar_source``). Every trust decision over a bundle
    goes source -> ``load_signed`` (signature over the exact bytes, then parse) -> ``check_policy``."""

    data: bytes
    signature: bytes | None  # None: no signature file (refused by the signature check)

    @classmethod
    def from_dir(cls, root: Path, manifest: str = MANIFEST_NAME,
                 signature: str = SIGNATURE_NAME) -> ManifestSource:
        data = read_limited(root, manifest, MAX_MANIFEST_BYTES, ManifestError, "manifest-size")
        try:
            sig: bytes | None = read_limited(root, signature, MAX_SIGNATURE_BYTES, SignatureError,
                                             "signature-size")
        except IntegrityError:
            sig = None
        return cls(data, sig)


def load_signed(source: ManifestSource, trust: Trust) -> SignedManifest:
    """The one signature check: over exactly the source's manifest bytes, before they are parsed."""
    return check_signed(source.data, source.signature, trust)


def load_signed_manifest(root: Path, trust: Trust) -> SignedManifest:
    """Read MANIFEST.json and its signature from ``root`` (no symlinks, size-limited), verify the
    signature over exactly those bytes, and only then parse them."""
    return load_signed(ManifestSource.from_dir(root), trust)


def check_signed(data: bytes, sig: bytes | None, trust: Trust) -> SignedManifest:
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{MANIFEST_NAME}: {len(data)} bytes exceeds the {MAX_MANIFEST_BYTES} byte limit",
                            path=MANIFEST_NAME, rule="manifest-size")
    signer = verify_signature(data, sig, trust)
    return SignedManifest(parse_manifest(data), signer, data, sig or b"")


def check_policy(m: Manifest, *, compatible: str | None, installed_sequence: int | None) -> None:
    """``compatible`` None: this appliance's recorded profile (``airlock.bundle.profile``), if any;
    ``ANY_PROFILE``: not checked (an explicit, audited override)."""
    from airlock.bundle.profile import ANY_PROFILE, resolve

    compatible = resolve(compatible)
    if compatible is not None and compatible != ANY_PROFILE and m.compatible != compatible:
        raise CompatibilityError(f"{MANIFEST_NAME}: bundle is for {m.compatible!r}, this appliance is "
                                 f"{compatible!r}", path=MANIFEST_NAME)
    check_sequence(m, installed_sequence)


def check_sequence(m: Manifest, installed_sequence: int | None, where: str = MANIFEST_NAME) -> None:
    """The anti-downgrade rule, written once: a sequence below the installed one needs a signed
    rollback. Staging applies it before a byte is copied, the repository again under its lock."""
    if installed_sequence is not None and m.sequence < installed_sequence and not m.rollback:
        raise DowngradeError(f"{where}: sequence {m.sequence} is lower than the installed "
                             f"{installed_sequence} and the bundle is not a signed rollback", path=where)


class BlockChecker:
    """Hash a stream against a manifest entry (``hashing.BlockHasher``: whole file and blocks, the
    whole-file hash on a helper thread), failing at the first bad block."""

    def __init__(self, rel: str, entry: FileEntry) -> None:
        self.rel = rel
        self.entry = entry
        self._hasher = BlockHasher(entry.block_size)
        self._checked = 0

    @property
    def size(self) -> int:
        return self._hasher.size

    @property
    def verified_blocks(self) -> int:
        """Blocks fully received whose hash matched the manifest."""
        return self._checked

    def update(self, data: bytes | memoryview) -> None:
        if self.size + len(data) > self.entry.size:
            raise IntegrityError(f"{self.rel}: larger than its manifest size {self.entry.size}",
                                 path=self.rel, rule="size")
        self._hasher.update(data)
        self._check_blocks()

    def offer_block(self, chunks: Iterable[bytes]) -> bool:
        """Offer the bytes of the next whole block (e.g. from an earlier partial copy). When they hash
        to the manifest's block they count as if passed to ``update``; otherwise nothing changes."""
        if not self._hasher.at_block_boundary:
            raise ValueError("offer_block only at a block boundary")
        want = min(self.entry.block_size, self.entry.size - self.size)
        if want <= 0:
            return False
        trial = self._hasher.copy()
        got = 0
        for chunk in chunks:
            got += len(chunk)
            if got > want:
                return False
            trial.update(chunk)
        trial.close_block()
        i = self._checked
        if got != want or trial.blocks[i:] != [self.entry.blocks[i]]:
            return False
        self._hasher = trial
        self._checked += 1
        return True

    def _check_blocks(self) -> None:
        blocks = self._hasher.blocks
        while self._checked < len(blocks):
            i = self._checked
            if i >= len(self.entry.blocks) or blocks[i] != self.entry.blocks[i]:
                start = i * self.entry.block_size
                end = start + self.entry.block_size
                raise IntegrityError(f"{self.rel}: block {i} (bytes {start}..{end}) does not match its "
                                     "manifest hash", path=self.rel, rule="block-hash")
            self._checked += 1

    def close_block(self) -> None:
        """Check a pending short (last) block now."""
        self._hasher.close_block()
        self._check_blocks()

    def finish(self) -> str:
        """Check the last (short) block, the size and the whole-file hash; return the sha256."""
        self.close_block()
        if self.size != self.entry.size:
            raise IntegrityError(f"{self.rel}: {self.size} bytes, manifest says {self.entry.size}",
                                 path=self.rel, rule="size")
        digest = self._hasher.finish().sha256
        if digest != self.entry.sha256:
            raise IntegrityError(f"{self.rel}: sha256 does not match the manifest", path=self.rel,
                                 rule="sha256")
        return digest


def check_stream(fh: BinaryIO, rel: str, entry: FileEntry, progress: Progress = no_progress) -> str:
    checker = BlockChecker(rel, entry)
    while True:
        data = fh.read(CHUNK)
        if not data:
            break
        checker.update(data)
        progress(len(data))
    return checker.finish()


def check_sizes(root: Path, m: Manifest) -> None:
    """Cheap pre-pass: every named file exists, is regular, has its size (before hashing anything)."""
    for rel, entry in m.files.items():
        stored = entry.stored_size if codec.coded_here(root, entry) else entry.size
        for name, size in payload_files(root, rel, stored, [p.size for p in entry.parts]):
            fd = open_beneath(root, name)
            try:
                actual = os.fstat(fd).st_size
            finally:
                os.close(fd)
            if actual != size:
                raise IntegrityError(f"{name}: {actual} bytes, manifest says {size}", path=name, rule="size")


def extra_files(root: Path, m: Manifest) -> list[str]:
    """Entries present but not named by the manifest (listed with lstat only; never opened)."""
    expected = {name for rel, e in m.files.items()
                for name, _ in payload_files(root, rel, e.stored_size, [p.size for p in e.parts])}
    expected |= {MANIFEST_NAME, SIGNATURE_NAME}
    if staged_layout(root):  # a staged bundle (e.g. in the site depot): staging's own marker files
        expected |= {n for n in os.listdir(root) if n.startswith(".airlock-")}
    expected_dirs = {str(Path(n).parent) for n in expected}
    expected_dirs = {p for n in expected_dirs for p in [n, *map(str, Path(n).parents)]}
    extras: list[str] = []
    for dirpath, dirs, files in os.walk(root, followlinks=False):
        rel_dir = Path(dirpath).relative_to(root)
        for name in dirs:
            rel = (rel_dir / name).as_posix()
            if os.path.islink(os.path.join(dirpath, name)) or rel not in expected_dirs:
                extras.append(rel + ("" if os.path.islink(os.path.join(dirpath, name)) else "/"))
        dirs[:] = [d for d in dirs if (rel_dir / d).as_posix() in expected_dirs
                   and not os.path.islink(os.path.join(dirpath, d))]
        for name in files:
            rel = (rel_dir / name).as_posix()
            if rel not in expected:
                extras.append(rel)
    return sorted(extras)


def verify_bundle(bundle_dir: Path, trust: Trust, *, compatible: str | None = None,
                  installed_sequence: int | None = None, progress: Progress | None = None) -> VerifyReport:
    """Fail closed: raises the AirlockError subclass of the first failure."""
    root = Path(bundle_dir)
    st = os.lstat(root) if os.path.lexists(root) else None
    if st is None or not stat.S_ISDIR(st.st_mode):
        raise IntegrityError(f"{root}: not a bundle directory", path=str(root), rule="missing")
    signed = load_signed_manifest(root, trust)
    m = signed.manifest
    check_policy(m, compatible=compatible, installed_sequence=installed_sequence)
    check_sizes(root, m)
    report = VerifyReport(manifest=m, signer=signed.signer, extra_files=extra_files(root, m))
    tick = progress or no_progress
    for rel, entry in m.files.items():
        if codec.coded_here(root, entry):  # compressed: every stored frame against its signed hash
            codec.check_stored(root, rel, entry, tick)
            report.files_checked += 1
            report.bytes_checked += entry.size
            continue
        with open_payload(root, rel, entry.size, [p.size for p in entry.parts]) as fh:
            check_stream(fh, rel, entry, tick)
        report.files_checked += 1
        report.bytes_checked += entry.size
    return report
