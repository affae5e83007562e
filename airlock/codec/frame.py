"""Lossless frames of a compressed bundle payload (codec ``alz1``, docs/bundle-format.md).

One frame codes exactly one manifest block of the uncompressed file. A block is cut into segments:
tensor data of a safetensors file (whole elements of one dtype) and everything else (the header,
non-tensor files, an element split by a block boundary). Each segment is one coded stream:

- floating-point tensors of 2, 4 or 8 bytes (bf16, fp16, fp32, fp64): each element rotated left by
  one bit (the sign joins the mantissa, the exponent leads) and coded with ``pcodec`` as unsigned
  integers: pcodec bins the values and tANS-codes the bins, which is the exponent's entropy plus the
  mantissa's bits nearly raw (the exponent/mantissa separation ZipNN makes, with a finer coder);
- integer tensors of 2, 4 or 8 bytes: ``pcodec`` on the integers as they are;
- 1-byte tensors (fp8 e4m3 / e5m2 / e8m0, int8, uint8, bool): zstd with long minimum matches, so
  the codes are Huffman-coded literals (a skewed byte distribution has no long repeats);
- plain bytes (JSON, tokenizers, safetensors headers, small tensors, any other file): zstd -12
  (-9 above 16 MiB).

Frame layout (little-endian)::

    b"ALZ1"  u32 segments
    per segment: u8 kind (0 zstd bytes, 1 zstd 1-byte elements, 2 pcodec)  u8 dtype code
                 u16 0  u64 raw length  u64 coded length
    the coded streams, in order

The decoder trusts nothing in a frame: lengths must add up to the frame and to the block, every
stream must decode to exactly its raw length. (Frames are also hash-checked against the signed
manifest before they are decoded, so only signed bytes reach it.)"""

from __future__ import annotations

import struct
from concurrent.futures import Executor, wait
from dataclasses import dataclass

import numpy as np
import zstandard
from pcodec import ChunkConfig, standalone

from airlock.delta.zstdio import compressor, decompressor

CODEC = "alz1"
MAGIC = b"ALZ1"
BYTES, ELEMENTS, PCO = 0, 1, 2
PCO_LEVEL = 8
TEXT_LEVEL = 12
TEXT_LEVEL_LARGE = 9
TEXT_LARGE = 16 << 20
"""Byte segments (JSON, tokenizers, headers) get zstd -12, above 16 MiB -9: -19 saves ~2 % of a
safetensors header at 20x the time (2.5 s for a 237 kB DeepSeek shard header)."""
SMALL_TENSOR = 16 << 10
"""Tensor pieces below this are plain bytes: a pcodec stream has a fixed cost (fp8 scales)."""

_SLICE = 256 << 10
_HEAD = struct.Struct("<4sI")
_SEG = struct.Struct("<BBHQQ")

# dtype code -> (safetensors dtype, element width, float: rotate the sign into the low bit)
DTYPES: dict[int, tuple[str, int, bool]] = {
    1: ("BF16", 2, True), 2: ("F16", 2, True), 3: ("F32", 4, True), 4: ("F64", 8, True),
    5: ("F8_E4M3", 1, False), 6: ("F8_E5M2", 1, False), 7: ("F8_E8M0", 1, False),
    8: ("I8", 1, False), 9: ("U8", 1, False), 10: ("BOOL", 1, False),
    11: ("I16", 2, False), 12: ("U16", 2, False), 13: ("I32", 4, False), 14: ("U32", 4, False),
    15: ("I64", 8, False), 16: ("U64", 8, False),
}
CODE_OF = {name: code for code, (name, _w, _r) in DTYPES.items()}
_UINT: dict[int, type[np.unsignedinteger]] = {2: np.uint16, 4: np.uint32, 8: np.uint64}
_INT: dict[str, type[np.integer]] = {"I16": np.int16, "U16": np.uint16, "I32": np.int32, "U32": np.uint32,
                                     "I64": np.int64, "U64": np.uint64}
_ELEMENT_PARAMS = zstandard.ZstdCompressionParameters(
    strategy=zstandard.STRATEGY_FAST, window_log=17, hash_log=12, search_log=1, min_match=7,
    target_length=0, write_content_size=True)
"""fp8/int8 codes: matches of 7+ bytes only, so zstd codes (almost) everything as Huffman literals:
shorter matches in a skewed random byte stream cost more than the literals they replace."""


class FrameError(ValueError):
    """A frame that does not decode to its block (the caller turns it into an IntegrityError)."""


@dataclass(frozen=True)
class Segment:
    """A byte range ``[start, end)`` of the file; ``dtype`` None for plain bytes."""

    start: int
    end: int
    dtype: str | None = None


def split_block(layout: list[Segment], start: int, end: int) -> list[Segment]:
    """The segments of ``[start, end)``: ``layout`` (sorted, covering the file) clipped to the block;
    a tensor cut mid-element by the block edge gives its partial elements as plain bytes, a tensor
    piece under ``SMALL_TENSOR`` bytes is plain bytes too (a pcodec stream has a fixed cost), and
    neighbouring plain bytes are one segment."""
    out: list[Segment] = []

    def add(seg: Segment) -> None:
        if seg.dtype is None and out and out[-1].dtype is None and out[-1].end == seg.start:
            out[-1] = Segment(out[-1].start, seg.end)
        else:
            out.append(seg)

    for seg in layout:
        a, b = max(seg.start, start), min(seg.end, end)
        if a >= b:
            continue
        if seg.dtype is None or b - a < SMALL_TENSOR:
            add(Segment(a, b))
            continue
        width = DTYPES[CODE_OF[seg.dtype]][1]
        a2 = seg.start + -(-(a - seg.start) // width) * width
        b2 = seg.start + (b - seg.start) // width * width
        if a < a2:
            add(Segment(a, a2))
        add(Segment(a2, b2, seg.dtype))
        if b2 < b:
            add(Segment(b2, b))
    return out


def _values(data: memoryview, code: int) -> np.ndarray:
    """The integers pcodec codes for a 2/4/8-byte tensor segment."""
    name, width, is_float = DTYPES[code]
    if not is_float:
        v = np.frombuffer(data, dtype=_INT[name])
        return v if v.ctypes.data % width == 0 else v.copy()  # pcodec reads aligned arrays only
    x = np.frombuffer(data, dtype=_UINT[width])
    one, top = x.dtype.type(1), x.dtype.type(width * 8 - 1)
    return (x << one) | (x >> top)


def _unrotate(x: np.ndarray) -> None:
    """Inverse of the rotation in ``_values``, in place, in cache-sized slices (one small scratch
    array instead of a temporary the size of the tensor)."""
    one, top = x.dtype.type(1), x.dtype.type(x.dtype.itemsize * 8 - 1)
    step = _SLICE // x.dtype.itemsize
    low = np.empty(min(step, x.size), dtype=x.dtype)
    for at in range(0, x.size, step):
        part = x[at:at + step]
        lo = low[:part.size]
        np.left_shift(part, top, out=lo)
        np.right_shift(part, one, out=part)
        np.bitwise_or(part, lo, out=part)


def _encode_segment(chunk: memoryview, dtype: str | None) -> tuple[int, int, bytes]:
    if dtype is None:
        level = TEXT_LEVEL if len(chunk) <= TEXT_LARGE else TEXT_LEVEL_LARGE
        return BYTES, 0, compressor(level, len(chunk)).compress(chunk)
    code = CODE_OF[dtype]
    if DTYPES[code][1] == 1:
        return ELEMENTS, code, zstandard.ZstdCompressor(compression_params=_ELEMENT_PARAMS).compress(chunk)
    config = ChunkConfig(compression_level=PCO_LEVEL)
    return PCO, code, standalone.simple_compress(_values(chunk, code), config)


def encode_block(data: bytes | memoryview, segments: list[Segment], offset: int) -> bytes:
    """Code one block (``data`` = the file's bytes from ``offset``) as a frame."""
    view = memoryview(data)
    heads: list[bytes] = []
    bodies: list[bytes] = []
    for seg in segments:
        chunk = view[seg.start - offset:seg.end - offset]
        kind, code, coded = _encode_segment(chunk, seg.dtype)
        heads.append(_SEG.pack(kind, code, 0, len(chunk), len(coded)))
        bodies.append(coded)
    return b"".join([_HEAD.pack(MAGIC, len(segments)), *heads, *bodies])


def _inflate_into(coded: memoryview, out: memoryview) -> None:
    """Decompress into ``out`` (``decompress`` releases the GIL, a ``stream_reader`` does not)."""
    size = len(out)
    declared = zstandard.frame_content_size(coded)
    if declared != size:
        raise FrameError(f"a zstd stream declares {declared} bytes, the frame says {size}")
    try:
        data = decompressor().decompress(coded, max_output_size=size)
    except zstandard.ZstdError as exc:
        raise FrameError(f"a zstd stream does not decode ({exc})") from exc
    if len(data) != size:
        raise FrameError(f"a zstd stream decodes to {len(data)} bytes, not {size}")
    np.frombuffer(out, dtype=np.uint8)[:] = np.frombuffer(data, dtype=np.uint8)  # copied without the GIL


def _pco_into(coded: memoryview, out: memoryview, code: int) -> None:
    name, width, is_float = DTYPES[code]
    dtype = _UINT[width] if is_float else _INT[name]
    dst = np.frombuffer(out, dtype=dtype)
    aligned = dst.ctypes.data % width == 0
    into = dst if aligned else np.empty(dst.size, dtype=dtype)  # pcodec writes aligned arrays only
    try:
        progress = standalone.simple_decompress_into(bytes(coded), into)
    except Exception as exc:  # pcodec raises its own error types (and ValueError/RuntimeError)
        raise FrameError(f"a pcodec stream does not decode ({exc})") from exc
    if progress.n_processed != into.size or not progress.finished:
        raise FrameError(f"a pcodec stream holds {progress.n_processed} values, the frame says {into.size}")
    if is_float:
        _unrotate(into)
    if not aligned:
        dst[:] = into


def decode_block(frame: bytes | bytearray | memoryview, size: int, out: memoryview | None = None,
                 pool: Executor | None = None) -> memoryview:
    """The ``size`` bytes of the block ``frame`` codes (written into ``out`` when given: a reused
    buffer of at least ``size`` bytes); FrameError when it cannot be that. With ``pool`` the segments
    (tensors) decode in parallel (pcodec, zstd and numpy release the GIL): a model of one or two blocks
    (a 90 MB model in 64 MiB blocks) still decodes on all cores."""
    view = memoryview(frame)
    if len(view) < _HEAD.size:
        raise FrameError("frame shorter than its header")
    magic, count = _HEAD.unpack_from(view, 0)
    if magic != MAGIC:
        raise FrameError("not an alz1 frame")
    if _HEAD.size + count * _SEG.size > len(view) or count > max(size, 1):
        raise FrameError(f"{count} segments cannot fit the frame")
    pos = _HEAD.size + count * _SEG.size
    plan: list[tuple[int, int, int, int]] = []
    total = coded_total = 0
    for i in range(count):
        kind, code, _zero, raw, coded = _SEG.unpack_from(view, _HEAD.size + i * _SEG.size)
        if kind == BYTES:
            ok = code == 0
        elif kind in (ELEMENTS, PCO) and code in DTYPES:
            width = DTYPES[code][1]
            ok = (width == 1) == (kind == ELEMENTS) and raw % width == 0
        else:
            ok = False
        if not ok:
            raise FrameError(f"segment {i}: unknown kind {kind} / dtype code {code} / length {raw}")
        total += raw
        coded_total += coded
        if total > size or pos + coded_total > len(view):
            raise FrameError(f"segment {i} runs past the block or the frame")
        plan.append((kind, code, raw, coded))
    if total != size or pos + coded_total != len(view):
        raise FrameError(f"segments hold {total} of the block's {size} bytes and {coded_total} coded bytes "
                         f"of {len(view) - pos}")
    # not zeroed: every byte is written below
    dst = np.empty(size, dtype=np.uint8).data if out is None else out[:size]
    jobs: list[tuple[int, int, memoryview, memoryview]] = []
    at = 0
    for kind, code, raw, coded in plan:
        jobs.append((kind, code, view[pos:pos + coded], dst[at:at + raw]))
        pos += coded
        at += raw
    if pool is None or len(jobs) < 2:
        for job in jobs:
            _decode_segment(*job)
        return dst
    futures = [pool.submit(_decode_segment, *job) for job in sorted(jobs, key=lambda j: -len(j[3]))]
    wait(futures)  # all of them, failed or not, before the caller may reuse ``out``
    for fut in futures:
        fut.result()  # the FrameError of a segment that did not decode
    return dst


def _decode_segment(kind: int, code: int, src: memoryview, dst: memoryview) -> None:
    if kind == PCO:
        _pco_into(src, dst, code)
    else:
        _inflate_into(src, dst)
