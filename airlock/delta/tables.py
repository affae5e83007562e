"""Column-wise tables for the per-tensor parts of a delta: tensors, records and recipe pieces.

A DeepSeek-class model has ~10^5 tensors. One Python object per tensor and field costs 1-2 KiB per
tensor, so peak memory would grow with the model. These tables keep one numpy array per field, are
stored in the index as raw little-endian columns (``pack_columns``), and hand out a small record
object per row on demand.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from airlock.errors import DeltaFormatError
from airlock.safetensors_io import DTYPE_SIZES, TensorInfo

COLUMN_TYPES: dict[str, np.dtype[Any]] = {k: np.dtype(f"<{k}") for k in ("u1", "u4", "u8", "i8")}
ALIGN = 8


def _bad(message: str) -> DeltaFormatError:
    return DeltaFormatError(f"delta index is malformed ({message})", rule="delta-format")


def pack_columns(columns: dict[str, np.ndarray]) -> tuple[dict[str, list[Any]], list[bytes]]:
    """Lay out named arrays back to back (8-byte aligned); returns (layout for the JSON, the parts
    to write one after the other)."""
    layout: dict[str, list[Any]] = {}
    parts: list[bytes] = []
    pos = 0
    codes = {v: k for k, v in COLUMN_TYPES.items()}
    for name, arr in columns.items():
        code = codes[arr.dtype.newbyteorder("<")]
        data = np.ascontiguousarray(arr, dtype=COLUMN_TYPES[code]).tobytes()
        layout[name] = [code, list(arr.shape), pos]
        parts += [data, b"\0" * (-len(data) % ALIGN)]
        pos += len(data) + (-len(data) % ALIGN)
    return layout, parts


def unpack_columns(layout: Any, data: bytes | memoryview) -> dict[str, np.ndarray]:
    """Read-only views of the columns described by ``layout`` (validated against ``data``)."""
    if not isinstance(layout, dict):
        raise _bad("columns must be an object")
    out: dict[str, np.ndarray] = {}
    for name, spec in layout.items():
        try:
            code, shape, pos = spec
            dtype = COLUMN_TYPES[code]
            shape = tuple(int(d) for d in shape)
            count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        except (TypeError, ValueError, KeyError, OverflowError) as exc:  # OverflowError: a dim past int64
            raise _bad(f"column {name!r}: bad layout {spec!r}") from exc
        if not isinstance(pos, int) or pos < 0 or min(shape, default=0) < 0 or len(shape) > 2 \
                or pos + count * dtype.itemsize > len(data):
            raise _bad(f"column {name!r} lies outside the index")
        out[name] = np.frombuffer(data, dtype, count, pos).reshape(shape)
    return out


def _take(cols: dict[str, np.ndarray], prefix: str, name: str, code: str, ndim: int = 1) -> np.ndarray:
    arr = cols.get(f"{prefix}.{name}")
    if arr is None or arr.dtype != COLUMN_TYPES[code] or arr.ndim != ndim:
        raise _bad(f"column {prefix}.{name} missing or of the wrong type")
    return arr


def _ends_ok(ends: np.ndarray, total: int) -> bool:
    """Cumulative end offsets: non-decreasing, within ``total``, the last one equal to it."""
    if not len(ends):
        return total == 0
    return bool(np.all(ends[1:] >= ends[:-1])) and int(ends[-1]) == total


def _ends(lengths: Iterable[int]) -> np.ndarray:
    return np.cumsum(np.fromiter(lengths, np.uint64), dtype=np.uint64)


def _span(ends: np.ndarray, i: int) -> tuple[int, int]:
    return (int(ends[i - 1]) if i else 0), int(ends[i])


# --------------------------------------------------------------------------------------------- tensors


@dataclass(frozen=True, slots=True)
class TensorEntry:
    """A tensor of one model version; ``offset`` is absolute within ``file``; ``digest`` is the hex
    XXH3-128 of its bytes (whole in a scanned inventory, the first ``INDEX_DIGEST`` bytes in a
    delta index)."""

    file: str
    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    digest: str


INDEX_DIGEST = 8
"""Tensor digests in the index are the first 8 bytes: they name the first differing tensor of a
source whose full-file sha256 already failed (the file hashes are the check)."""
SCAN_DIGEST = 16


@dataclass(frozen=True, eq=False)
class TensorTable:
    """Every tensor of a model version, in file order and within a file in data order."""

    files: tuple[str, ...]
    dtypes: tuple[str, ...]
    file: np.ndarray  # u4 index into files
    dtype: np.ndarray  # u1 index into dtypes
    name_end: np.ndarray  # u8 end of each name in names (utf-8)
    names: np.ndarray  # u1
    dim_end: np.ndarray  # u8 end of each shape in dims
    dims: np.ndarray  # u8
    offset: np.ndarray  # u8
    nbytes: np.ndarray  # u8
    digest: np.ndarray  # u1, one row per tensor

    def __len__(self) -> int:
        return len(self.offset)

    def __getitem__(self, i: int) -> TensorEntry:
        if not 0 <= i < len(self):
            raise IndexError(i)
        lo, hi = _span(self.dim_end, i)
        return TensorEntry(self.files[int(self.file[i])], self.name(i), self.dtypes[int(self.dtype[i])],
                           tuple(int(d) for d in self.dims[lo:hi]), int(self.offset[i]), int(self.nbytes[i]),
                           self.digest[i].tobytes().hex())

    def __iter__(self) -> Iterator[TensorEntry]:
        return (self[i] for i in range(len(self)))

    def name(self, i: int) -> str:
        lo, hi = _span(self.name_end, i)
        return self.names[lo:hi].tobytes().decode("utf-8")

    def name_list(self) -> list[str]:
        blob = self.names.tobytes()
        ends = self.name_end.tolist()
        return [blob[lo:hi].decode("utf-8") for lo, hi in zip([0, *ends][:-1], ends, strict=True)]

    def digest_key(self) -> list[int]:
        """The first 8 digest bytes of each tensor as an int: a compact key for lookups by content."""
        return np.ascontiguousarray(self.digest[:, :8]).view("<u8").ravel().tolist()

    def truncated(self, size: int = INDEX_DIGEST) -> TensorTable:
        return replace(self, digest=np.ascontiguousarray(self.digest[:, :size]))

    @classmethod
    def of_file(cls, file: str, tensors: Sequence[TensorInfo], data_start: int, digests: Sequence[bytes],
                digest_size: int = SCAN_DIGEST) -> TensorTable:
        """The tensors of one safetensors file (its parsed header entries, in data order), with the
        raw digest of each."""
        n = len(tensors)
        dtypes = tuple(sorted({t.dtype for t in tensors}))
        dmap = {d: k for k, d in enumerate(dtypes)}
        names = [t.name.encode("utf-8") for t in tensors]
        digest = np.frombuffer(b"".join(digests), np.uint8).reshape(n, digest_size)
        return cls((file,), dtypes, np.zeros(n, np.uint32),
                   np.fromiter((dmap[t.dtype] for t in tensors), np.uint8, n),
                   _ends(len(name) for name in names), np.frombuffer(b"".join(names), np.uint8).copy(),
                   _ends(len(t.shape) for t in tensors),
                   np.fromiter((d for t in tensors for d in t.shape), np.uint64),
                   np.fromiter((data_start + t.start for t in tensors), np.uint64, n),
                   np.fromiter((t.nbytes for t in tensors), np.uint64, n), digest.copy())

    @classmethod
    def concat(cls, tables: Sequence[TensorTable], digest_size: int = SCAN_DIGEST) -> TensorTable:
        if not tables:
            return replace(cls.of_file("", [], 0, [], digest_size), files=())
        files: list[str] = []
        dtypes = tuple(sorted({d for t in tables for d in t.dtypes}))
        dmap = {d: k for k, d in enumerate(dtypes)}
        file_cols, dtype_cols = [], []
        for t in tables:
            file_cols.append((t.file + len(files)).astype(np.uint32))
            files += t.files
            remap = np.array([dmap[d] for d in t.dtypes] or [0], np.uint8)
            dtype_cols.append(remap[t.dtype])

        def ends(cols: list[np.ndarray], sizes: list[int]) -> np.ndarray:
            shift = np.cumsum([0, *sizes[:-1]], dtype=np.uint64)
            return np.concatenate([c + s for c, s in zip(cols, shift, strict=True)]).astype(np.uint64)

        return cls(tuple(files), dtypes, np.concatenate(file_cols), np.concatenate(dtype_cols),
                   ends([t.name_end for t in tables], [len(t.names) for t in tables]),
                   np.concatenate([t.names for t in tables]),
                   ends([t.dim_end for t in tables], [len(t.dims) for t in tables]),
                   np.concatenate([t.dims for t in tables]),
                   np.concatenate([t.offset for t in tables]), np.concatenate([t.nbytes for t in tables]),
                   np.concatenate([t.digest for t in tables]).reshape(-1, digest_size))

    # -- index form ------------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        return {"count": len(self), "files": list(self.files), "dtypes": list(self.dtypes)}

    def columns(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}.{k}": v for k, v in (
            ("file", self.file), ("dtype", self.dtype), ("name_end", self.name_end), ("names", self.names),
            ("dim_end", self.dim_end), ("dims", self.dims), ("offset", self.offset),
            ("nbytes", self.nbytes), ("digest", self.digest))}

    @classmethod
    def load(cls, meta: Any, cols: dict[str, np.ndarray], prefix: str) -> TensorTable:
        n = int(meta["count"])
        files = tuple(str(f) for f in meta["files"])
        dtypes = tuple(str(d) for d in meta["dtypes"])
        if any(d not in DTYPE_SIZES for d in dtypes):
            raise _bad(f"{prefix}: unknown dtype")
        t = cls(files, dtypes, _take(cols, prefix, "file", "u4"), _take(cols, prefix, "dtype", "u1"),
                _take(cols, prefix, "name_end", "u8"), _take(cols, prefix, "names", "u1"),
                _take(cols, prefix, "dim_end", "u8"), _take(cols, prefix, "dims", "u8"),
                _take(cols, prefix, "offset", "u8"), _take(cols, prefix, "nbytes", "u8"),
                _take(cols, prefix, "digest", "u1", 2))
        if any(len(c) != n for c in (t.file, t.dtype, t.name_end, t.dim_end, t.offset, t.nbytes, t.digest)) \
                or t.digest.shape[1] != INDEX_DIGEST:
            raise _bad(f"{prefix}: columns of different lengths")
        if (n and (int(t.file.max()) >= len(files) or int(t.dtype.max()) >= len(dtypes))) \
                or not _ends_ok(t.name_end, len(t.names)) or not _ends_ok(t.dim_end, len(t.dims)):
            raise _bad(f"{prefix}: index out of range")
        return t


# --------------------------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class Record:
    offset: int
    length: int
    sha256: str  # hex of the first RECORD_DIGEST bytes
    codec: int
    width: int
    raw_len: int
    planes: tuple[int, ...]


RECORD_DIGEST = 8


class RecordTable:
    """The records of a delta, appendable while a delta is written."""

    def __init__(self, cols: dict[str, np.ndarray] | None = None) -> None:
        self._cols = cols
        # array('q'): 8 bytes a value while a delta is written (a list of ints costs ~40)
        self._rows = {k: array("q") for k in ("offset", "length", "codec", "width", "raw_len", "plane_end",
                                              "planes")}
        self._digests = bytearray()

    def append(self, offset: int, length: int, digest: bytes, codec: int, width: int, raw_len: int,
               planes: Sequence[int]) -> int:
        assert self._cols is None, "a loaded record table is read-only"
        r = self._rows
        for k, v in (("offset", offset), ("length", length), ("codec", codec), ("width", width),
                     ("raw_len", raw_len)):
            r[k].append(v)
        r["planes"].extend(planes)
        r["plane_end"].append(len(r["planes"]))
        self._digests += digest[:RECORD_DIGEST]
        return len(r["offset"]) - 1

    def _frozen(self) -> dict[str, np.ndarray]:
        if self._cols is None:
            types = {"codec": np.uint8, "width": np.uint8}
            cols = {k: np.array(v, types.get(k, np.uint64)) for k, v in self._rows.items()}
            cols["digest"] = np.frombuffer(bytes(self._digests), np.uint8).reshape(-1, RECORD_DIGEST)
            return cols
        return self._cols

    def __len__(self) -> int:
        return len(self._cols["offset"]) if self._cols is not None else len(self._rows["offset"])

    def __getitem__(self, i: int) -> Record:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        c = self._frozen()
        lo, hi = _span(c["plane_end"], i)
        return Record(int(c["offset"][i]), int(c["length"][i]), c["digest"][i].tobytes().hex(),
                      int(c["codec"][i]), int(c["width"][i]), int(c["raw_len"][i]),
                      tuple(int(p) for p in c["planes"][lo:hi]))

    def __iter__(self) -> Iterator[Record]:
        return (self[i] for i in range(len(self)))

    def column(self, name: str) -> np.ndarray:
        return self._frozen()[name]

    def columns(self) -> dict[str, np.ndarray]:
        return {f"records.{k}": v for k, v in self._frozen().items()}

    @classmethod
    def load(cls, cols: dict[str, np.ndarray], start: int, end: int) -> RecordTable:
        """Records must tile ``[start, end)`` of the file and their sections must sum to their length."""
        c = {k: _take(cols, "records", k, code) for k, code in (
            ("offset", "u8"), ("length", "u8"), ("codec", "u1"), ("width", "u1"), ("raw_len", "u8"),
            ("plane_end", "u8"), ("planes", "u8"))}
        c["digest"] = _take(cols, "records", "digest", "u1", 2)
        n = len(c["offset"])
        if any(len(v) != n for k, v in c.items() if k != "planes") or c["digest"].shape[1] != RECORD_DIGEST:
            raise _bad("records: columns of different lengths")
        if not _ends_ok(c["plane_end"], len(c["planes"])):
            raise _bad("records: section lengths out of range")
        length = c["length"].astype(np.int64)
        if np.any(length > end - start):
            raise _bad("records: extent larger than the file")
        tiles = start + np.concatenate(([0], np.cumsum(length)))
        if not np.array_equal(c["offset"].astype(np.int64), tiles[:-1]) or int(tiles[-1]) != end:
            raise _bad("records do not tile the space before the index")
        sums = _plane_sums(c["planes"], c["plane_end"])
        if not np.array_equal(sums, c["length"]):
            raise _bad("records: section lengths do not add up to the record length")
        return cls(c)


def _plane_sums(planes: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Sum of each record's section lengths (0 for a record without sections)."""
    zero = np.zeros(1, np.uint64)
    csum = np.concatenate((zero, np.cumsum(planes, dtype=np.uint64)))
    starts = np.concatenate((zero, ends[:-1])).astype(np.intp)
    return (csum[ends.astype(np.intp)] - csum[starts]).astype(np.uint64)


# --------------------------------------------------------------------------------------------- pieces


PIECE_KINDS = ("file", "rec", "copy", "diff", "prefix")
KIND_CODE = {k: i for i, k in enumerate(PIECE_KINDS)}


class PieceTable:
    """The pieces of every recipe (forward then reverse), one row per piece: ``kind, a, b, c``.
    ``file`` and ``prefix`` pieces name their input file by its index in the sorted input files."""

    def __init__(self, cols: dict[str, np.ndarray] | None = None) -> None:
        self._cols = cols
        self._kind = array("B")
        self._abc = (array("q"), array("q"), array("q"))
        self._recipe_end = array("q")
        self.barrier = 0
        """Rows before this index are never merged into (see ``append``)."""

    def __len__(self) -> int:
        return len(self._cols["kind"]) if self._cols is not None else len(self._kind)

    def end_recipe(self) -> None:
        self._recipe_end.append(len(self._kind))

    def append(self, kind: str, a: int, b: int = 0, c: int = 0) -> None:
        """Add a row; a copy contiguous with a preceding copy of the same tensor extends it."""
        assert self._cols is None, "a loaded piece table is read-only"
        k = KIND_CODE[kind]
        ka, kb, kc = self._abc
        if k == KIND_CODE["copy"] and len(self._kind) > self.barrier and self._kind[-1] == k \
                and ka[-1] == a and kb[-1] + kc[-1] == b:
            kc[-1] += c
            return
        self._kind.append(k)
        ka.append(a)
        kb.append(b)
        kc.append(c)

    def rows(self, lo: int, hi: int) -> list[tuple[str, int, int, int]]:
        if self._cols is None:
            kind, a, b, c = (col[lo:hi].tolist() for col in (self._kind, *self._abc))
        else:
            kind, a, b, c = (self._cols[k][lo:hi].tolist() for k in ("kind", "a", "b", "c"))
        return [(PIECE_KINDS[k], x, y, z) for k, x, y, z in zip(kind, a, b, c, strict=True)]

    def recipe_span(self, r: int) -> tuple[int, int]:
        ends = self._frozen()["recipe_end"] if self._cols is not None else self._recipe_end
        return (int(ends[r - 1]) if r else 0), int(ends[r])

    def _frozen(self) -> dict[str, np.ndarray]:
        if self._cols is not None:
            return self._cols
        return {"recipe_end": np.array(self._recipe_end, np.uint64), "kind": np.array(self._kind, np.uint8),
                "a": np.array(self._abc[0], np.int64), "b": np.array(self._abc[1], np.int64),
                "c": np.array(self._abc[2], np.int64)}

    def columns(self) -> dict[str, np.ndarray]:
        return {f"pieces.{k}": v for k, v in self._frozen().items()}

    @classmethod
    def load(cls, cols: dict[str, np.ndarray], recipes: int) -> PieceTable:
        c = {k: _take(cols, "pieces", k, code) for k, code in (
            ("recipe_end", "u8"), ("kind", "u1"), ("a", "i8"), ("b", "i8"), ("c", "i8"))}
        n = len(c["kind"])
        if len(c["a"]) != n or len(c["b"]) != n or len(c["c"]) != n or len(c["recipe_end"]) != recipes \
                or not _ends_ok(c["recipe_end"], n):
            raise _bad("pieces: columns of different lengths or recipes out of range")
        if n and int(c["kind"].max()) >= len(PIECE_KINDS):
            raise _bad("pieces: unknown piece kind")
        return cls(c)
