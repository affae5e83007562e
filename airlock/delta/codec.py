"""Chunk codec: bit-pattern transforms against a base, byte planes, zstd.

A record holds one chunk of at most a few MiB. For a changed tensor the chunk is transformed
against the same byte range of the base tensor, either

* ``XOR``: ``new ^ old`` on unsigned integers of the element width (self-inverse), or
* ``ZDIFF``: ``zigzag(new - old)`` with wrap-around; a weight nudged by a few units in the last place
  becomes a small number where XOR would flip many bits. Inverse: ``old + unzigzag(d)`` forward,
  ``new - unzigzag(d)`` in reverse.

The result is split into byte planes (byte ``k`` of every element; sign/exponent bytes are highly
compressible, low mantissa bytes are near-random) and each plane is an independent zstd frame.
The smallest candidate wins per chunk. Plain data (new tensors, removed tensors kept for the
reverse direction) uses the planes without a base (``PLANES``); other bytes use ``ZSTD``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import zstandard

from airlock.errors import DeltaFormatError

ZSTD = 0
PLANES = 1
XOR = 2
ZDIFF = 3
PREFIX = 4
"""zstd with the same-path file of the other version as a raw-content prefix (non-tensor files)."""

CODEC_NAMES = {ZSTD: "zstd", PLANES: "planes", XOR: "xor", ZDIFF: "zdiff", PREFIX: "prefix"}
BASED = frozenset({XOR, ZDIFF})

LEVEL = 19
MAX_RAW = 64 * 1024 * 1024
"""Upper bound for one record's raw size; a larger claim in a delta is rejected as corrupt."""

_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
_INT = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}
_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache: dict[int, zstandard.ZstdCompressor] = _local.__dict__.setdefault("c", {})
    if level not in cache:
        cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return cache[level]


def _decompressor() -> zstandard.ZstdDecompressor:
    d: zstandard.ZstdDecompressor | None = getattr(_local, "d", None)
    if d is None:
        d = _local.d = zstandard.ZstdDecompressor()
    return d


@dataclass
class Encoded:
    codec: int
    width: int
    raw_len: int
    payload: bytes
    planes: list[int]
    """Compressed length of each plane frame (one entry for ZSTD / PREFIX)."""


def _zigzag(d: np.ndarray, width: int) -> np.ndarray:
    s = d.view(_INT[width])
    return ((s << 1) ^ (s >> (8 * width - 1))).view(_UINT[width])


def _unzigzag(z: np.ndarray, width: int) -> np.ndarray:
    u = z.view(_UINT[width])
    return ((u >> 1) ^ (-(u & 1).view(_INT[width])).view(_UINT[width])).view(_UINT[width])


def _split(d: np.ndarray, width: int) -> list[bytes]:
    if width == 1:
        return [d.tobytes()]
    by = d.view(np.uint8).reshape(-1, width)
    return [by[:, k].tobytes() for k in range(width)]


def _join(planes: list[bytes], width: int, n: int) -> np.ndarray:
    if width == 1:
        return np.frombuffer(planes[0], dtype=np.uint8)
    out = np.empty((n, width), dtype=np.uint8)
    for k, plane in enumerate(planes):
        out[:, k] = np.frombuffer(plane, dtype=np.uint8)
    return out.reshape(-1).view(_UINT[width])


def _pack(codec: int, width: int, raw_len: int, planes: list[bytes], level: int) -> Encoded:
    comp = _compressor(level)
    frames = [comp.compress(p) for p in planes]
    return Encoded(codec, width, raw_len, b"".join(frames), [len(f) for f in frames])


def encode_plain(data: bytes, level: int = LEVEL) -> Encoded:
    return _pack(ZSTD, 1, len(data), [data], level)


def encode_planes(data: bytes, width: int, level: int = LEVEL) -> Encoded:
    arr = np.frombuffer(data, dtype=_UINT[width])
    return _pack(PLANES, width, len(data), _split(arr, width), level)


def encode_prefix(data: bytes, prefix: bytes, level: int = LEVEL) -> Encoded:
    pdict = zstandard.ZstdCompressionDict(prefix, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    comp = zstandard.ZstdCompressor(level=level, dict_data=pdict, write_content_size=True)
    frame = comp.compress(data)
    return Encoded(PREFIX, 1, len(data), frame, [len(frame)])


def encode_diff(new: bytes, old: bytes, width: int, level: int = LEVEL) -> Encoded:
    """The smaller of the XOR and zigzag-difference encodings of ``new`` against ``old``."""
    n = np.frombuffer(new, dtype=_UINT[width])
    o = np.frombuffer(old, dtype=_UINT[width])
    best: Encoded | None = None
    for codec, d in ((ZDIFF, _zigzag(n - o, width)), (XOR, n ^ o)):
        enc = _pack(codec, width, len(new), _split(d, width), level)
        if best is None or len(enc.payload) < len(best.payload):
            best = enc
    assert best is not None
    return best


def _frames(payload: bytes, sizes: list[int], raw_each: int, dict_data: bytes | None = None) -> list[bytes]:
    out: list[bytes] = []
    pos = 0
    dec = _decompressor()
    if dict_data is not None:
        pdict = zstandard.ZstdCompressionDict(dict_data, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        dec = zstandard.ZstdDecompressor(dict_data=pdict)
    for size in sizes:
        frame = payload[pos:pos + size]
        pos += size
        try:
            data = dec.decompress(frame, max_output_size=raw_each)
        except zstandard.ZstdError as exc:
            raise DeltaFormatError(f"record does not decompress ({exc})", rule="delta-record") from exc
        if len(data) != raw_each:
            raise DeltaFormatError(f"record plane is {len(data)} bytes, expected {raw_each}",
                                   rule="delta-record")
        out.append(data)
    if pos != len(payload):
        raise DeltaFormatError("record plane sizes do not add up to the record size", rule="delta-record")
    return out


def decode(codec: int, width: int, raw_len: int, payload: bytes, planes: list[int],
           base: bytes | None = None, *, reverse: bool = False) -> bytes:
    """Rebuild a chunk. ``base`` is the other version's bytes for XOR/ZDIFF (same length) and the
    prefix for PREFIX. With ``reverse`` a ZDIFF record subtracts (new -> old) instead of adding."""
    if width not in _UINT or raw_len % width or raw_len > MAX_RAW:
        raise DeltaFormatError(f"record has invalid width {width} / size {raw_len}", rule="delta-record")
    if codec in (ZSTD, PREFIX):
        if len(planes) != 1:
            raise DeltaFormatError("zstd record must have one frame", rule="delta-record")
        return _frames(payload, planes, raw_len, base if codec == PREFIX else None)[0]
    if codec not in (PLANES, XOR, ZDIFF) or len(planes) != width:
        raise DeltaFormatError(f"record has unknown codec {codec} or wrong plane count", rule="delta-record")
    n = raw_len // width
    d = _join(_frames(payload, planes, n), width, n)
    if codec == PLANES:
        return d.tobytes()
    if base is None or len(base) != raw_len:
        raise DeltaFormatError("diff record needs a base of the same size", rule="delta-record")
    b = np.frombuffer(base, dtype=_UINT[width])
    if codec == XOR:
        return (b ^ d).tobytes()
    s = _unzigzag(d, width)
    return (b - s if reverse else b + s).tobytes()
