"""``apply_delta``: check the source, rebuild every output file in a staging directory (hashing while
writing, checked against the recorded hashes), then rename the staging directory into place."""

from __future__ import annotations

import contextlib
import errno
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airlock import faults
from airlock.delta.container import RecordReader, verify_records
from airlock.delta.header import DeltaHeader, FileRecipe, read_delta_header
from airlock.delta.inventory import FileInfo, hash_regions
from airlock.delta.tables import TensorEntry, TensorTable
from airlock.errors import AirlockError, DeltaFormatError, DeltaSourceError, IntegrityError
from airlock.faults import fault_point
from airlock.fsutil import fsync_dir, fsync_tree, safe_relpath, staging_dir
from airlock.hashing import CHUNK, BlockHasher, copy_hashing, digest_file, no_progress
from airlock.names import DELTA_STAGING_PREFIX
from airlock.parallel import ordered_map

Progress = Callable[[int], None]
OWNER_FILE = ".airlock-delta-owner"


@dataclass
class ApplySummary:
    out_dir: Path
    from_version: str
    to_version: str
    files: int
    bytes_written: int
    linked: int
    reverse: bool

    def as_dict(self) -> dict[str, Any]:
        return {"out_dir": str(self.out_dir), "from_version": self.from_version,
                "to_version": self.to_version, "files": self.files, "bytes_written": self.bytes_written,
                "linked": self.linked, "reverse": self.reverse}


def verify_source(src_dir: Path, files: dict[str, FileInfo], tensors: TensorTable,
                  progress: Progress | None = None) -> None:
    """Every recorded input file must exist with the recorded size and hash; on a mismatch name the
    first tensor that differs. Files are hashed on both cores, each once; only a file that does not
    match is read again, tensor by tensor, to name the culprit."""

    def check(rel: str) -> None:
        want = files[rel]
        path = src_dir / rel
        if path.is_symlink() or not path.is_file():
            raise DeltaSourceError(f"{path}: missing from the source (the delta needs it)", path=str(path),
                                   rule="delta-source-missing")
        got = digest_file(path, progress=progress or no_progress)
        if got.sha256 == want.sha256 and got.size == want.size:
            return
        ts = sorted((t for t in tensors if t.file == rel), key=lambda t: t.offset)
        size, sha, digests = hash_regions(path, [(t.offset, t.offset + t.nbytes) for t in ts])
        for t, d in zip(ts, digests, strict=True):
            got_hex = d.hex()[:len(t.digest)]
            if got_hex != t.digest:
                raise DeltaSourceError(f"{path}: tensor {t.name!r} does not match the delta's source "
                                       f"(digest {got_hex}..., expected {t.digest}...)", path=str(path),
                                       rule="delta-source-tensor")
        raise DeltaSourceError(f"{path}: does not match the delta's source (size {size}, expected "
                               f"{want.size}; sha256 {sha[:16]}..., expected {want.sha256[:16]}...)",
                               path=str(path), rule="delta-source-file")

    # largest first keeps both cores busy to the end; errors still surface in a fixed order
    for _ in ordered_map(check, sorted(files, key=lambda r: (-files[r].size, r))):
        pass


def _process_token(pid: int) -> str | None:
    """``pid:starttime`` of a live process (the start time guards against pid reuse), else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return f"{pid}:{stat.rsplit(')', 1)[1].split()[19]}"


def _cleanup_stale(out_dir: Path) -> None:
    """Remove staging directories of earlier applies to the same output whose process is gone
    (killed): the owner token inside names a process that no longer runs."""
    for d in out_dir.parent.glob(f"{DELTA_STAGING_PREFIX}{out_dir.name}-*"):
        try:
            token = (d / OWNER_FILE).read_text()
        except OSError:
            token = ""
        if not token:
            with contextlib.suppress(OSError):
                if time.time() - d.stat().st_mtime > 60:  # owner never written: long dead
                    shutil.rmtree(d, ignore_errors=True)
            continue
        pid = int(token.split(":")[0]) if token.split(":")[0].isdigit() else -1
        if _process_token(pid) != token:
            shutil.rmtree(d, ignore_errors=True)


class _Builder:
    def __init__(self, header: DeltaHeader, reader: RecordReader, src_dir: Path, reverse: bool) -> None:
        self.h, self.reader, self.src, self.reverse = header, reader, src_dir, reverse
        in_files, self.tensors, _ = header.sides(reverse)
        self.in_files = in_files
        self.fds: dict[str, int] = {}

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)

    def _read(self, rel: str, offset: int, length: int) -> bytes:
        if rel not in self.in_files:
            raise DeltaFormatError(f"recipe references {rel!r}, which is not a recorded input file",
                                   rule="delta-format")
        fd = self.fds.get(rel)
        if fd is None:
            fd = self.fds[rel] = os.open(self.src / rel, os.O_RDONLY)
        data = os.pread(fd, length, offset)
        if len(data) != length:
            raise DeltaSourceError(f"{self.src / rel}: shorter than recorded (changed during apply?)",
                                   path=str(self.src / rel), rule="delta-source-file")
        return data

    def _tensor(self, tid: int) -> TensorEntry:
        if not isinstance(tid, int) or not 0 <= tid < len(self.tensors):
            raise DeltaFormatError(f"recipe references unknown tensor {tid!r}", rule="delta-format")
        return self.tensors[tid]

    def tasks(self, pieces: list[list[Any]]) -> Iterator[list[Any]]:
        """Split pieces into tasks of bounded size (big copies are chunked)."""
        for p in pieces:
            if p[0] == "copy":
                t = self._tensor(p[1])
                off, n = int(p[2]), int(p[3])
                if off < 0 or n < 0 or off + n > t.nbytes:
                    raise DeltaFormatError(f"copy piece outside tensor {t.name!r}", rule="delta-format")
                while n > 0:
                    k = min(n, CHUNK)
                    yield ["copy", p[1], off, k]
                    off += k
                    n -= k
            elif p[0] in ("rec", "diff", "prefix"):
                yield p
            else:
                raise DeltaFormatError(f"unexpected piece {p[0]!r} inside a file recipe", rule="delta-format")

    def run(self, task: list[Any]) -> bytes:
        kind = task[0]
        if kind == "copy":
            t = self._tensor(task[1])
            return self._read(t.file, t.offset + task[2], task[3])
        if kind == "rec":
            return self.reader.decode(task[1])
        if kind == "diff":
            t = self._tensor(task[1])
            rid = task[3]
            if not isinstance(rid, int) or not 0 <= rid < len(self.h.records):
                raise DeltaFormatError(f"recipe references unknown record {rid!r}", rule="delta-format")
            n = self.h.records[rid].raw_len
            if task[2] < 0 or task[2] + n > t.nbytes:
                raise DeltaFormatError(f"diff piece outside tensor {t.name!r}", rule="delta-format")
            base = self._read(t.file, t.offset + task[2], n)
            return self.reader.decode(rid, base, reverse=self.reverse, dtype=t.dtype)
        # prefix: the whole same-path input file is the zstd prefix (small non-tensor files only)
        rel = task[1]
        info = self.in_files.get(rel)
        if info is None:
            raise DeltaFormatError(f"prefix piece references unknown input file {rel!r}", rule="delta-format")
        return self.reader.decode(task[2], self._read(rel, 0, info.size))


def _build_file(b: _Builder, recipe: FileRecipe, dest: Path, want: FileInfo, link: bool,
                progress: Progress | None) -> tuple[int, bool]:
    """Write one output file; returns (bytes written, hard-linked?)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    pieces = recipe.pieces
    if len(pieces) == 1 and pieces[0][0] == "file":
        rel = pieces[0][1]
        if rel not in b.in_files:
            raise DeltaFormatError(f"recipe for {recipe.path} references unknown input file {rel!r}",
                                   rule="delta-format")
        src = b.src / rel
        if link:
            try:
                os.link(src, dest)
                if progress:
                    progress(want.size)
                return 0, True  # the source was verified by hash just before
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                    raise
        with open(src, "rb") as fi, open(dest, "wb") as fo:
            digest = copy_hashing(fi, fo, progress=progress or no_progress)
            fo.flush()
            os.fsync(fo.fileno())
    else:
        hasher = BlockHasher()
        with open(dest, "wb") as fo:
            for i, data in enumerate(ordered_map(b.run, b.tasks(pieces))):
                fo.write(data)
                hasher.update(data)
                if progress:
                    progress(len(data))
                if i == 1:
                    fault_point("delta.apply.mid-file")
            fo.flush()
            os.fsync(fo.fileno())
        digest = hasher.finish()
    if digest.size != want.size or digest.sha256 != want.sha256:
        raise IntegrityError(f"{recipe.path}: rebuilt file does not match the recorded hash (size "
                             f"{digest.size}, expected {want.size}); the delta or the source is inconsistent",
                             path=recipe.path, rule="delta-output-hash")
    return digest.size, False


FILE_WORKERS = 2
"""Output files rebuilt at once, each in its own process: the Python-level work around the GIL-free
calls (decoding, hashing, writing) keeps threads from filling both cores. A single-file model uses
threads within the file."""


@dataclass
class _Job:
    """What a forked worker needs; set in the parent before the pool starts (inherited, not pickled)."""

    builder: _Builder
    stage: Path
    recipes: list[FileRecipe]
    out_files: dict[str, FileInfo]
    link: bool

    def build(self, index: int, progress: Progress | None) -> tuple[int, bool]:
        recipe = self.recipes[index]
        rel = safe_relpath(recipe.path).as_posix()
        return _build_file(self.builder, recipe, self.stage / rel, self.out_files[rel], self.link, progress)


_JOB: _Job | None = None


def _worker_init(parent: int) -> None:
    """Runs first in each worker: die with the parent (a kill -9 of the command must not leave a
    worker writing into a staging directory the next run removes)."""
    import ctypes
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)
    faults.worker_of(parent)


def _worker_build(index: int) -> tuple[int, bool]:
    assert _JOB is not None, "worker started without a job"
    return _JOB.build(index, None)


def _build_all(job: _Job, progress: Progress | None) -> tuple[int, int]:
    """Rebuild every output file of ``job``; returns (bytes written, files hard-linked)."""
    global _JOB
    sizes = [job.out_files[safe_relpath(r.path).as_posix()].size for r in job.recipes]
    heavy = [i for i, r in enumerate(job.recipes) if not (job.link and r.whole_file())]
    results: dict[int, tuple[int, bool]] = {}
    if len(heavy) > 1 and FILE_WORKERS > 1:
        ctx = multiprocessing.get_context("fork")
        _JOB = job
        pool = ProcessPoolExecutor(FILE_WORKERS, mp_context=ctx, initializer=_worker_init,
                                   initargs=(os.getpid(),))
        try:
            futures = {i: pool.submit(_worker_build, i) for i in sorted(heavy, key=lambda i: -sizes[i])}
            for i in heavy:  # in recipe order: the first failing file is the one reported
                try:
                    results[i] = futures[i].result()
                except BrokenProcessPool as exc:
                    raise AirlockError(f"a worker process died while rebuilding {job.recipes[i].path}",
                                       path=job.recipes[i].path, rule="delta-worker") from exc
                if progress:
                    progress(sizes[i])
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # nothing may write once we clean up
            _JOB = None
    for i in range(len(job.recipes)):
        if i not in results:
            results[i] = job.build(i, progress)
    return sum(n for n, _ in results.values()), sum(linked for _, linked in results.values())


def apply_delta(src_dir: Path, delta_path: Path, out_dir: Path, *, reverse: bool = False,
                link_unchanged: bool = True, progress: Progress | None = None,
                records_checked: bool = False) -> ApplySummary:
    """Rebuild the target (or, with ``reverse``, the source) version of the delta into ``out_dir``.
    ``records_checked``: the whole delta was just hashed against a signed manifest (a staged
    bundle's), so the sequential pre-pass over every record is skipped; each record used is still
    checked against its own sha256 when read."""
    src_dir, delta_path, out_dir = Path(src_dir), Path(delta_path), Path(out_dir)
    header = read_delta_header(delta_path)
    recipes = header.recipes(reverse)
    in_files, in_tensors, out_files = header.sides(reverse)
    if sorted(r.path for r in recipes) != sorted(out_files):
        raise DeltaFormatError(f"{delta_path}: recipes do not cover exactly the recorded output files",
                               path=str(delta_path), rule="delta-format")
    if out_dir.exists() or out_dir.is_symlink():
        raise AirlockError(f"{out_dir}: output directory already exists; refusing to overwrite",
                           path=str(out_dir), rule="delta-output-exists")
    if not src_dir.is_dir():
        raise DeltaSourceError(f"{src_dir}: source directory does not exist", path=str(src_dir),
                               rule="delta-source-missing")
    for recipe in recipes:
        if safe_relpath(recipe.path).as_posix() == OWNER_FILE:
            raise DeltaFormatError(f"{delta_path}: reserved output name {OWNER_FILE}", rule="delta-format")
    if not records_checked:
        verify_records(delta_path, header.records)
    verify_source(src_dir, in_files, in_tensors, progress)
    _cleanup_stale(out_dir)
    reader = RecordReader(delta_path, header.records)
    builder = _Builder(header, reader, src_dir, reverse)
    try:
        with staging_dir(out_dir, prefix=DELTA_STAGING_PREFIX) as stage:
            (stage / OWNER_FILE).write_text(_process_token(os.getpid()) or str(os.getpid()))
            try:
                job = _Job(builder, stage, recipes, out_files, link_unchanged)
                written, linked = _build_all(job, progress)
            except (KeyError, IndexError, TypeError, ValueError) as exc:
                raise DeltaFormatError(f"{delta_path}: malformed recipe ({exc!r})", path=str(delta_path),
                                       rule="delta-format") from exc
            fsync_tree(stage)
            fault_point("delta.apply.before-rename")
            (stage / OWNER_FILE).unlink()
            fsync_dir(stage)
            os.rename(stage, out_dir)
            fsync_dir(out_dir.parent)
    finally:
        builder.close()
        reader.close()
    frm, to = header.from_version, header.to_version
    if reverse:
        frm, to = to, frm
    return ApplySummary(out_dir, frm, to, len(recipes), written, linked, reverse)
