"""Compressed payloads on the bundle medium: build (code while hashing), verify (stored frames) and
stage (read, check, decode, hash and write in one streaming pass on all cores).

A coded payload's manifest entry keeps the uncompressed file's ``size``, ``sha256`` and block hashes
and adds ``coding``: the stored stream's size and sha256 and one ``{size, sha256}`` per frame, frame
``i`` coding block ``i``. FAT32 parts split the stored stream. Every frame is checked against its
signed hash before it is decoded, every decoded block against its signed block hash before it is
written, and the whole file against its sha256 before it gets its final name: a damaged, truncated
or wrongly decoding part is an IntegrityError (exit 13), like a damaged raw part."""

from __future__ import annotations

import hashlib
import io
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO, Protocol

import numpy as np

from airlock.buffers import BUFFERS, Reader, extent, fill
from airlock.bundle.manifest import Coding, FileEntry, PartEntry, part_name
from airlock.bundle.safeio import PartsReader, staged_layout
from airlock.codec.frame import CODEC, FrameError, Segment, decode_block, encode_block, split_block
from airlock.codec.layout import file_layout
from airlock.errors import IntegrityError, ManifestError
from airlock.faults import fault_point
from airlock.fsutil import BlockWriter
from airlock.parallel import ordered_map

Progress = Callable[[int], None]
MEMORY_BUDGET = 1 << 30
"""Blocks in flight (read, coded, decoded) are bounded to about this many bytes: with 64 MiB blocks
about five at once, whatever the model's size."""


def workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def _window(block_size: int) -> tuple[int, int]:
    """(workers, blocks in flight) for blocks of ``block_size``: all cores, memory bounded."""
    in_flight = max(2, MEMORY_BUDGET // max(3 * block_size, 1))
    n = max(1, min(workers(), in_flight))
    return n, max(n, min(in_flight, 2 * n))


def stored_files(rel: str, entry: FileEntry) -> list[tuple[str, int]]:
    """The files holding a coded payload on the bundle medium, with their sizes, in order."""
    if entry.parts:
        return [(part_name(rel, i), p.size) for i, p in enumerate(entry.parts)]
    return [(rel, entry.stored_size)]


_SEGMENTS: list[ThreadPoolExecutor] = []
_SEGMENTS_LOCK = threading.Lock()


def _segment_pool() -> ThreadPoolExecutor | None:
    """Threads (one per core, started once) that decode the segments of a frame in parallel; None on
    one core. Only ``decode_block`` submits here and these tasks submit nothing, so the block workers
    waiting on them cannot deadlock."""
    if workers() < 2:
        return None
    with _SEGMENTS_LOCK:
        if not _SEGMENTS:
            _SEGMENTS.append(ThreadPoolExecutor(workers(), thread_name_prefix="airlock-segment"))
        return _SEGMENTS[0]


def _read_exact(fh: Reader, n: int, name: str, into: np.ndarray | None = None) -> memoryview:
    """``n`` bytes of ``fh`` in private memory (``into``, else a new buffer): read straight into an
    uninitialised buffer (a zeroed ``bytearray`` plus a ``bytes`` copy each cost about a sha256 of the
    block). Private: what is hashed is what is decoded, whatever the medium does meanwhile."""
    view = (np.empty(n, dtype=np.uint8) if into is None else into[:n]).data
    got = fill(fh, view)
    if got < n:
        raise IntegrityError(f"{name}: stored stream ends {n - got} bytes early", path=name, rule="size")
    return view


def _bad_frame(rel: str, i: int, entry: FileEntry, why: str) -> IntegrityError:
    start = i * entry.block_size
    return IntegrityError(f"{rel}: coded block {i} (bytes {start}..{start + entry.block_size}) {why}",
                          path=rel, rule="block-hash")


# ------------------------------------------------------------------------------------------- build


@dataclass
class _Coded:
    index: int
    data: memoryview
    frame: bytes
    block_sha: str
    frame_sha: str


class _PartWriter:
    """Write the stored stream as ``rel.part000, .part001, ...`` of at most ``split_size`` bytes; a
    stream that fits one part is renamed to ``rel`` at the end (no parts)."""

    def __init__(self, root: Path, rel: str, split_size: int) -> None:
        self.root, self.rel, self.split = root, rel, split_size
        self.parts: list[PartEntry] = []
        self._fh: BinaryIO | None = None
        self._hash = hashlib.sha256()
        self._n = 0

    def _close_part(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self.parts.append(PartEntry(self._n, self._hash.hexdigest()))
            self._fh, self._hash, self._n = None, hashlib.sha256(), 0

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._fh is None:
                self._fh = open(self.root / part_name(self.rel, len(self.parts)), "wb")  # noqa: SIM115
            take = min(len(view), self.split - self._n)
            self._fh.write(view[:take])
            self._hash.update(view[:take])
            self._n += take
            view = view[take:]
            if self._n >= self.split:
                self._close_part()

    def finish(self) -> list[PartEntry]:
        self._close_part()
        if len(self.parts) <= 1:
            first = self.root / part_name(self.rel, 0)
            if self.parts:
                os.replace(first, self.root / self.rel)
            else:
                (self.root / self.rel).write_bytes(b"")
            return []
        return self.parts


def write_coded_payload(src: Path, root: Path, rel: str, *, block_size: int, split_size: int,
                        progress: Progress) -> FileEntry:
    """Code ``src`` into ``root/rel`` (or parts) block by block on all cores, hashing the source
    (whole file and blocks), each frame, each part and the whole stored stream."""
    size = src.stat().st_size
    layout = file_layout(src, size)
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    n_workers, window = _window(block_size)

    def blocks(fh: io.BufferedReader) -> Iterator[tuple[int, memoryview]]:
        for i in range(-(-size // block_size)):
            data = _read_exact(fh, min(block_size, size - i * block_size), str(src))
            yield i, data

    def code(item: tuple[int, memoryview]) -> _Coded:
        i, data = item
        start = i * block_size
        segments: list[Segment] = list(split_block(layout, start, start + len(data)))
        frame = encode_block(data, segments, start)
        return _Coded(i, data, frame, hashlib.sha256(data).hexdigest(), hashlib.sha256(frame).hexdigest())

    whole, stored = hashlib.sha256(), hashlib.sha256()
    out = _PartWriter(root, rel, split_size)
    block_hashes: list[str] = []
    frames: list[PartEntry] = []
    with open(src, "rb") as fh:
        for c in ordered_map(code, blocks(fh), n_workers, window):
            whole.update(c.data)
            stored.update(c.frame)
            out.write(c.frame)
            block_hashes.append(c.block_sha)
            frames.append(PartEntry(len(c.frame), c.frame_sha))
            progress(len(c.data))
            fault_point("bundle-build-mid-copy")
        if fh.read(1):
            raise ManifestError(f"{src}: changed size while being coded", path=str(src), rule="spec")
    parts = out.finish()
    coding = Coding(CODEC, sum(f.size for f in frames), stored.hexdigest(), frames)
    return FileEntry(size=size, sha256=whole.hexdigest(), block_size=block_size, blocks=block_hashes,
                     parts=parts, coding=coding)


# ------------------------------------------------------------------------------------------ verify


def check_stored(root: Path, rel: str, entry: FileEntry, progress: Progress) -> None:
    """Verify a coded payload on the medium: every frame against its signed hash (fail at the first
    bad one), then the whole stored stream's sha256. Decoding is staging's job (``stage_coded``)."""
    assert entry.coding is not None
    whole = hashlib.sha256()
    with _medium(root, rel, entry) as raw:
        for i, f in enumerate(entry.coding.frames):
            frame = _read_exact(raw, f.size, rel)
            if hashlib.sha256(frame).hexdigest() != f.sha256:
                raise _bad_frame(rel, i, entry, "does not match its manifest hash")
            whole.update(frame)
            progress(len(frame))
    if whole.hexdigest() != entry.coding.sha256:
        raise IntegrityError(f"{rel}: stored sha256 does not match the manifest", path=rel, rule="sha256")


# ------------------------------------------------------------------------------------------- stage


class Counters(Protocol):
    """What staging counts (``airlock.bundle.stage.StageCounters``)."""

    blocks_copied: int
    blocks_reused: int
    bytes_copied: int
    bytes_reused: int


def coded_here(root: Path, entry: FileEntry) -> bool:
    """Whether ``root`` holds this payload coded: a bundle as built does; a staged bundle (a staging
    directory, a depot entry: marked by staging) holds it decoded."""
    return entry.coding is not None and not staged_layout(root)


def _decode_checked(rel: str, entry: FileEntry, i: int, frame: bytes | bytearray | memoryview,
                    out: memoryview | None = None) -> memoryview:
    """Block ``i`` from its frame: the frame's signed sha256 first (only signed bytes reach the
    decoder), then the decoded block's signed sha256. Both hashes and the decoder release the GIL, so
    blocks are checked and decoded on all cores. ``out``: a buffer for the block (else a new one)."""
    assert entry.coding is not None
    if hashlib.sha256(frame).hexdigest() != entry.coding.frames[i].sha256:
        raise _bad_frame(rel, i, entry, "does not match its manifest hash")
    length = min(entry.block_size, entry.size - i * entry.block_size)
    try:
        data = decode_block(frame, length, out, _segment_pool())
    except FrameError as exc:
        raise _bad_frame(rel, i, entry, f"does not decode ({exc})") from exc
    if hashlib.sha256(data).hexdigest() != entry.blocks[i]:
        raise _bad_frame(rel, i, entry, "decodes to bytes that do not match the block hash")
    return data


def _decode_pooled(rel: str, entry: FileEntry, i: int, frame: np.ndarray) -> np.ndarray:
    """``_decode_checked`` into a reused block buffer; the frame's buffer goes back to the pool."""
    bs = entry.block_size
    block = BUFFERS.get(min(bs, entry.size - i * bs), bs)
    _decode_checked(rel, entry, i, frame.data, block.data)
    BUFFERS.put(frame)
    return block


@dataclass
class _Target:
    """One coded payload being staged: its partial copy (``out``, ``have`` bytes long at the start)
    and where its frames are on the medium."""

    rel: str
    entry: FileEntry
    out: io.FileIO
    writer: BlockWriter
    have: int
    offsets: list[int]
    copied: int = 0
    verified: int = 0

    def close(self) -> None:
        self.writer.close()
        self.out.close()


_Task = tuple[_Target, int, np.ndarray | None, bool]
"""(payload, block index or -1 at its end, the frame or existing block, whether it is existing)"""
OpenTarget = Callable[[str, FileEntry], io.FileIO]
SealTarget = Callable[[str, FileEntry, io.FileIO, int], None]


def _frame_offsets(entry: FileEntry) -> list[int]:
    assert entry.coding is not None
    offsets = [0]
    for f in entry.coding.frames:
        offsets.append(offsets[-1] + f.size)
    return offsets


def _medium(root: Path, rel: str, entry: FileEntry) -> PartsReader:
    files = stored_files(rel, entry)
    return PartsReader(root, [n for n, _ in files], [s for _, s in files], rel)


def _read_frame(raw: PartsReader, t: _Target, i: int, at: int) -> np.ndarray:
    """Frame ``i`` of ``t`` into a pooled buffer; ``at``: where ``raw`` is now."""
    assert t.entry.coding is not None
    if at != t.offsets[i]:
        raw.seek_to(t.offsets[i])
    buf = BUFFERS.get(t.entry.coding.frames[i].size, t.entry.block_size)
    _read_exact(raw, t.entry.coding.frames[i].size, t.rel, buf)
    return buf


def stage_coded(root: Path, payloads: list[tuple[str, FileEntry]], open_target: OpenTarget,
                seal: SealTarget, count: Counters, progress: Progress) -> None:
    """Stage the coded ``payloads`` (``coded_here``) in one pipeline: frames are read here, checked and
    decoded on all cores, and the verified blocks written here in order, file after file, so the cores
    stay busy across file boundaries (a model of many 2-3 block shards would otherwise fill and drain
    the pipeline per file). ``open_target(rel, entry)`` gives the partial copy of a payload (opened
    when the pipeline reaches it; blocks already there that hash to the manifest are kept);
    ``seal(rel, entry, out, blocks_copied)`` gets it once every block is verified and written and the
    file cut to its size (the caller fsyncs, closes and renames). Blocks are written with O_DIRECT
    where the file system allows it (``fsutil.BlockWriter``).

    One check per trust step: the frame's signed sha256 before decoding (the medium), the decoded
    block's signed sha256 before writing (the decoder). Every block of the file, of exactly the signed
    size, matches its signed hash, so the whole file is the signed file; the serial whole-file sha256
    over the decoded bytes (one more sha256 per byte on one core) is not recomputed here (the raw path
    still computes it: there it is the only hash of the bytes as read). A failure raises
    IntegrityError; a partial copy never keeps unverified bytes (only verified blocks are written)."""
    n_workers, window = _window(max((e.block_size for _, e in payloads), default=1))
    opened: list[_Target] = []

    def tasks() -> Iterator[_Task]:
        for rel, entry in payloads:
            out = open_target(rel, entry)
            t = _Target(rel, entry, out, BlockWriter(out.fileno()), os.fstat(out.fileno()).st_size,
                        _frame_offsets(entry))
            opened.append(t)
            bs = entry.block_size
            with _medium(root, rel, entry) as raw:
                at = -1
                for i in range(len(entry.blocks)):
                    start = i * bs
                    length = min(bs, entry.size - start)
                    if start + length <= t.have:
                        out.seek(start)
                        buf = BUFFERS.get(length, bs)
                        _read_exact(out, length, rel, buf)
                        yield t, i, buf, True
                    else:
                        yield t, i, _read_frame(raw, t, i, at), False
                        at = t.offsets[i + 1]
            yield t, -1, None, False  # end of this file's blocks

    def work(task: _Task) -> _Task:
        t, i, data, existing = task
        if data is None:
            return task
        if existing:
            if hashlib.sha256(data.data).hexdigest() == t.entry.blocks[i]:
                return task
            BUFFERS.put(data)  # a damaged block of an earlier copy: from the medium again
            with _medium(root, t.rel, t.entry) as raw:
                data = _read_frame(raw, t, i, -1)
        return t, i, _decode_pooled(t.rel, t.entry, i, data), False

    try:
        for t, i, data, existing in ordered_map(work, tasks(), n_workers, window):
            if data is None:
                _finish(t, seal)
                opened.remove(t)
                continue
            if existing:
                count.blocks_reused += 1
                count.bytes_reused += len(data)
            else:
                start = i * t.entry.block_size
                try:
                    last = i == len(t.entry.blocks) - 1  # only its short block may be padded
                    t.writer.write_block(extent(data) if last else data.data, len(data), start)
                    t.copied += 1
                    count.blocks_copied += 1
                    count.bytes_copied += len(data)
                    fault_point("stage-mid-copy")
                except BaseException:
                    t.out.truncate(start)  # never keep a block cut short (a full disk) for a resume
                    raise
            t.verified += 1
            progress(len(data))
            BUFFERS.put(data)
    finally:
        for t in opened:  # an error: the partial copies keep their verified blocks
            t.close()


def _finish(t: _Target, seal: SealTarget) -> None:
    t.writer.close()
    t.out.truncate(t.entry.size)  # also drops a padded last block's zeros
    if t.verified != len(t.entry.blocks) or t.entry.size > len(t.entry.blocks) * t.entry.block_size:
        t.out.truncate(0)  # validate() rules this out
        raise IntegrityError(f"{t.rel}: {t.verified} of {len(t.entry.blocks)} blocks verified", path=t.rel,
                             rule="size")
    seal(t.rel, t.entry, t.out, t.copied)


# ------------------------------------------------------------------------------------ packed (tar)


class FrameStream:
    """A coded payload arriving as a stream (the members of a packed bundle): ``update`` takes the
    stored bytes in any piece size and checks each frame against its signed hash as soon as it is
    whole; with ``decode`` the frame is checked, decoded and its block checked on a worker thread (all
    cores, a bounded window of frames in flight) and the verified blocks are written to ``sink`` in
    order. ``drain`` writes every block still in flight (before the sink changes or closes);
    ``finish`` drains and checks the stored stream's sha256. Memory: the window of frames."""

    def __init__(self, rel: str, entry: FileEntry, *, decode: bool = False) -> None:
        assert entry.coding is not None
        self.rel, self.entry, self.decode = rel, entry, decode
        self.frames = entry.coding.frames
        self.sink: IO[bytes] | None = None
        self._frame: np.ndarray | None = None  # the frame being filled (a fresh buffer for each frame)
        self._fill = 0
        self._i = 0
        self._stored = hashlib.sha256()
        n_workers, self._window = _window(entry.block_size)
        self._pool = ThreadPoolExecutor(n_workers, thread_name_prefix="airlock-decode") if decode else None
        self._pending: deque[Future[np.ndarray]] = deque()

    def update(self, data: bytes | memoryview) -> None:
        self._stored.update(data)
        view = memoryview(data)
        while view:
            if self._i >= len(self.frames):
                raise IntegrityError(f"{self.rel}: larger than its stored size {self.entry.stored_size}",
                                     path=self.rel, rule="size")
            size = self.frames[self._i].size
            if self._frame is None:
                self._frame = BUFFERS.get(size, self.entry.block_size)
            take = min(len(view), size - self._fill)
            self._frame.data[self._fill:self._fill + take] = view[:take]
            self._fill += take
            view = view[take:]
            if self._fill == size:
                frame, self._frame, self._fill = self._frame, None, 0
                self._frame_done(frame)

    def _frame_done(self, frame: np.ndarray) -> None:
        i = self._i
        if self._pool is None:
            if hashlib.sha256(frame.data).hexdigest() != self.frames[i].sha256:
                raise _bad_frame(self.rel, i, self.entry, "does not match its manifest hash")
            BUFFERS.put(frame)
        else:
            self._pending.append(self._pool.submit(_decode_pooled, self.rel, self.entry, i, frame))
            while len(self._pending) >= self._window:
                self._write_oldest()
        self._i += 1

    def _write_oldest(self) -> None:
        try:
            block = self._pending.popleft().result()
        except BaseException:
            self.close()
            raise
        if self.sink is not None:
            self.sink.write(block.data)
        BUFFERS.put(block)

    def drain(self) -> None:
        """Write every block still being decoded, in order."""
        while self._pending:
            self._write_oldest()

    def close(self) -> None:
        """Stop decoding (after an error): frames not yet started are dropped."""
        for fut in self._pending:
            fut.cancel()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def finish(self) -> str:
        self.drain()
        self.close()
        if self._i != len(self.frames) or self._fill:
            raise IntegrityError(f"{self.rel}: stored stream ends inside frame {self._i}", path=self.rel,
                                 rule="size")
        assert self.entry.coding is not None
        if self._stored.hexdigest() != self.entry.coding.sha256:
            raise IntegrityError(f"{self.rel}: stored sha256 does not match the manifest", path=self.rel,
                                 rule="sha256")
        return self.entry.sha256
