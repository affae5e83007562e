"""Build a signed bundle from a spec: copy payloads while hashing (splitting large ones into
FAT32-sized parts), write the canonical manifest once, sign it, rename the bundle into place."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from airlock import __version__, settings
from airlock.bundle.manifest import (
    CODED_FORMAT_VERSION,
    FORMAT_VERSION,
    MANIFEST_NAME,
    SIGNATURE_NAME,
    FileEntry,
    Manifest,
    ModelEntry,
    PartEntry,
    canonical_bytes,
    part_name,
)
from airlock.bundle.safeio import remove_stale
from airlock.bundle.signing import sign_bytes
from airlock.bundle.spec import BundleSpec, ModelSpec, check_model_dir, load_spec
from airlock.errors import DeltaFormatError, ManifestError, UnsafePathError
from airlock.faults import fault_point
from airlock.fsutil import chmod_where_supported, fsync_dir, fsync_tree, safe_relpath, staging_dir
from airlock.hashing import CHUNK, BlockHasher, no_progress, tree_files

Progress = Callable[[int], None]


def write_payload(src: Path, root: Path, rel: str, *, block_size: int, split_size: int,
                  progress: Progress = no_progress, compress: bool = False) -> FileEntry:
    """Copy ``src`` to ``root/rel`` (or ``rel.partNNN`` pieces of at most ``split_size`` bytes) while
    hashing: whole file, fixed-size blocks, and each part; with ``compress`` the stored bytes are
    its coded frames (``airlock.codec.stored``)."""
    safe_relpath(rel)
    if src.is_symlink() or not src.is_file():
        raise UnsafePathError(f"{src}: payload source is not a regular file", path=str(src), rule="path-type")
    if compress:
        from airlock.codec.stored import write_coded_payload

        return write_coded_payload(src, root, rel, block_size=block_size, split_size=split_size,
                                   progress=progress)
    size = src.stat().st_size
    split = size > split_size
    whole = BlockHasher(block_size)
    parts: list[PartEntry] = []
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fh:
        index = 0
        while True:
            name = part_name(rel, index) if split else rel
            part_hash = hashlib.sha256()
            written = 0
            limit = split_size if split else None
            with open(root / name, "wb") as out:
                while limit is None or written < limit:
                    want = CHUNK if limit is None else min(CHUNK, limit - written)
                    data = fh.read(want)
                    if not data:
                        break
                    out.write(data)
                    whole.update(data)
                    part_hash.update(data)
                    written += len(data)
                    progress(len(data))
                    fault_point("bundle-build-mid-copy")
            if split:
                parts.append(PartEntry(written, part_hash.hexdigest()))
            index += 1
            if not split or whole.size >= size:
                break
    digest = whole.finish()
    if digest.size != size:
        raise ManifestError(f"{src}: changed size while being copied", path=str(src), rule="spec")
    return FileEntry(size=digest.size, sha256=digest.sha256, block_size=block_size, blocks=digest.blocks,
                     parts=parts)


def _target_files_from_header(delta: Path) -> tuple[dict[str, dict[str, object]], str | None, str | None]:
    from airlock.delta import read_delta_header

    header = read_delta_header(delta)
    targets = {rel: {"size": int(info.size), "sha256": str(info.sha256)}
               for rel, info in sorted(header.target_files.items())}
    return targets, header.from_version, header.to_version


class _Builder:
    def __init__(self, spec: BundleSpec, root: Path, progress: Progress) -> None:
        self.spec = spec
        self.root = root
        self.progress = progress
        self.files: dict[str, FileEntry] = {}
        self.models: list[ModelEntry] = []

    def add(self, src: Path, rel: str, compress: bool = False) -> FileEntry:
        if rel in self.files or rel in (MANIFEST_NAME, SIGNATURE_NAME):
            raise ManifestError(f"{self.spec.source}: two payloads would be written to {rel}",
                                path=str(self.spec.source), rule="spec")
        entry = write_payload(src, self.root, rel, block_size=self.spec.block_size,
                              split_size=self.spec.split_size, progress=self.progress, compress=compress)
        self.files[rel] = entry
        return entry

    def add_model(self, ms: ModelSpec) -> None:
        if not ms.is_delta:
            assert ms.path is not None
            base = f"models/{ms.name}/{ms.version}"
            targets: dict[str, dict[str, object]] = {}
            for rel in tree_files(ms.path):
                entry = self.add(ms.path / rel, f"{base}/{rel}", compress=self.spec.compress)
                targets[rel] = {"size": entry.size, "sha256": entry.sha256}
            self.models.append(ModelEntry(name=ms.name, version=ms.version, kind="full", path=base,
                                          target_files=targets, description=ms.description,
                                          dependencies=ms.dependencies, golden=ms.golden))
            return
        rel = f"deltas/{ms.name}-{ms.from_version}-{ms.version}.aldelta"
        if ms.delta_file is not None:
            targets, hdr_from, hdr_to = _target_files_from_header(ms.delta_file)
            from_version = ms.from_version or hdr_from
            if from_version is None:
                raise ManifestError(f"{ms.delta_file}: no from_version in the spec or the delta header",
                                    path=str(ms.delta_file), rule="spec")
            if hdr_to is not None and hdr_to != ms.version:
                raise DeltaFormatError(f"{ms.delta_file}: delta goes to {hdr_to}, spec says {ms.version}",
                                       path=str(ms.delta_file))
            if ms.from_version is not None and hdr_from is not None and hdr_from != ms.from_version:
                raise DeltaFormatError(f"{ms.delta_file}: delta starts at {hdr_from}, spec says "
                                       f"{ms.from_version}", path=str(ms.delta_file))
            rel = f"deltas/{ms.name}-{from_version}-{ms.version}.aldelta"
            self.add(ms.delta_file, rel)
        else:
            from airlock.delta import make_delta

            assert ms.delta_old is not None and ms.delta_new is not None
            from_version = ms.from_version
            work = self.root / ".work"
            work.mkdir(exist_ok=True)
            tmp = work / Path(rel).name
            make_delta(ms.delta_old, ms.delta_new, tmp, from_version=from_version, to_version=ms.version)
            targets, _f, _t = _target_files_from_header(tmp)
            self.add(tmp, rel)
            shutil.rmtree(work)
        self.models.append(ModelEntry(name=ms.name, version=ms.version, kind="delta", path=rel,
                                      from_version=from_version, target_files=targets,
                                      description=ms.description, dependencies=ms.dependencies,
                                      golden=ms.golden))


def _created() -> str:
    epoch = settings.source_date_epoch()
    when = datetime.fromtimestamp(epoch, UTC) if epoch is not None else datetime.now(UTC)
    return when.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def build_bundle(spec_path: Path, out_dir: Path, *, signer: str, gnupghome: Path | None = None,
                 passphrase_file: Path | None = None, progress: Progress | None = None,
                 split_size: int | None = None, block_size: int | None = None,
                 compress: bool | None = None) -> Manifest:
    """Build ``out_dir`` (must not exist) from the spec; returns the signed manifest. ``compress``
    (default: the spec's ``compress``) stores full models' files coded (manifest format 2)."""
    spec = load_spec(Path(spec_path), split_size=split_size, block_size=block_size, compress=compress)
    out_dir = Path(out_dir)
    if os.path.lexists(out_dir) and not _unfinished(out_dir):
        raise ManifestError(f"{out_dir}: output directory already exists", path=str(out_dir), rule="output")
    remove_stale(out_dir, ".building-")
    # cheap checks before gigabytes are copied: every model loadable, the signer usable
    for ms in spec.models:
        if not ms.is_delta:
            check_model_dir(ms, spec.source)
    sign_bytes(b"airlock: signer check before the build", signer, gnupghome=gnupghome,
               passphrase_file=passphrase_file)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    in_place = not dir_rename_keeps_children(out_dir.parent)
    with (_in_place(out_dir) if in_place else staging_dir(out_dir, prefix=".building-")) as tmp:
        builder = _Builder(spec, tmp, progress or no_progress)
        for ms in spec.models:
            builder.add_model(ms)
        for extra in spec.files:
            builder.add(extra.src, extra.dest)
        manifest = Manifest(
            bundle_id=spec.bundle_id or f"{spec.source.stem}-{spec.sequence}",
            kind="delta" if any(m.kind == "delta" for m in builder.models) else "full",
            compatible=spec.compatible, sequence=spec.sequence, created=_created(),
            builder_version=__version__, files=builder.files, models=builder.models, rollback=spec.rollback,
            format_version=(CODED_FORMAT_VERSION if any(e.coding for e in builder.files.values())
                            else FORMAT_VERSION),
        )
        data = canonical_bytes(manifest)
        signature = sign_bytes(data, signer, gnupghome=gnupghome, passphrase_file=passphrase_file)
        (tmp / SIGNATURE_NAME).write_bytes(signature)
        (tmp / MANIFEST_NAME).write_bytes(data)  # last: without it nothing verifies
        chmod_where_supported(tmp, 0o755)  # FAT32 sticks hold no modes: skipped there
        fsync_tree(tmp)
        fault_point("bundle-build-before-rename")
        if not in_place:
            os.rename(tmp, out_dir)
    return manifest


_UNFINISHED = ".airlock-building"


def _unfinished(out_dir: Path) -> bool:
    """An in-place build cut short (kill -9, stick pulled): it carries the marker; a re-run replaces it."""
    return out_dir.is_dir() and not out_dir.is_symlink() and (out_dir / _UNFINISHED).exists()


def dir_rename_keeps_children(parent: Path) -> bool:
    """Whether renaming a directory keeps what is in it on this file system (probed before anything
    is copied). fusefat (FAT32 through FUSE, a stick mounted without the vfat kernel module) loses a
    directory's children when the directory is renamed; there the bundle is built in place."""
    probe = Path(tempfile.mkdtemp(prefix=".airlock-probe-", dir=parent))
    try:
        (probe / "a").mkdir()
        (probe / "a" / "f").write_bytes(b"")
        os.rename(probe / "a", probe / "b")
        return os.listdir(probe / "b") == ["f"]  # a lookup by name may still succeed there
    finally:
        shutil.rmtree(probe, ignore_errors=True)


@contextlib.contextmanager
def _in_place(out_dir: Path) -> Iterator[Path]:
    """Build straight into ``out_dir`` (where a directory cannot be renamed into place): marked
    unfinished until the end, MANIFEST.json written last, removed on any error."""
    if _unfinished(out_dir):
        shutil.rmtree(out_dir)
    out_dir.mkdir()
    marker = out_dir / _UNFINISHED
    marker.write_bytes(b"")
    try:
        yield out_dir
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise
    marker.unlink()
    fsync_dir(out_dir)
