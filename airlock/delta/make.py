"""``make_delta``: plan per-tensor pieces for both directions, encode chunks on two cores, write the
container to a temp file beside the output and rename it into place."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from airlock import __version__
from airlock.delta import codec
from airlock.delta.container import DeltaWriter
from airlock.delta.header import INDEX_FORMAT_VERSION
from airlock.delta.inventory import TENSOR_DIGEST, Inventory, is_safetensors, scan
from airlock.delta.tables import PieceTable, TensorEntry
from airlock.errors import AirlockError
from airlock.faults import fault_point
from airlock.fsutil import fsync_dir
from airlock.parallel import ordered_map

DEFAULT_CHUNK = 4 * 1024 * 1024
PREFIX_LIMIT = 64 * 1024 * 1024
"""Non-tensor files up to this size are compressed with the other version as zstd prefix (in RAM)."""

META_LEVEL = 12
"""zstd level for safetensors headers and prefix-coded small files (JSON). Level 19 saves ~2 KB
per file and costs ~1 s per MB: DeepSeek-V3's weight-map JSON alone is ~9 MB."""

Progress = Callable[[int], None]


@dataclass
class DeltaSummary:
    path: Path
    size: int
    source_bytes: int
    target_bytes: int
    from_version: str
    to_version: str
    reversible: bool
    records: int
    tensors: dict[str, int] = field(default_factory=dict)
    """Target tensors by treatment: unchanged, diff, grown, new; and removed source tensors."""

    def as_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "size": self.size, "source_bytes": self.source_bytes,
                "target_bytes": self.target_bytes, "from_version": self.from_version,
                "to_version": self.to_version, "reversible": self.reversible, "records": self.records,
                "tensors": self.tensors,
                "ratio": round(self.size / self.target_bytes, 6) if self.target_bytes else None}


# A work item: (recipe number, piece template, job). Jobs run on the pool and return an
# ``Encoded`` record, or None for a diff chunk that turned out identical (becomes a copy piece).
# Templates without a job mark structure: ``end`` (of a recipe), ``pair-start``/``pair-end`` (the
# diffed prefix of a target tensor) and ``pair`` (in reverse: that prefix, on the target tensor).
Job = tuple[Any, ...]
Item = tuple[int, tuple[Any, ...], Job | None]


class _Files:
    """Open file descriptors for ``os.pread`` from worker threads."""

    def __init__(self) -> None:
        self.fds: dict[Path, int] = {}

    def read(self, path: Path, offset: int, length: int) -> bytes:
        fd = self.fds.get(path)
        if fd is None:
            fd = self.fds[path] = os.open(path, os.O_RDONLY)
        data = os.pread(fd, length, offset)
        if len(data) != length:
            raise AirlockError(f"{path}: changed while the delta was being made (short read)", path=str(path))
        return data

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)


def _compatible(a: TensorEntry, b: TensorEntry) -> bool:
    """Same dtype and same trailing dims: rows can grow or shrink, the common prefix is diffed."""
    if a.dtype != b.dtype or len(a.shape) != len(b.shape):
        return False
    return a.shape == b.shape or (len(a.shape) >= 1 and a.shape[1:] == b.shape[1:])


def _chunks(start: int, length: int, chunk: int) -> Iterator[tuple[int, int]]:
    pos = 0
    while pos < length:
        n = min(chunk, length - pos)
        yield start + pos, n
        pos += n


class _Planner:
    def __init__(self, old: Inventory, new: Inventory, chunk: int, level: int, reversible: bool) -> None:
        self.old, self.new, self.chunk, self.level, self.reversible = old, new, chunk, level, reversible
        self.stats = {"unchanged": 0, "diff": 0, "grown": 0, "new": 0, "removed": 0}
        self.pairs = np.full(len(old.tensors), -1, np.int64)  # source tensor id -> target id (diffed prefix)
        # target tensor id -> rows [lo, hi) of its diffed prefix in the forward pieces, reused in reverse
        self.pair_rows = np.zeros((len(new.tensors), 2), np.int64)

    # -- jobs (run on the pool) ------------------------------------------------------------
    def run(self, files: _Files, job: Job) -> codec.Encoded | None:
        kind = job[0]
        if kind == "hdr":
            return codec.encode_plain(job[1], min(self.level, META_LEVEL))
        if kind == "zraw":
            return codec.encode_plain(files.read(job[1], job[2], job[3]), self.level)
        if kind == "planes":
            return codec.encode_planes(files.read(job[1], job[2], job[3]), job[4], self.level)
        if kind == "diff":
            _, npath, noff, opath, ooff, length, width, dtype = job
            new = files.read(npath, noff, length)
            old = files.read(opath, ooff, length)
            if new == old:
                return None
            return codec.encode_diff(new, old, width, self.level, dtype=dtype, reversible=self.reversible)
        if kind == "prefix":
            _, npath, nsize, opath, osize = job
            return codec.encode_prefix(files.read(npath, 0, nsize), files.read(opath, 0, osize),
                                       min(self.level, META_LEVEL))
        raise AssertionError(kind)

    # -- planning ---------------------------------------------------------------------------
    def items(self, out: Inventory, inp: Inventory, recipe_base: int, forward: bool) -> Iterator[Item]:
        """Work items for the recipes that build ``out`` from ``inp``; each recipe ends with an
        ``("end",)`` item."""
        in_names = sorted(inp.files)
        in_file_by_sha: dict[str, int] = {}
        for k, rel in enumerate(in_names):
            in_file_by_sha.setdefault(inp.files[rel].sha256, k)
        lookup = _Lookup(inp)
        for n, rel in enumerate(sorted(out.files)):
            r = recipe_base + n
            info = out.files[rel]
            if info.sha256 in in_file_by_sha:
                yield r, ("file", in_file_by_sha[info.sha256]), None
            elif not is_safetensors(rel):
                path = out.root / rel
                other = inp.files.get(rel)
                if other is not None and max(info.size, other.size) <= PREFIX_LIMIT:
                    yield r, ("prefix", in_names.index(rel)), ("prefix", path, info.size, inp.root / rel,
                                                              other.size)
                else:
                    for off, ln in _chunks(0, info.size, self.chunk):
                        yield r, ("rec",), ("zraw", path, off, ln)
            else:
                header = out.headers[rel]  # one record each MAX_RAW bytes (a header may be 100 MB)
                for off in range(0, len(header), codec.MAX_RAW):
                    yield r, ("rec",), ("hdr", header[off:off + codec.MAX_RAW])
                for oid in range(*out.spans[rel]):
                    yield from self._tensor_items(r, oid, out, inp, lookup, forward)
            yield r, ("end",), None

    def _tensor_items(self, r: int, oid: int, out: Inventory, inp: Inventory, lookup: _Lookup,
                      forward: bool) -> Iterator[Item]:
        t = out.tensors[oid]
        if t.nbytes == 0:
            return
        width = _itemsize(t.dtype)
        iid = lookup.identical(t.name, out.tensors.digest[oid])
        if iid is not None:
            if forward:
                self.stats["unchanged"] += 1
            yield r, ("copy", iid, 0, t.nbytes), None
            return
        opath = out.root / t.file
        if forward:
            cands = [i for i in lookup.named(t.name) if _compatible(inp.tensors[i], t)]
            cands.sort(key=lambda i: inp.tensors[i].file != t.file)
            if cands:
                iid = cands[0]
                s = inp.tensors[iid]
                common = min(s.nbytes, t.nbytes)
                self.pairs[iid] = oid
                self.stats["diff" if s.nbytes == t.nbytes else "grown"] += 1
                ipath = inp.root / s.file
                yield r, ("pair-start", oid), None
                for off, ln in _chunks(0, common, self.chunk):
                    yield r, ("diff", iid, off, ln), ("diff", opath, t.offset + off, ipath,
                                                      s.offset + off, ln, width, t.dtype)
                yield r, ("pair-end", oid), None
                for off, ln in _chunks(common, t.nbytes - common, self.chunk):
                    yield r, ("rec",), ("planes", opath, t.offset + off, ln, width)
                return
            self.stats["new"] += 1
        else:
            pair = int(self.pairs[oid])  # here ``out`` is the source side: oid is a source tensor id
            if pair >= 0:
                common = min(t.nbytes, inp.tensors[pair].nbytes)
                yield r, ("pair", pair), None  # the forward pieces of the pair, on the target's tensor
                for off, ln in _chunks(common, t.nbytes - common, self.chunk):
                    yield r, ("rec",), ("planes", opath, t.offset + off, ln, width)
                return
            self.stats["removed"] += 1
        for off, ln in _chunks(0, t.nbytes, self.chunk):
            yield r, ("rec",), ("planes", opath, t.offset + off, ln, width)


class _Lookup:
    """Input tensors by name and by content, compact: one int per tensor for the content key (the
    first 8 digest bytes, confirmed against the full digest) and the names only where they repeat."""

    def __init__(self, inp: Inventory) -> None:
        self.table = inp.tensors
        self.by_key: dict[int, int] = {}
        for i, k in enumerate(self.table.digest_key()):
            self.by_key.setdefault(k, i)
        self.by_name: dict[str, int] = {}
        self.more: dict[str, list[int]] = {}
        for i, name in enumerate(self.table.name_list()):
            if self.by_name.setdefault(name, i) != i:
                self.more.setdefault(name, [self.by_name[name]]).append(i)

    def named(self, name: str) -> list[int]:
        if name in self.more:
            return self.more[name]
        i = self.by_name.get(name)
        return [] if i is None else [i]

    def identical(self, name: str, digest: np.ndarray) -> int | None:
        """An input tensor with this content, preferring one of the same name."""
        for i in self.named(name):
            if np.array_equal(self.table.digest[i], digest):
                return i
        k = self.by_key.get(int(np.ascontiguousarray(digest[:8]).view("<u8")[0]))
        if k is not None and np.array_equal(self.table.digest[k], digest):
            return k
        return None


def _itemsize(dtype: str) -> int:
    from airlock.safetensors_io import DTYPE_SIZES

    return DTYPE_SIZES[dtype]


def _add_piece(pieces: PieceTable, tmpl: tuple[Any, ...], enc: codec.Encoded | None,
               writer: DeltaWriter) -> None:
    kind = tmpl[0]
    if kind == "file":
        pieces.append("file", tmpl[1])
    elif kind == "copy":
        pieces.append("copy", tmpl[1], tmpl[2], tmpl[3])
    elif kind == "diff":
        _, iid, off, ln = tmpl
        if enc is None:
            pieces.append("copy", iid, off, ln)
        else:
            pieces.append("diff", iid, off, writer.add(enc))
    elif kind == "rec":
        assert enc is not None
        pieces.append("rec", writer.add(enc))
    elif kind == "prefix":
        assert enc is not None
        pieces.append("prefix", tmpl[1], writer.add(enc))
    else:
        raise AssertionError(kind)


def _cleanup_stale(out_path: Path) -> None:
    """Remove temp files of earlier makes of the same output whose process is gone (kill -9)."""
    for p in out_path.parent.glob(f".{out_path.name}.*.tmp"):
        try:
            pid = int(p.name.rsplit(".", 2)[-2])
        except ValueError:
            continue
        if pid != os.getpid() and not Path(f"/proc/{pid}").exists():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def make_delta(old_dir: Path, new_dir: Path, out_path: Path, *, from_version: str | None = None,
               to_version: str | None = None, reverse: bool = True, progress: Progress | None = None,
               chunk_bytes: int = DEFAULT_CHUNK, level: int = codec.LEVEL, workers: int = 2) -> DeltaSummary:
    """Write a delta that turns ``old_dir`` into ``new_dir`` (and back, with ``reverse``)."""
    old_dir, new_dir, out_path = Path(old_dir), Path(new_dir), Path(out_path)
    if chunk_bytes % 8 or not 8 <= chunk_bytes <= codec.MAX_RAW:
        raise ValueError("chunk_bytes must be a multiple of 8 and at most 64 MiB")
    old = scan(old_dir, progress)
    new = scan(new_dir, progress)
    planner = _Planner(old, new, chunk_bytes, level, reverse)
    fwd_names = sorted(new.files)
    rev_names = sorted(old.files) if reverse else []
    pieces = PieceTable()

    out_path.parent.mkdir(parents=True, exist_ok=True)
    _cleanup_stale(out_path)
    tmp = out_path.parent / f".{out_path.name}.{os.getpid()}.tmp"
    writer = DeltaWriter(tmp)
    files = _Files()
    try:
        def items() -> Iterator[Item]:
            yield from planner.items(new, old, 0, True)
            if reverse:
                yield from planner.items(old, new, len(fwd_names), False)

        def work(item: Item) -> tuple[Item, codec.Encoded | None]:
            return item, (planner.run(files, item[2]) if item[2] is not None else None)

        for (_r, tmpl, job), enc in ordered_map(work, items(), workers):
            kind = tmpl[0]
            if kind == "end":
                pieces.end_recipe()
            elif kind == "pair-start":  # the diffed prefix of a target tensor: rows kept for reverse
                pieces.barrier = len(pieces)
                planner.pair_rows[tmpl[1], 0] = len(pieces)
            elif kind == "pair-end":
                planner.pair_rows[tmpl[1], 1] = pieces.barrier = len(pieces)
            elif kind == "pair":
                lo, hi = planner.pair_rows[tmpl[1]].tolist()
                for k, _iid, off, x in pieces.rows(lo, hi):
                    pieces.append(k, tmpl[1], off, x)
            else:
                _add_piece(pieces, tmpl, enc, writer)
            if progress and job is not None and job[0] != "hdr":
                progress(job[3] if job[0] in ("zraw", "planes") else job[5] if job[0] == "diff" else job[2])
        frm, to = from_version or old.content_id(), to_version or new.content_id()
        src_tensors, tgt_tensors = old.tensors.truncated(), new.tensors.truncated()
        index: dict[str, Any] = {
            "format": "airlock-delta", "format_version": INDEX_FORMAT_VERSION,
            "created_by": f"airlock {__version__}", "from_version": frm, "to_version": to,
            "source_id": old.content_id(), "target_id": new.content_id(), "reversible": reverse,
            "chunk_bytes": chunk_bytes, "tensor_digest": TENSOR_DIGEST,
            "source_files": {k: {"size": v.size, "sha256": v.sha256} for k, v in old.files.items()},
            "target_files": {k: {"size": v.size, "sha256": v.sha256} for k, v in new.files.items()},
            "source_tensors": src_tensors.meta(), "target_tensors": tgt_tensors.meta(),
            "forward": fwd_names, "reverse": rev_names if reverse else None,
        }
        size = writer.finish(index, {**src_tensors.columns("source_tensors"),
                                     **tgt_tensors.columns("target_tensors"), **pieces.columns()})
        fault_point("delta.make.before-rename")
        os.replace(tmp, out_path)
        fsync_dir(out_path.parent)
    except BaseException:
        writer.abort()
        raise
    finally:
        files.close()
    return DeltaSummary(out_path, size, sum(f.size for f in old.files.values()),
                        sum(f.size for f in new.files.values()), frm, to,
                        reverse, len(writer.records), planner.stats)
