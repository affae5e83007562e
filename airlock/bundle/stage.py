"""Stage a bundle onto the target's disk with no TOCTOU window.

The manifest and signature are copied first and the signature is verified over the *staged* bytes;
each payload is then copied while hashing (parts reassembled) and checked block by block against
the staged manifest. Only staged copies are used afterwards, so a stick that changes after
verification cannot inject bytes. Staging resumes and repairs by block: blocks already staged by an
interrupted or damaged earlier run are kept when they match the manifest, the rest is copied again."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from airlock.buffers import BUFFERS, extent, fill
from airlock.bundle.manifest import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    FileEntry,
    Manifest,
)
from airlock.bundle.safeio import COMPLETE_MARKER, STAGING_MARKER, PartsReader, payload_files, read_limited
from airlock.bundle.signing import SignerInfo, Trust
from airlock.bundle.verify import (
    BlockChecker,
    ManifestSource,
    SignedManifest,
    check_policy,
    check_sizes,
    load_signed,
)
from airlock.codec import stored as codec  # by module: codec.stored imports airlock.bundle
from airlock.errors import IntegrityError, UnsafePathError
from airlock.faults import fault_point
from airlock.fsutil import BlockWriter, atomic_write_bytes, fsync_dir
from airlock.hashing import CHUNK, iter_chunks, no_progress, sha256_bytes
from airlock.names import PATH_MAX

Progress = Callable[[int], None]
PARTIAL_SUFFIX = ".airlock-partial"
_INCOMING = ".incoming-"


@dataclass
class StageCounters:
    files_copied: int = 0
    files_reused: int = 0
    blocks_copied: int = 0
    blocks_reused: int = 0
    bytes_copied: int = 0
    bytes_reused: int = 0
    seconds: float = 0.0  # wall time of the stage (signature, copy, hashes)

    def audit(self) -> dict[str, float]:
        """What the install's audit record keeps of the stage (airlock metrics: staging throughput)."""
        return {"bytes": self.bytes_copied + self.bytes_reused, "bytes_copied": self.bytes_copied,
                "seconds": round(self.seconds, 3)}


_FROM_STAGING = object()  # only this module (staging, reopening a stage) makes a StagedBundle


@dataclass
class StagedBundle:
    """A bundle copied into ``path`` and verified there (``stage_bundle``, ``pack.stage_archive``) or
    a completed stage reopened (``open_staged``). It carries the verified manifest and signature bytes
    (``signed``): nothing downstream reads MANIFEST.json or its signature again or re-checks them."""

    path: Path
    signed: SignedManifest
    counters: StageCounters
    _origin: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._origin is not _FROM_STAGING:
            raise TypeError("a StagedBundle comes from staging (stage_bundle, stage_archive) or open_staged")

    @property
    def manifest(self) -> Manifest:
        return self.signed.manifest

    @property
    def signer(self) -> SignerInfo:
        return self.signed.signer

    def as_dict(self) -> dict[str, object]:
        m = self.manifest
        return {"ok": True, "staging": str(self.path), "bundle_id": m.bundle_id, "kind": m.kind,
                "sequence": m.sequence, "signer": self.signer.primary_fingerprint,
                "files": len(m.files), "bytes": m.total_bytes, **asdict(self.counters)}


def _prepare(stage: Path) -> None:
    """A staging directory is one Airlock made: mode 0700, owned by us, marked by ``STAGING_MARKER``.
    An empty directory is adopted (made 0700, marked); a non-empty one without the marker (someone's
    directory that merely holds a MANIFEST.json) is refused untouched, as is one with the marker whose
    owner or mode is wrong."""
    if os.path.lexists(stage):
        st = os.lstat(stage)
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafePathError(f"{stage}: staging path exists and is not a directory", path=str(stage),
                                  rule="staging")
        entries = os.listdir(stage)
        if entries and STAGING_MARKER not in entries:
            raise UnsafePathError(f"{stage}: directory is not empty and is not an Airlock staging directory "
                                  f"(no {STAGING_MARKER}); choose an empty or new directory", path=str(stage),
                                  rule="staging")
        if entries and (st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077):
            raise UnsafePathError(f"{stage}: staging directory has owner {st.st_uid} and mode "
                                  f"{stat.S_IMODE(st.st_mode):04o}; Airlock makes it {os.geteuid()}, 0700 "
                                  "(remove it and stage again)", path=str(stage), rule="staging")
        os.chmod(stage, 0o700)
    else:
        stage.mkdir(parents=True, mode=0o700)
        os.chmod(stage, 0o700)  # whatever the umask
    with contextlib.suppress(FileNotFoundError):
        os.unlink(stage / COMPLETE_MARKER)  # incomplete again until complete_stage()
        fsync_dir(stage)
    marker = stage / STAGING_MARKER
    if not os.path.lexists(marker):
        atomic_write_bytes(marker, b"airlock staging directory\n", 0o600)


def _check_path_max(stage: Path, m: Manifest) -> None:
    """Every staged path (with the partial suffix) fits PATH_MAX under this staging directory."""
    base = len(os.fsencode(str(stage.absolute()))) + 1
    for rel in m.files:
        n = base + len((rel + PARTIAL_SUFFIX).encode("utf-8"))
        if n >= PATH_MAX:
            raise UnsafePathError(f"{rel[:60]}...: {n} bytes as a path under {stage}, at least PATH_MAX "
                                  f"({PATH_MAX}); stage to a shorter directory", path=rel, rule="path-length")


def _open_partial(partial: Path) -> int:
    """The partial copy, never written through a link: created with O_EXCL|O_NOFOLLOW, or an earlier
    one reused only when it is a regular file of ours, mode 0600, with exactly one link."""
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(partial, flags | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    fd = os.open(partial, flags | os.O_NONBLOCK)  # O_NOFOLLOW: a symlink fails here (ELOOP)
    st = os.fstat(fd)
    if (not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_uid != os.geteuid()
            or stat.S_IMODE(st.st_mode) != 0o600):
        os.close(fd)
        raise UnsafePathError(f"{partial}: an earlier partial copy with {st.st_nlink} link(s), owner "
                              f"{st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o} (Airlock writes one link, "
                              "its own, 0600): not written through; remove the staging directory",
                              path=str(partial), rule="staging-link")
    os.set_blocking(fd, True)
    return fd


def _stage_manifest(root: Path, stage: Path, trust: Trust, compatible: str | None,
                    installed_sequence: int | None) -> SignedManifest:
    src = ManifestSource.from_dir(root)
    tmp_m, tmp_s = stage / f"{_INCOMING}{MANIFEST_NAME}", stage / f"{_INCOMING}{SIGNATURE_NAME}"
    try:
        atomic_write_bytes(tmp_m, src.data)
        atomic_write_bytes(tmp_s, src.signature or b"")
        # from here on only the staged bytes count
        staged = ManifestSource.from_dir(stage, tmp_m.name, tmp_s.name)
        signed = load_signed(ManifestSource(staged.data, staged.signature if src.signature is not None
                                            else None), trust)
        check_policy(signed.manifest, compatible=compatible, installed_sequence=installed_sequence)
        _check_path_max(stage, signed.manifest)
    except BaseException:
        for p in (tmp_m, tmp_s):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        raise
    os.replace(tmp_s, stage / SIGNATURE_NAME)
    os.replace(tmp_m, stage / MANIFEST_NAME)
    fsync_dir(stage)
    fault_point("stage-after-manifest")
    return signed


def _clean(stage: Path, m: Manifest) -> None:
    """Remove whatever an earlier stage left that this manifest does not name."""
    keep = ({MANIFEST_NAME, SIGNATURE_NAME, STAGING_MARKER} | set(m.files)
            | {r + PARTIAL_SUFFIX for r in m.files})
    keep_dirs = {str(p) for r in m.files for p in Path(r).parents if str(p) != "."}
    for dirpath, dirs, files in os.walk(stage, topdown=True, followlinks=False):
        rel_dir = Path(dirpath).relative_to(stage)
        for name in list(dirs):
            rel = (rel_dir / name).as_posix()
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                os.unlink(full)
                dirs.remove(name)
            elif rel not in keep_dirs:
                shutil.rmtree(full)
                dirs.remove(name)
        for name in files:
            rel = (rel_dir / name).as_posix()
            full = os.path.join(dirpath, name)
            if rel not in keep or not stat.S_ISREG(os.lstat(full).st_mode):
                os.unlink(full)


def _open_target(stage: Path, rel: str) -> io.FileIO:
    """The partial copy of ``rel``, opened for writing: a complete earlier copy is re-checked like a
    partial one; anything but a regular file of ours with one link is removed or refused."""
    final = stage / rel
    partial = stage / (rel + PARTIAL_SUFFIX)
    final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if os.path.lexists(final):
        st = os.lstat(final)
        if stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_uid == os.geteuid():
            os.chmod(final, 0o600)
            os.replace(final, partial)  # re-check a complete earlier copy like a partial one
        elif stat.S_ISREG(st.st_mode):
            raise UnsafePathError(f"{final}: an earlier staged copy with {st.st_nlink} link(s), owner "
                                  f"{st.st_uid}: not reused; remove the staging directory", path=str(final),
                                  rule="staging-link")
        else:
            os.unlink(final)
    if os.path.lexists(partial) and not stat.S_ISREG(os.lstat(partial).st_mode):
        os.unlink(partial)
    return os.fdopen(_open_partial(partial), "r+b", buffering=0)


def _seal(stage: Path, rel: str, out: io.FileIO, copied: int, counters: StageCounters) -> None:
    """A verified partial copy (cut to its size) becomes the staged file: fsync, final name, 0400."""
    with out:
        os.fsync(out.fileno())
    if copied:
        counters.files_copied += 1
    else:
        counters.files_reused += 1
    fault_point("stage-before-rename")
    final = stage / rel
    os.replace(stage / (rel + PARTIAL_SUFFIX), final)
    os.chmod(final, 0o400)
    fsync_dir(final.parent)


def _copy_raw(root: Path, stage: Path, rel: str, entry: FileEntry, counters: StageCounters,
              tick: Progress) -> None:
    """Stage one raw payload block by block: a block already present (from an interrupted or damaged
    earlier stage) is kept when it hashes to the manifest's block; any other block is read from the
    bundle once into a reused page-aligned buffer, written (O_DIRECT where the file system allows it:
    ``fsutil.BlockWriter``) and hashed, and must match. The file gets its final name only when its
    size, every block and the whole-file hash matched."""
    out = _open_target(stage, rel)
    files = payload_files(root, rel, entry.size, [p.size for p in entry.parts])  # parts, or whole when staged
    names, sizes = [n for n, _ in files], [s for _, s in files]
    raw = PartsReader(root, names, sizes, rel)
    checker = BlockChecker(rel, entry)
    bs = entry.block_size
    copied = 0
    buf = BUFFERS.get(CHUNK, CHUNK)
    with raw, out, BlockWriter(out.fileno()) as writer:
        have = os.fstat(out.fileno()).st_size
        src_pos = -1
        for i in range(len(entry.blocks)):
            start = i * bs
            length = min(bs, entry.size - start)
            if start + length <= have:
                out.seek(start)
                if checker.offer_block(iter_chunks(out, length)):
                    counters.blocks_reused += 1
                    counters.bytes_reused += length
                    tick(length)
                    continue
            if src_pos != start:
                raw.seek_to(start)
            try:
                at = start
                while at < start + length:
                    k = fill(raw, buf.data[:min(CHUNK, start + length - at)])
                    if not k:
                        break  # the medium ends early: the block check below says so
                    # a short last piece may be padded into the buffer's spare room (cut below)
                    writer.write_block(extent(buf) if at + k == entry.size else buf.data[:k], k, at)
                    checker.update(buf.data[:k])
                    counters.bytes_copied += k
                    tick(k)
                    at += k
                checker.close_block()  # a short last block is checked here too
                if checker.verified_blocks != i + 1:
                    raise IntegrityError(f"{rel}: {checker.size} bytes, manifest says {entry.size}",
                                         path=rel, rule="size")
            except IntegrityError:
                out.truncate(start)  # never keep unverified bytes for a later resume
                raise
            src_pos = start + length
            copied += 1
            counters.blocks_copied += 1
            fault_point("stage-mid-copy")
        writer.close()
        out.truncate(entry.size)
        try:
            checker.finish()
        except IntegrityError:
            out.truncate(0)
            raise
        _seal(stage, rel, out, copied, counters)
    BUFFERS.put(buf)


def stage_bundle(bundle_dir: Path, staging_dir: Path, trust: Trust, *, compatible: str | None = None,
                 installed_sequence: int | None = None, progress: Progress | None = None) -> StagedBundle:
    """Copy a bundle into ``staging_dir`` (fresh, or an earlier interrupted stage to resume)."""
    started = time.monotonic()
    root, stage = Path(bundle_dir), Path(staging_dir)
    if not root.is_dir() or root.is_symlink():
        raise IntegrityError(f"{root}: not a bundle directory", path=str(root), rule="missing")
    _prepare(stage)
    signed = _stage_manifest(root, stage, trust, compatible, installed_sequence)
    manifest = signed.manifest
    _clean(stage, manifest)
    check_sizes(root, manifest)  # same refusals as verify (extra or missing bytes) before any copy
    counters = StageCounters()
    tick = progress or no_progress
    coded: list[tuple[str, FileEntry]] = []
    for rel, entry in manifest.files.items():
        if codec.coded_here(root, entry):
            coded.append((rel, entry))
        else:
            _copy_raw(root, stage, rel, entry, counters, tick)
    # compressed payloads: one pipeline across files (frames checked, decoded, blocks checked, all cores)
    codec.stage_coded(root, coded, lambda rel, _e: _open_target(stage, rel),
                      lambda rel, _e, out, copied: _seal(stage, rel, out, copied, counters), counters, tick)
    fsync_dir(stage)
    counters.seconds = time.monotonic() - started
    return complete_stage(stage, signed, counters)


def complete_stage(stage: Path, signed: SignedManifest, counters: StageCounters) -> StagedBundle:
    """Mark ``stage`` complete (every payload staged and verified) and return it as a StagedBundle:
    the marker holds the sha256 of the staged manifest bytes and is written last, after an fsync of
    everything it vouches for."""
    fsync_dir(stage)
    atomic_write_bytes(stage / COMPLETE_MARKER, _marker(signed.data), 0o400)
    return StagedBundle(stage, signed, counters, _FROM_STAGING)


def _marker(manifest_bytes: bytes) -> bytes:
    return f"sha256:{sha256_bytes(manifest_bytes)}\n".encode()


def open_staged(staging_dir: Path, trust: Trust, *, compatible: str | None = None) -> StagedBundle:
    """Reopen a completed stage (e.g. staged by an earlier Ansible task) without copying or hashing
    a payload again: the directory must be an Airlock staging directory (ours, 0700, marked), its
    completion marker must name the staged manifest's sha256, the signature over the staged manifest
    is checked against ``trust``, then the profile; every payload must be the sealed file staging
    left (regular, one link, ours, 0400, its manifest size). The install hashes every byte it writes
    against the signed hashes anyway (a copied file, an applied delta's output)."""
    stage = Path(staging_dir)
    try:
        st = os.lstat(stage)
    except FileNotFoundError as exc:
        raise IntegrityError(f"{stage}: no such staging directory", path=str(stage), rule="missing") from exc
    if (not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077
            or not os.path.isfile(stage / STAGING_MARKER)):
        raise UnsafePathError(f"{stage}: not an Airlock staging directory (a directory of ours, mode 0700, "
                              f"holding {STAGING_MARKER}); stage the bundle first", path=str(stage),
                              rule="staging")
    src = ManifestSource.from_dir(stage)
    try:
        marker = read_limited(stage, COMPLETE_MARKER, 128, IntegrityError, "staging-incomplete")
    except IntegrityError as exc:
        raise IntegrityError(f"{stage}: staging did not complete (no {COMPLETE_MARKER}); stage the bundle "
                             "again (it resumes)", path=str(stage), rule="staging-incomplete") from exc
    if marker != _marker(src.data):
        raise IntegrityError(f"{stage}: {COMPLETE_MARKER} does not match the staged {MANIFEST_NAME}; stage "
                             "the bundle again", path=str(stage), rule="staging-incomplete")
    signed = load_signed(ManifestSource(src.data, src.signature or None), trust)  # staged empty: unsigned
    check_policy(signed.manifest, compatible=compatible, installed_sequence=None)
    for rel, entry in signed.manifest.files.items():
        try:
            pst = os.lstat(stage / rel)
        except FileNotFoundError as exc:
            raise IntegrityError(f"{stage / rel}: staged payload missing; stage the bundle again", path=rel,
                                 rule="missing") from exc
        if (not stat.S_ISREG(pst.st_mode) or pst.st_nlink != 1 or pst.st_uid != os.geteuid()
                or stat.S_IMODE(pst.st_mode) != 0o400 or pst.st_size != entry.size):
            raise IntegrityError(f"{stage / rel}: not the sealed copy staging left ({pst.st_size} bytes, "
                                 f"{pst.st_nlink} link(s), mode {stat.S_IMODE(pst.st_mode):04o}); stage the "
                                 "bundle again", path=rel, rule="staging-changed")
    return StagedBundle(stage, signed, StageCounters(), _FROM_STAGING)
