"""Streaming, validating safetensors reader and writer.

The header is parsed defensively (size limit, strict JSON, known dtypes, shapes that match the byte
ranges, contiguous in-bounds data); tensor data is never loaded whole: callers iterate it in chunks
aligned to the element size. The raw header bytes are kept so a file can be reproduced exactly.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from airlock import boundedjson
from airlock.errors import TensorFormatError
from airlock.hashing import CHUNK

MAX_HEADER_BYTES = 100 * 1024 * 1024
MAX_HEADER_DEPTH = 8  # the header is {name: {dtype, shape: [..], data_offsets: [..]}}, __metadata__
INDEX_NAME = "model.safetensors.index.json"
LFS_POINTER = b"version https://git-lfs.github.com/spec/"
"""How a Git LFS pointer file starts: what a clone without git-lfs holds instead of the weights."""
LFS_HINT = "a Git LFS pointer, not the weights (a clone without git-lfs: run 'git lfs pull')"

DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "F64": 8, "I64": 8, "U64": 8,
}
FLOAT_DTYPES = frozenset({"F8_E5M2", "F8_E4M3", "F8_E8M0", "F16", "BF16", "F32", "F64"})


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One tensor; ``start``/``end`` are offsets relative to the data section (as in the header)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def itemsize(self) -> int:
        return DTYPE_SIZES[self.dtype]


@dataclass
class SafetensorsHeader:
    path: str
    header_len: int
    raw: bytes = field(repr=False)
    """The first ``8 + header_len`` bytes of the file, exactly as stored."""
    tensors: list[TensorInfo]
    """In data order (ascending ``start``)."""
    metadata: dict[str, str] | None
    file_size: int

    @property
    def data_start(self) -> int:
        return 8 + self.header_len

    def by_name(self) -> dict[str, TensorInfo]:
        return {t.name: t for t in self.tensors}


def _fail(path: str, message: str, rule: str) -> TensorFormatError:
    return TensorFormatError(f"{path}: {message}", path=path, rule=f"safetensors-{rule}")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _unicode(path: str, what: str, text: str) -> None:
    """Refuse a lone surrogate (``"\\ud800"`` parses in Python, not in the reference reader, and a
    name that cannot be UTF-8 encoded cannot be stored in a delta's tables)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _fail(path, f"{what} {text[:60]!r} is not valid Unicode (lone surrogate)", "unicode") from exc


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_DTYPE_NAMES = {k: k for k in DTYPE_SIZES}
"""One string object per dtype name, shared by every tensor (a model has ~10^5 tensors)."""


def parse_header(raw_json: bytes, data_size: int, path: str = "<memory>") -> tuple[
        list[TensorInfo], dict[str, str] | None]:
    """Validate a header JSON against a data section of ``data_size`` bytes."""
    obj = boundedjson.loads(raw_json, max_depth=MAX_HEADER_DEPTH, object_pairs_hook=_no_duplicates,
                            fail=lambda message, _kind: _fail(path, f"header is not valid JSON ({message})",
                                                               "json"))
    if not isinstance(obj, dict):
        raise _fail(path, "header JSON is not an object", "json")
    metadata = obj.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        raise _fail(path, "__metadata__ must map strings to strings", "metadata")
    for key, value in (metadata or {}).items():
        _unicode(path, "__metadata__ key", key)
        _unicode(path, f"__metadata__ value of {key!r}", value)
    tensors: list[TensorInfo] = []
    for name, entry in obj.items():
        _unicode(path, "tensor name", name)
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise _fail(path, f"tensor {name!r}: entry needs exactly dtype, shape, data_offsets", "entry")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
            raise _fail(path, f"tensor {name!r}: unknown dtype {dtype!r}", "dtype")
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise _fail(path, f"tensor {name!r}: shape must be a list of non-negative integers", "shape")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            raise _fail(path, f"tensor {name!r}: data_offsets must be [begin, end], 0 <= begin <= end",
                        "offsets")
        expected = math.prod(shape) * DTYPE_SIZES[dtype]
        if offsets[1] - offsets[0] != expected:
            raise _fail(path, f"tensor {name!r}: {dtype}{shape} needs {expected} bytes, offsets span "
                        f"{offsets[1] - offsets[0]}", "size")
        tensors.append(TensorInfo(name, _DTYPE_NAMES[dtype], tuple(shape), offsets[0], offsets[1]))
    tensors.sort(key=lambda t: (t.start, t.end))
    pos = 0
    for t in tensors:
        if t.start != pos:
            kind = "overlaps the previous tensor" if t.start < pos else "leaves a gap before it"
            raise _fail(path, f"tensor {t.name!r}: data at {t.start} {kind} (expected {pos})",
                        "overlap" if t.start < pos else "gap")
        pos = t.end
    if pos != data_size:
        kind = "out of bounds" if pos > data_size else "trailing bytes after the last tensor"
        raise _fail(path, f"data section is {data_size} bytes, tensors end at {pos} ({kind})",
                    "bounds" if pos > data_size else "trailing")
    return tensors, metadata


def read_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Read and validate the header of a safetensors file (only the header is read)."""
    p = os.fspath(path)
    try:
        size = os.path.getsize(p)
        with open(p, "rb") as fh:
            prefix = fh.read(8)
            if len(prefix) < 8:
                raise _fail(p, f"file is {size} bytes, shorter than the 8-byte length prefix", "truncated")
            (n,) = struct.unpack("<Q", prefix)
            if prefix + fh.read(len(LFS_POINTER) - 8) == LFS_POINTER:
                raise _fail(p, f"is {LFS_HINT}", "lfs-pointer")
            fh.seek(8)  # the pointer check read past the length prefix
            if n > MAX_HEADER_BYTES:
                raise _fail(p, f"header length {n} exceeds the limit of {MAX_HEADER_BYTES}", "header-size")
            if 8 + n > size:
                raise _fail(p, f"header length {n} runs past the end of the {size}-byte file", "truncated")
            raw_json = fh.read(n)
    except OSError as exc:
        raise _fail(p, f"cannot read ({exc.strerror})", "io") from exc
    tensors, metadata = parse_header(raw_json, size - 8 - n, p)
    return SafetensorsHeader(p, n, prefix + raw_json, tensors, metadata, size)


def iter_range(fh: BinaryIO, offset: int, length: int, chunk: int = CHUNK) -> Iterator[bytes]:
    """Yield ``length`` bytes starting at absolute ``offset`` in pieces of at most ``chunk``."""
    fh.seek(offset)
    remaining = length
    while remaining > 0:
        data = fh.read(min(chunk, remaining))
        if not data:
            raise _fail(getattr(fh, "name", "?"), f"unexpected end of file at {offset + length - remaining}",
                        "truncated")
        remaining -= len(data)
        yield data


def iter_tensor_chunks(fh: BinaryIO, header: SafetensorsHeader, tensor: TensorInfo,
                       chunk: int = CHUNK) -> Iterator[bytes]:
    """Yield a tensor's bytes in pieces aligned to its element size."""
    aligned = max(tensor.itemsize, chunk - chunk % tensor.itemsize)
    yield from iter_range(fh, header.data_start + tensor.start, tensor.nbytes, aligned)


def build_header(specs: Sequence[tuple[str, str, Sequence[int]]],
                 metadata: dict[str, str] | None = None, align: int = 8) -> bytes:
    """The ``8 + N`` header bytes for tensors ``(name, dtype, shape)`` laid out in the given order."""
    obj: dict[str, Any] = {}
    if metadata is not None:
        obj["__metadata__"] = metadata
    pos = 0
    for name, dtype, shape in specs:
        if dtype not in DTYPE_SIZES:
            raise TensorFormatError(f"unknown dtype {dtype!r} for tensor {name!r}", rule="safetensors-dtype")
        n = math.prod(shape) * DTYPE_SIZES[dtype]
        obj[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + n]}
        pos += n
    body = json.dumps(obj, separators=(",", ":")).encode()
    body += b" " * (-len(body) % align)
    return struct.pack("<Q", len(body)) + body


def write_safetensors(path: Path, tensors: Sequence[tuple[str, str, Sequence[int], Iterable[bytes]]],
                      metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file from ``(name, dtype, shape, chunks)``; data is streamed from ``chunks``."""
    header = build_header([(n, d, s) for n, d, s, _ in tensors], metadata)
    with open(path, "wb") as fh:
        fh.write(header)
        for name, dtype, shape, chunks in tensors:
            want = math.prod(shape) * DTYPE_SIZES[dtype]
            got = 0
            for piece in chunks:
                fh.write(piece)
                got += len(piece)
            if got != want:
                raise TensorFormatError(f"{path}: tensor {name!r} got {got} bytes, needs {want}",
                                        path=str(path), rule="safetensors-size")


def read_index(model_dir: Path) -> dict[str, str] | None:
    """The ``weight_map`` (tensor -> shard file) of a sharded model, validated; None when not sharded."""
    index_path = model_dir / INDEX_NAME
    if not index_path.exists():
        return None
    p = str(index_path)
    try:
        obj = json.loads(index_path.read_text("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _fail(p, f"index is not valid JSON ({exc})", "index") from exc
    wmap = obj.get("weight_map") if isinstance(obj, dict) else None
    if not isinstance(wmap, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                             for k, v in wmap.items()):
        raise _fail(p, "index needs a weight_map of tensor name -> shard file", "index")
    for shard in sorted(set(wmap.values())):
        if "/" in shard or shard in ("", ".", "..") or not (model_dir / shard).is_file():
            raise _fail(p, f"index names shard {shard!r} which is not a file in {model_dir}", "index")
        names = {t.name for t in read_header(model_dir / shard).tensors}
        missing = sorted(k for k, v in wmap.items() if v == shard and k not in names)
        if missing:
            raise _fail(p, f"index places {missing[0]!r} in {shard}, which does not contain it", "index")
    return dict(wmap)
