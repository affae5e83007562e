"""Chunk codec: how one record's bytes are coded against the same range of the base tensor.

A record holds one chunk of at most a few MiB. What the encoder writes today:

* changed tensor chunks: the element values ``new ^ old`` (``xor-pco``) or ``new - old`` with
  wrap-around (``zdiff-pco``; a weight nudged by a few ulps becomes a small number where XOR flips many
  bits), grouped by the *base* element's exponent and coded with ``pcodec`` (binned tANS, GB/s decoding
  without the GIL), one frame per group; reversible records of float tensors carry the old exponents
  ANS-coded under the new ones (``entropy``). ``xor-pco1`` / ``zdiff-pco1`` are the one-group forms;
* chunks up to ``SMALL`` also try the byte-plane codecs (``xor``, ``zdiff``, ``planes``: byte ``k`` of
  every element as one zstd frame), where pcodec's tables would cost more than they save;
* plain data (new tensors, removed tensors kept for the reverse direction) uses ``planes``; other bytes
  use ``zstd``, and non-tensor files ``prefix`` (zstd with the other version's file as raw prefix).

The smallest candidate wins per chunk. docs/delta-format.md has the byte layout of each codec.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import zstandard
from pcodec import ChunkConfig, DeltaSpec, ModeSpec, standalone

from airlock.delta import entropy
from airlock.delta.zstdio import compressor, decompressor
from airlock.errors import DeltaFormatError

ZSTD = 0
PLANES = 1
XOR = 2
ZDIFF = 3
PREFIX = 4
"""zstd with the same-path file of the other version as a raw-content prefix (non-tensor files)."""
XOR_PCO = 9
ZDIFF_PCO = 10
"""The element values themselves (``new ^ old`` unsigned, or ``new - old`` as a signed integer of the
element width) grouped by the base element's exponent, one ``pcodec`` frame per group; reversible
records of float tensors start with the old exponents coded under the new ones (``entropy``, under
``reverse_context``). Codecs 5-8 (byte planes ANS-coded) belonged to an earlier encoder and are
refused.
``pcodec`` bins numbers and tANS-codes the bins: as small as the byte-plane ANS coding or smaller
(one number is one symbol, so no information is lost between planes), decoding at GB/s without
holding the GIL."""
XOR_PCO1 = 11
ZDIFF_PCO1 = 12
"""As XOR_PCO / ZDIFF_PCO with one group (no exponent context, no reverse section)."""
ZDIFF_PRED = 13
"""As ZDIFF_PCO, less a prediction: the change most common in the chunk among elements whose old value
has the same exponent and top ``PRED_BITS`` mantissa bits (the *key*), from a table stored in the
record. Weight decay moves every weight that no gradient touches (the unused rows of an embedding) by
a fixed fraction of itself, so within a key the change is nearly constant and the residual is mostly
0. Reversible records also carry the old top mantissa bits coded under the new ones (``entropy``)."""
PRED_BITS = 4
_MANTISSA = {"F32": 23, "BF16": 7, "F16": 10}
"""Mantissa width of the dtypes ZDIFF_PRED codes (the key is exponent and top ``PRED_BITS`` bits)."""
PRED_MIN_HITS = 0.25
"""ZDIFF_PRED is tried when the prediction is exact for this share of a sample of the chunk (beyond its
unchanged elements), and kept only if smaller than ZDIFF_PCO (the reverse top bits can cost more
than the prediction saves where the mantissa is short)."""
PRED_SURE = 0.5
"""From this share on, an F32 chunk (whose top-bits section is small) skips coding ZDIFF_PCO too."""

CODEC_NAMES = {ZSTD: "zstd", PLANES: "planes", XOR: "xor", ZDIFF: "zdiff", PREFIX: "prefix",
               XOR_PCO: "xor-pco", ZDIFF_PCO: "zdiff-pco", XOR_PCO1: "xor-pco1", ZDIFF_PCO1: "zdiff-pco1",
               ZDIFF_PRED: "zdiff-pred"}
PCO_CODECS = frozenset({XOR_PCO, ZDIFF_PCO, XOR_PCO1, ZDIFF_PCO1, ZDIFF_PRED})
BASED = frozenset({XOR, ZDIFF}) | PCO_CODECS
PCO_LEVEL = 8
_PCO = ChunkConfig(compression_level=PCO_LEVEL, delta_spec=DeltaSpec.no_op(), mode_spec=ModeSpec.classic(),
                   enable_8_bit=True)
SMALL = 8 * 1024
"""Below this a chunk also tries plain zstd planes (context tables would cost more than they save)."""

LEVEL = 19
MAX_RAW = 64 * 1024 * 1024
"""Upper bound for one record's raw size; a larger claim in a delta is rejected as corrupt."""

_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
_INT = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}

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
    frames = [compressor(level, len(p)).compress(p) for p in planes]
    return Encoded(codec, width, raw_len, b"".join(frames), [len(f) for f in frames])


def encode_plain(data: bytes, level: int = LEVEL) -> Encoded:
    return _pack(ZSTD, 1, len(data), [data], level)


def encode_planes(data: bytes, width: int, level: int = LEVEL) -> Encoded:
    arr = np.frombuffer(data, dtype=_UINT[width])
    return _pack(PLANES, width, len(data), _split(arr, width), level)


def encode_prefix(data: bytes, prefix: bytes, level: int = LEVEL) -> Encoded:
    pdict = zstandard.ZstdCompressionDict(prefix, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    params = zstandard.ZstdCompressionParameters.from_level(level, source_size=len(data) + len(prefix),
                                                            write_content_size=True)
    comp = zstandard.ZstdCompressor(compression_params=params, dict_data=pdict)
    frame = comp.compress(data)
    return Encoded(PREFIX, 1, len(data), frame, [len(frame)])


# (shift, mask) that extract the exponent field (or its top 8 bits) of a float bit pattern
_EXPONENT = {"F32": (23, 0xFF), "BF16": (7, 0xFF), "F16": (10, 0x1F), "F64": (55, 0xFF),
             "F8_E4M3": (3, 0x0F), "F8_E5M2": (2, 0x1F), "F8_E8M0": (0, 0xFF)}


def context(bits: np.ndarray, dtype: str) -> np.ndarray | None:
    """Per-element coding context (uint8): the exponent of a float; None for integer dtypes."""
    if dtype not in _EXPONENT:
        return None
    shift, mask = _EXPONENT[dtype]
    return ((bits >> shift) & mask).astype(np.uint8)


_EDGE_LUT: dict[str, np.ndarray] = {}


def _edge(field: np.ndarray, shift: int) -> np.ndarray:
    upper = float((1 << shift) - 1) - field.astype(np.float64)
    dist = np.minimum(field.astype(np.float64), upper)
    _, length = np.frexp(dist)
    return (length.astype(np.uint8) * 2 + (upper < field)).astype(np.uint8)


def edge_context(bits: np.ndarray, dtype: str) -> np.ndarray:
    """How close a float is to the edge of its binade: 2 * bit length of the distance (in units in
    the last place) to the nearer boundary, + 1 when that is the upper one. Only near a boundary can
    a small move change the exponent, so this is the context for coding the exponent change of
    reversible records: far from the edges the change is certainly 0 and costs nothing."""
    if dtype not in _EXPONENT or dtype == "F8_E8M0":
        return np.zeros(bits.size, dtype=np.uint8)
    shift, _ = _EXPONENT[dtype]
    field = bits & ((1 << shift) - 1)
    if shift > 12:
        return _edge(field, shift)
    lut = _EDGE_LUT.get(dtype)
    if lut is None:  # small mantissas: a table over every mantissa value
        lut = _EDGE_LUT[dtype] = _edge(np.arange(1 << shift), shift)
    return lut[field]


def _lower_median(exp: np.ndarray) -> int:
    counts = np.cumsum(np.bincount(exp, minlength=256))
    return int(np.searchsorted(counts, (exp.size + 1) // 2))


def reverse_context(bits: np.ndarray, dtype: str) -> np.ndarray:
    """Context of the exponent change: the edge distance (``edge_context``) and where the new
    exponent lies relative to the chunk's lower median exponent (small weights move across binades
    more often): 8 buckets, from 6 binades below the median to 1 above."""
    edge = edge_context(bits, dtype)
    exp = context(bits, dtype)
    if exp is None:
        return edge
    bucket = np.clip(exp.astype(np.int16) - _lower_median(exp) + 6, 0, 7).astype(np.uint16)
    return edge.astype(np.uint16) * 8 + bucket


def _plane_arrays(d: np.ndarray, width: int) -> list[np.ndarray]:
    by = d.view(np.uint8).reshape(-1, width)
    return [np.ascontiguousarray(by[:, k]) for k in range(width)]


SAMPLE_BLOCKS = 8
SAMPLE_BLOCK = 1 << 16
"""The choice of transform and grouping is made on 8 evenly spread runs of 64 Ki elements of a
larger chunk: the estimate is as good and the chunk is read once more, not five times."""


def _sample(a: np.ndarray) -> np.ndarray:
    if a.size <= SAMPLE_BLOCKS * SAMPLE_BLOCK * 2:
        return a
    step = a.size // SAMPLE_BLOCKS
    return np.concatenate([a[i * step:i * step + SAMPLE_BLOCK] for i in range(SAMPLE_BLOCKS)])


def _choose(n_all: np.ndarray, o_all: np.ndarray, width: int, dtype: str,
            reversible: bool) -> tuple[int, bool]:
    """(ZDIFF or XOR, group by the old exponent?) from the ideal code length of the byte planes (or
    their runs) on a sample of the chunk; grouping pays for the reverse section it needs."""
    n, o = _sample(n_all), _sample(o_all)
    ctx_old = context(o, dtype)
    grouping = entropy.Grouping.of(ctx_old) if ctx_old is not None else None
    grouped = grouping is not None and grouping.sizes.size > 1
    flat_best: tuple[float, int] | None = None
    ctx_best: tuple[float, int] | None = None
    for plain, d in ((ZDIFF, _zigzag(n - o, width)), (XOR, n ^ o)):
        planes = _plane_arrays(d, width)
        hists = [grouping.histograms(p) if grouping is not None and grouped
                 else np.bincount(p, minlength=256)[None] for p in planes]
        flat = [h.sum(axis=0, keepdims=True) for h in hists]
        runs = [entropy.Runs.of(p, h) for p, h in zip(planes, flat, strict=True)]

        def size_of(hs: list[np.ndarray], runs: list[entropy.Runs | None] = runs) -> float:
            return sum(min(entropy.plane_cost(h, n.size), r.cost if r else float("inf"))
                       for h, r in zip(hs, runs, strict=True))

        cost = size_of(flat)
        if flat_best is None or cost < flat_best[0]:
            flat_best = (cost, plain)
        if grouped:
            cost = size_of(hists)
            if ctx_best is None or cost < ctx_best[0]:
                ctx_best = (cost, plain)
    assert flat_best is not None
    if ctx_best is None or ctx_best[0] >= flat_best[0] or ctx_old is None:
        return flat_best[1], False
    rev_cost = 0.0
    if reversible:
        ctx_new = context(n, dtype)
        assert ctx_new is not None
        change, rctx = ctx_old - ctx_new, reverse_context(n, dtype)
        rev_cost = entropy.best_cost(entropy.Grouping.of(rctx).histograms(change), change)
    if ctx_best[0] + rev_cost < flat_best[0]:
        return ctx_best[1], True
    return flat_best[1], False


def encode_diff(new: bytes, old: bytes, width: int, level: int = LEVEL, *, dtype: str = "",
                reversible: bool = True) -> Encoded:
    """Encode ``new`` against ``old``: difference or XOR, grouped by the old exponent or not
    (whichever the byte-plane histograms say is smaller, counting the reverse section the exponent
    grouping needs), coded with pcodec; small chunks also try plain zstd planes."""
    n = np.frombuffer(new, dtype=_UINT[width])
    o = np.frombuffer(old, dtype=_UINT[width])
    ctx_old = context(o, dtype)
    plain, use_ctx = _choose(n, o, width, dtype, reversible)
    hits, table = 0.0, None
    if plain == ZDIFF and dtype in _MANTISSA:  # a prediction needs the exponent grouping
        hits, table = _pred_table(n, o, dtype, width)
    flat_too = not use_ctx and hits >= PRED_MIN_HITS  # grouped only for the prediction: try both
    use_ctx = use_ctx or flat_too
    rev_in: tuple[np.ndarray, np.ndarray] | None = None
    if use_ctx and reversible:
        ctx_new = context(n, dtype)
        assert ctx_new is not None and ctx_old is not None
        # the old exponents as a change from the new ones (almost always 0), for NEW -> OLD
        rev_in = (ctx_old - ctx_new, reverse_context(n, dtype))
    values = (n - o).view(_INT[width]) if plain == ZDIFF else n ^ o
    parts: list[bytes] = []
    if use_ctx and ctx_old is not None:
        codec = ZDIFF_PCO if plain == ZDIFF else XOR_PCO
        parts.append(b"\x01" if rev_in is not None else b"\x00")
        if rev_in is not None:  # first, so the decoder can recover the grouping before the groups
            rev, rev_sections = entropy.encode([rev_in[0]], rev_in[1], level)
            parts += _cut(rev, rev_sections)
        grouping = entropy.Grouping.of(ctx_old)
        pred = None
        if table is not None and hits >= PRED_MIN_HITS:
            pred = _pred_parts(n, o, values, ctx_old, grouping, table, dtype, width, level,
                               rev_in is not None)
        sure = pred is not None and width >= 4 and hits >= PRED_SURE
        plain_parts = None if sure else _pco_encode(values, grouping)
        if pred is not None and (plain_parts is None or sum(map(len, pred)) < sum(map(len, plain_parts))):
            codec, parts = ZDIFF_PRED, parts + pred
        else:
            assert plain_parts is not None
            parts += plain_parts
    else:
        codec = ZDIFF_PCO1 if plain == ZDIFF else XOR_PCO1
        parts.append(standalone.simple_compress(np.ascontiguousarray(values), _PCO))
    enc = Encoded(codec, width, len(new), b"".join(parts), [len(p) for p in parts])
    if flat_too:
        frame = standalone.simple_compress(np.ascontiguousarray(values), _PCO)
        if len(frame) <= len(enc.payload):
            enc = Encoded(ZDIFF_PCO1, width, len(new), frame, [len(frame)])
    if len(new) <= SMALL:
        d = _zigzag(n - o, width) if plain == ZDIFF else n ^ o
        alt = _pack(plain, width, len(new), _split(d, width), level)
        if len(alt.payload) < len(enc.payload):
            return alt
    return enc


def _top(bits: np.ndarray, dtype: str) -> np.ndarray:
    """The top ``PRED_BITS`` mantissa bits of each element (uint8)."""
    return ((bits >> (_MANTISSA[dtype] - PRED_BITS)) & ((1 << PRED_BITS) - 1)).astype(np.uint8)


def _top_context(bits: np.ndarray, dtype: str) -> np.ndarray:
    """Context of the change of the top mantissa bits (reverse): how near the new value is to the
    edge of its top-bits bucket, as ``edge_context`` measures it for the binade, from the top 12 bits
    below the top bits (all of them for BF16 and F16), through a table."""
    shift = _MANTISSA[dtype] - PRED_BITS
    field = bits & ((1 << shift) - 1)
    if shift > 12:
        field, shift = field >> (shift - 12), 12
    key = f"top{shift}"
    lut = _EDGE_LUT.get(key)
    if lut is None:
        lut = _EDGE_LUT[key] = _edge(np.arange(1 << shift), shift)
    return lut[field]


def _pred_key(exp: np.ndarray, top: np.ndarray) -> np.ndarray:
    return (exp.astype(np.int64) << PRED_BITS) | top


def _pred_size(dtype: str, width: int) -> int:
    """Bytes of the prediction table: one change of the element width per key."""
    return (_EXPONENT[dtype][1] + 1) * (1 << PRED_BITS) * width


def _mode_table(key: np.ndarray, d: np.ndarray, width: int, dtype: str) -> np.ndarray:
    """The most common change ``d`` (unsigned view) per key; 0 for keys that do not occur."""
    comb = np.sort((key.astype(np.uint64) << np.uint64(32)) | d.astype(np.uint64))
    starts = np.concatenate(([0], np.flatnonzero(comb[1:] != comb[:-1]) + 1))
    lens = np.diff(np.append(starts, comb.size))
    vals = comb[starts]
    keys = (vals >> np.uint64(32)).astype(np.int64)
    order = np.lexsort((-lens, keys))
    first = order[np.concatenate(([True], keys[order][1:] != keys[order][:-1]))]
    table = np.zeros(_pred_size(dtype, width) // width, dtype=_UINT[width])
    table[keys[first]] = (vals[first] & np.uint64(0xFFFFFFFF)).astype(_UINT[width])
    return table


def _pred_table(n: np.ndarray, o: np.ndarray, dtype: str, width: int) -> tuple[float, np.ndarray]:
    """The prediction table from a sample of at most ``SAMPLE_BLOCK`` evenly spread elements, and the
    share of that sample it predicts exactly beyond the unchanged elements (which ZDIFF_PCO codes
    cheaply already: a table of zeros gains nothing)."""
    step = max(1, o.size // SAMPLE_BLOCK)
    so, sd = o[::step], n[::step] - o[::step]
    sexp = context(so, dtype)
    assert sexp is not None
    skey = _pred_key(sexp, _top(so, dtype))
    table = _mode_table(skey, sd, width, dtype)
    gain = np.count_nonzero(sd == table[skey]) - np.count_nonzero(sd == 0)
    return float(gain) / max(1, sd.size), table


def _pred_parts(n: np.ndarray, o: np.ndarray, values: np.ndarray, ctx_old: np.ndarray,
                grouping: entropy.Grouping, table: np.ndarray, dtype: str, width: int, level: int,
                reversible: bool) -> list[bytes]:
    """The sections of a ZDIFF_PRED record after its flag and exponent sections: reverse top bits,
    table, one pcodec frame per group of the residuals."""
    top_old = _top(o, dtype)
    resid = (values.view(_UINT[width]) - table[_pred_key(ctx_old, top_old)]).view(_INT[width])
    parts: list[bytes] = []
    if reversible:  # the old top bits as a change from the new ones (mod 2^PRED_BITS)
        change = (top_old - _top(n, dtype)) & ((1 << PRED_BITS) - 1)
        rev, rev_sections = entropy.encode([change.astype(np.uint8)], _top_context(n, dtype), level)
        parts += _cut(rev, rev_sections)
    raw = table.astype(f"<u{width}").tobytes()
    parts.append(compressor(level, len(raw)).compress(raw))
    return parts + _pco_encode(resid, grouping)


def _frames(payload: bytes, sizes: list[int], raw_each: int, dict_data: bytes | None = None) -> list[bytes]:
    out: list[bytes] = []
    pos = 0
    dec = decompressor()
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


def _cut(payload: bytes, sections: list[int]) -> list[bytes]:
    out, pos = [], 0
    for size in sections:
        out.append(payload[pos:pos + size])
        pos += size
    return out


def _pco_encode(values: np.ndarray, grouping: entropy.Grouping) -> list[bytes]:
    ordered = grouping.sort(values)
    b = grouping.bounds
    return [standalone.simple_compress(np.ascontiguousarray(ordered[b[i]:b[i + 1]]), _PCO)
            for i in range(len(grouping.sizes))]


def _pco_decode(codec: int, payload: bytes, sections: list[int], width: int, b: np.ndarray, dtype: str,
                reverse: bool) -> np.ndarray:
    """The element values of a pco record (signed for zdiff, unsigned for xor), in element order."""
    if sum(sections) != len(payload):
        raise DeltaFormatError("pco record sections do not add up to the record size", rule="delta-record")
    parts = _cut(payload, sections)
    pred = codec == ZDIFF_PRED
    if pred and dtype not in _MANTISSA:
        raise DeltaFormatError(f"zdiff-pred record for a {dtype or 'non-float'} tensor", rule="delta-record")
    ctx = context(b, dtype) if codec in (XOR_PCO, ZDIFF_PCO, ZDIFF_PRED) else None
    skip = 0
    table: np.ndarray | None = None
    if ctx is None:
        ctx = np.zeros(b.size, dtype=np.uint8)
    else:  # a flag section: 1 when the reverse sections (old exponents, old top bits) follow
        nrev = 2 if pred else 1
        if not parts or parts[0] not in (b"\x00", b"\x01") or len(parts) < 1 + 2 * nrev * parts[0][0] + pred:
            raise DeltaFormatError("pco record has a bad reverse flag", rule="delta-record")
        skip = 1 + 2 * nrev * parts[0][0]
        top = _top(b, dtype) if pred else None
        if reverse:
            if skip == 1:
                raise DeltaFormatError("record lacks the reverse context (made with --no-reverse?)",
                                       rule="delta-record")
            # ``b`` is the new version: first recover the old exponents, coded under the new ones
            rev = payload[sections[0]:sum(sections[:3])]
            change = entropy.decode(rev, sections[1:3], reverse_context(b, dtype), 1)[0]
            ctx = ctx + change  # uint8 arithmetic wraps exactly like the encoder's subtraction
            if top is not None:
                rev = payload[sum(sections[:3]):sum(sections[:5])]
                change = entropy.decode(rev, sections[3:5], _top_context(b, dtype), 1)[0]
                top = (top + change) & ((1 << PRED_BITS) - 1)
        if top is not None:
            if int(ctx.max(initial=0)) > _EXPONENT[dtype][1]:  # a damaged exponent change section
                raise DeltaFormatError("zdiff-pred record has an exponent out of range", rule="delta-record")
            table = _read_table(parts[skip], dtype, width)[_pred_key(ctx, top)]
            skip += 1
    grouping = entropy.Grouping.of(ctx)
    groups = len(grouping.sizes)
    if len(parts) - skip != groups:
        raise DeltaFormatError(f"pco record has {len(parts)} sections for {groups} groups",
                               rule="delta-record")
    ordered = np.empty(b.size, dtype=_INT[width] if codec in (ZDIFF_PCO, ZDIFF_PCO1, ZDIFF_PRED)
                       else _UINT[width])
    bounds = grouping.bounds
    for i, frame in enumerate(parts[skip:]):
        dst = ordered[bounds[i]:bounds[i + 1]]
        try:
            progress = standalone.simple_decompress_into(frame, dst)
        except (RuntimeError, TypeError, ValueError) as exc:
            raise DeltaFormatError(f"pco group {i} does not decode ({exc})", rule="delta-record") from exc
        if progress.n_processed != dst.size or not progress.finished:
            raise DeltaFormatError(f"pco group {i} holds the wrong number of values", rule="delta-record")
    values = grouping.unsort(ordered)
    if table is not None:
        values = (values.view(_UINT[width]) + table).view(_INT[width])
    return values


def _read_table(frame: bytes, dtype: str, width: int) -> np.ndarray:
    size = _pred_size(dtype, width)
    try:
        raw = decompressor().decompress(frame, max_output_size=size)
    except zstandard.ZstdError as exc:
        raise DeltaFormatError(f"prediction table does not decompress ({exc})", rule="delta-record") from exc
    if len(raw) != size:
        raise DeltaFormatError(f"prediction table is {len(raw)} bytes, expected {size}", rule="delta-record")
    return np.frombuffer(raw, dtype=f"<u{width}").astype(_UINT[width])


def decode(codec: int, width: int, raw_len: int, payload: bytes, planes: list[int],
           base: bytes | None = None, *, reverse: bool = False, dtype: str = "") -> bytes:
    """Rebuild a chunk. ``base`` is the other version's bytes for diff records (same length) and the
    prefix for PREFIX. With ``reverse`` a zdiff record subtracts (new -> old) instead of adding.
    ``dtype`` (of the tensor) selects the context of context-coded records."""
    if width not in _UINT or raw_len % width or raw_len > MAX_RAW:
        raise DeltaFormatError(f"record has invalid width {width} / size {raw_len}", rule="delta-record")
    if codec in (ZSTD, PREFIX):
        if len(planes) != 1:
            raise DeltaFormatError("zstd record must have one frame", rule="delta-record")
        return _frames(payload, planes, raw_len, base if codec == PREFIX else None)[0]
    n = raw_len // width
    if codec in PCO_CODECS:
        if base is None or len(base) != raw_len:
            raise DeltaFormatError("diff record needs a base of the same size", rule="delta-record")
        b = np.frombuffer(base, dtype=_UINT[width])
        v = _pco_decode(codec, payload, planes, width, b, dtype, reverse).view(_UINT[width])
        if codec in (XOR_PCO, XOR_PCO1):
            return (b ^ v).tobytes()
        return (b - v if reverse else b + v).tobytes()
    if codec not in (PLANES, XOR, ZDIFF) or len(planes) != width:
        raise DeltaFormatError(f"record has unknown codec {codec} or wrong plane count", rule="delta-record")
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
