"""Context-modelled entropy coding of byte planes (ANS via ``constriction``).

What uses it today: the reverse section of the pcodec records (codecs 9 and 10 in docs/delta-format.md):
the old exponent bytes, coded with the new exponents as context, so a delta also takes the new version
back to the old one. The forward direction is coded with pcodec (``codec``); the byte-plane ANS record
codecs (5-8) of an earlier encoder are retired and refused.

A fine-tune moves a weight by an amount that is roughly the same in absolute terms across a tensor,
so in units in the last place the move depends on the weight's exponent: small weights move by many
ulps, large ones by few. The decoder already knows the old weight, so its exponent is a free context.
Each plane is coded with one static categorical model per context group (an exponent value with
enough elements; the rare ones share a group), stored as quantized frequency tables.

A plane that is mostly zero (a sparse update: fp8 codes moved by one step, weights moved by one ulp)
is coded as *runs* instead: the gaps between its non-zero bytes and their values, so decoding costs
two symbols per changed element rather than one per element, at the same size (a memoryless gap
with an escape for long ones is the zero/non-zero sequence's own entropy).

Stream layout (one per record): ``u32 len(tables)`` + zstd(tables) + per plane ``u32 len`` + ANS words.
``tables`` = one mode byte per plane (0 raw, 1 coded, 2 runs) + per plane, top plane first: coded:
for each group (in ascending context order, the shared rest group last) 256 little-endian u16
frequencies; runs: ``u32 non-zero count``, ``u32 gap symbol count``, 256 u16 gap frequencies, 256
u16 value frequencies.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import constriction
import numpy as np
import zstandard

from airlock.delta.zstdio import compressor, decompressor
from airlock.errors import DeltaFormatError

MIN_GROUP = 512
"""Contexts with fewer elements share one model: a table costs more than it saves below this."""
FREQ_TOTAL = 1 << 15
RAW_IF_ABOVE = 0.97
"""A plane is stored raw unless coding saves at least 3 %: raw planes cost nothing to decode."""
RUNS_IF_BELOW = 1.02
"""A plane is coded as runs when that is at most 2 % larger than coding every element: it decodes
several times faster (symbols per changed element instead of per element)."""
ESCAPE = 255
"""Gap symbol meaning "255 more zeros, the gap goes on"; 0..254 end a gap."""
RAW, CODED, RUNS = 0, 1, 2
_U32 = struct.Struct("<I")
_RUNS_HEAD = struct.Struct("<II")


def groups(ctx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(group id per element, element count per group): one group per frequent context value,
    the rest in a last shared group. Depends only on ``ctx``, which both sides can compute."""
    counts = np.bincount(ctx)
    frequent = np.flatnonzero(counts >= MIN_GROUP)
    gid_of = np.full(counts.size, frequent.size, dtype=np.uint8 if frequent.size < 256 else np.uint16)
    gid_of[frequent] = np.arange(frequent.size)
    gid = gid_of[ctx]
    rest = int(ctx.size - counts[frequent].sum())
    sizes = np.append(counts[frequent], rest) if rest else counts[frequent]
    return gid, sizes


def _quantize(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    f = np.where(counts > 0, np.maximum(1, (counts * FREQ_TOTAL) // max(int(total), 1)), 0)
    return f.astype(np.uint16)


def _model(freqs: np.ndarray) -> constriction.stream.model.Categorical:
    """The model over ``0..last used symbol`` (a shorter alphabet decodes faster)."""
    used = np.flatnonzero(freqs)
    top = max(2, int(used[-1]) + 1 if used.size else 2)  # constriction needs two symbols
    return constriction.stream.model.Categorical(freqs[:top].astype(np.float32), perfect=False)


@dataclass
class Grouping:
    """Elements ordered group by group (stable): computed once per chunk, shared by all planes."""

    gid: np.ndarray
    sizes: np.ndarray
    bounds: np.ndarray
    _order: np.ndarray | None = None

    @classmethod
    def of(cls, ctx: np.ndarray) -> Grouping:
        if ctx.size == 0 or not ctx.any() or (ctx == ctx[0]).all():  # one context: no sorting
            return cls(np.zeros(ctx.size, dtype=np.uint8), np.array([ctx.size]), np.array([0, ctx.size]))
        gid, sizes = groups(ctx)
        return cls(gid, sizes, np.concatenate([[0], np.cumsum(sizes)]))

    @property
    def order(self) -> np.ndarray | None:
        """Element indices group by group; None when there is one group (element order). Sorted
        on first use: estimating sizes needs only ``gid``."""
        if self.sizes.size <= 1:
            return None
        if self._order is None:
            self._order = np.argsort(self.gid, kind="stable")
        return self._order

    def sort(self, plane: np.ndarray) -> np.ndarray:
        return plane if self.order is None else plane[self.order]

    def unsort(self, sorted_syms: np.ndarray) -> np.ndarray:
        if self.order is None:
            return sorted_syms
        plane = np.empty_like(sorted_syms)
        plane[self.order] = sorted_syms
        return plane

    def histograms(self, plane: np.ndarray) -> np.ndarray:
        """Symbol counts per group, shape (groups, 256), in one pass."""
        key = self.gid.astype(np.int32) * 256 + plane
        return np.bincount(key, minlength=self.sizes.size * 256).reshape(self.sizes.size, 256)


def estimate(hists: np.ndarray) -> float:
    """Bytes an ideal coder needs for a plane with these per-group histograms (tables excluded)."""
    totals = hists.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        bits = np.where(hists > 0, hists * np.log2(np.maximum(totals, 1) / np.maximum(hists, 1)), 0.0)
    return float(bits.sum()) / 8


def plane_cost(hists: np.ndarray, n: int) -> float:
    """Estimated stored size of a plane: coded, or raw when coding would not save enough."""
    coded = estimate(hists) + 64 * hists.shape[0]
    return coded if coded < RAW_IF_ABOVE * n else float(n)


@dataclass
class Runs:
    """A plane as zero runs: ``gaps`` (symbols, ``ESCAPE`` chains for long gaps) and ``values``."""

    gaps: np.ndarray
    values: np.ndarray
    cost: float

    @classmethod
    def of(cls, plane: np.ndarray, hist: np.ndarray | None = None) -> Runs | None:
        """None when fewer than half the bytes are zero (runs cannot win there)."""
        zeros = int(hist[:, 0].sum()) if hist is not None else int(plane.size - np.count_nonzero(plane))
        if 2 * zeros < plane.size:
            return None
        nz = np.flatnonzero(plane)
        gap = np.diff(nz, prepend=-1) - 1
        escapes, last = np.divmod(gap, ESCAPE)
        ends = np.cumsum(escapes + 1) - 1
        gaps = np.full(int(ends[-1]) + 1 if nz.size else 0, ESCAPE, dtype=np.uint8)
        gaps[ends] = last
        values = plane[nz]
        gh = np.bincount(gaps, minlength=256)[None]
        vh = np.bincount(values, minlength=256)[None]
        return cls(gaps, values, estimate(gh) + estimate(vh) + 136)


def best_cost(hist: np.ndarray, plane: np.ndarray) -> float:
    """``plane_cost`` with the runs coding as a further option."""
    dense = plane_cost(hist, plane.size)
    runs = Runs.of(plane, hist)
    return min(dense, runs.cost) if runs is not None else dense


def _encode_runs(runs: Runs) -> tuple[bytes, bytes]:
    """(tables, ANS words): gaps decode first, then values."""
    gq = _quantize(np.bincount(runs.gaps, minlength=256))
    vq = _quantize(np.bincount(runs.values, minlength=256))
    coder = constriction.stream.stack.AnsCoder()
    if np.count_nonzero(vq) > 1:
        coder.encode_reverse(runs.values.astype(np.int32), _model(vq))
    if np.count_nonzero(gq) > 1:
        coder.encode_reverse(runs.gaps.astype(np.int32), _model(gq))
    head = _RUNS_HEAD.pack(runs.values.size, runs.gaps.size)
    return head + gq.astype("<u2").tobytes() + vq.astype("<u2").tobytes(), coder.get_compressed().tobytes()


def _symbols(coder: constriction.stream.stack.AnsCoder, freqs: np.ndarray, count: int) -> np.ndarray:
    used = np.flatnonzero(freqs)
    if count == 0:
        return np.empty(0, dtype=np.uint8)
    if used.size == 0:
        raise DeltaFormatError("coded plane has an empty frequency table", rule="delta-record")
    if used.size == 1:
        return np.full(count, used[0], dtype=np.uint8)
    try:
        return np.asarray(coder.decode(_model(freqs), count)).astype(np.uint8)
    except Exception as exc:  # constriction raises plain errors on exhausted/corrupt input
        raise DeltaFormatError(f"coded plane does not decode ({exc})", rule="delta-record") from exc


def _decode_runs(meta: bytes, tpos: int, words: np.ndarray, n: int) -> tuple[np.ndarray, int]:
    """(plane, position after its tables) for a runs-coded plane."""
    if len(meta) < tpos + _RUNS_HEAD.size + 1024:
        raise DeltaFormatError("runs tables are too short", rule="delta-record")
    count, nsyms = _RUNS_HEAD.unpack_from(meta, tpos)
    if count > n or not count <= nsyms <= count + n // ESCAPE + 1 or (count == 0) != (nsyms == 0):
        raise DeltaFormatError("runs plane has impossible counts", rule="delta-record")
    gq = np.frombuffer(meta, dtype="<u2", count=256, offset=tpos + _RUNS_HEAD.size)
    vq = np.frombuffer(meta, dtype="<u2", count=256, offset=tpos + _RUNS_HEAD.size + 512)
    coder = constriction.stream.stack.AnsCoder(words)
    gaps = _symbols(coder, gq, nsyms).astype(np.int64)
    values = _symbols(coder, vq, count)
    if nsyms == count:  # no long gaps: one symbol per non-zero byte
        if gaps.size and int(gaps.max()) >= ESCAPE:
            raise DeltaFormatError("runs plane gaps do not match the non-zero count", rule="delta-record")
        pos = np.cumsum(gaps + 1) - 1
    else:
        ends = np.flatnonzero(gaps != ESCAPE)
        if ends.size != count or (count and ends[-1] != nsyms - 1):
            raise DeltaFormatError("runs plane gaps do not match the non-zero count", rule="delta-record")
        escapes = np.diff(ends, prepend=-1) - 1
        pos = np.cumsum(escapes * ESCAPE + gaps[ends] + 1) - 1
    if count and pos[-1] >= n:
        raise DeltaFormatError("runs plane runs past the end of the chunk", rule="delta-record")
    plane = np.zeros(n, dtype=np.uint8)
    plane[pos] = values
    return plane, tpos + _RUNS_HEAD.size + 1024


def encode(planes: list[np.ndarray], ctx: np.ndarray, level: int = 19) -> tuple[bytes, list[int]]:
    """Code ``planes`` (uint8 arrays of equal length, least significant first) under context ``ctx``
    (small non-negative ints). Returns the stream and its section lengths (tables, then one per
    plane)."""
    n = ctx.size
    g = Grouping.of(ctx)
    sizes, bounds = g.sizes, g.bounds
    modes = bytearray(len(planes))
    tables: list[bytes] = []  # top plane first, as the decoder reads them
    sections: list[bytes] = [b""] * len(planes)
    for k in range(len(planes) - 1, -1, -1):
        plane = planes[k]
        hist = g.histograms(plane)
        dense = plane_cost(hist, n)
        runs = Runs.of(plane, hist)
        if runs is not None and runs.cost <= RUNS_IF_BELOW * dense and runs.cost < RAW_IF_ABOVE * n:
            modes[k] = RUNS
            table, sections[k] = _encode_runs(runs)
            tables.append(table)
            continue
        if dense >= n:  # clearly incompressible: skip the coder
            sections[k] = plane.tobytes()
            continue
        sorted_syms = g.sort(plane).astype(np.int32)
        freqs = [_quantize(h) for h in hist]
        coder = constriction.stream.stack.AnsCoder()
        for i in range(len(sizes) - 1, -1, -1):
            if np.count_nonzero(freqs[i]) > 1:  # a constant group needs no symbols at all
                coder.encode_reverse(sorted_syms[bounds[i]:bounds[i + 1]], _model(freqs[i]))
        words = coder.get_compressed().tobytes()
        if len(words) + 512 * len(sizes) >= RAW_IF_ABOVE * n:
            sections[k] = plane.tobytes()
        else:
            modes[k] = CODED
            tables.extend(f.astype("<u2").tobytes() for f in freqs)
            sections[k] = words
    raw_tables = bytes(modes) + b"".join(tables)
    blob = compressor(level, len(raw_tables)).compress(raw_tables)
    parts = [_U32.pack(len(blob)) + blob] + [_U32.pack(len(s)) + s for s in sections]
    return b"".join(parts), [len(p) for p in parts]


def decode(payload: bytes, sections: list[int], ctx: np.ndarray, nplanes: int) -> list[np.ndarray]:
    """Inverse of ``encode`` given the same ``ctx``."""
    if len(sections) != nplanes + 1 or sum(sections) != len(payload):
        raise DeltaFormatError("context-coded record has the wrong number of sections", rule="delta-record")
    n = ctx.size
    grouping: Grouping | None = None  # only coded planes need it (runs and raw ones do not)
    pos = 0
    views: list[bytes] = []
    for s in sections:
        part = payload[pos:pos + s]
        pos += s
        if len(part) < 4 or _U32.unpack_from(part)[0] != len(part) - 4:
            raise DeltaFormatError("context-coded record section length mismatch", rule="delta-record")
        views.append(part[4:])
    try:
        most_groups = min(257, n // MIN_GROUP + 1)
        limit = nplanes * (1 + max(512 * most_groups, _RUNS_HEAD.size + 1024))
        meta = decompressor().decompress(views[0], max_output_size=limit)
    except zstandard.ZstdError as exc:
        raise DeltaFormatError(f"context tables do not decompress ({exc})", rule="delta-record") from exc
    modes = meta[:nplanes]
    if len(modes) != nplanes or any(m > RUNS for m in modes):
        raise DeltaFormatError("context tables have the wrong size", rule="delta-record")
    tpos = nplanes
    out: list[np.ndarray | None] = [None] * nplanes
    for k in range(nplanes - 1, -1, -1):  # top plane first: lower planes' contexts depend on it
        data = views[k + 1]
        if modes[k] == RAW:
            if len(data) != n:
                raise DeltaFormatError("raw plane has the wrong size", rule="delta-record")
            out[k] = np.frombuffer(data, dtype=np.uint8)
            continue
        if len(data) % 4:
            raise DeltaFormatError("coded plane is not whole 32-bit words", rule="delta-record")
        words = np.frombuffer(data, dtype=np.uint32)
        if modes[k] == RUNS:
            out[k], tpos = _decode_runs(meta, tpos, words, n)
            continue
        if grouping is None:
            grouping = Grouping.of(ctx)
        sizes = grouping.sizes
        if len(meta) < tpos + 512 * len(sizes):
            raise DeltaFormatError("context tables are too short", rule="delta-record")
        tables = np.frombuffer(meta, dtype="<u2", count=256 * len(sizes), offset=tpos).reshape(-1, 256)
        if not tables[:, 1:].any():  # every group is constant zero
            out[k] = np.zeros(n, dtype=np.uint8)
            tpos += 512 * len(sizes)
            continue
        coder = constriction.stream.stack.AnsCoder(words)
        sorted_syms = np.empty(n, dtype=np.uint8)
        pos = 0
        for g, size in enumerate(sizes):
            freqs = np.frombuffer(meta, dtype="<u2", count=256, offset=tpos + 512 * g)
            sorted_syms[pos:pos + size] = _symbols(coder, freqs, int(size))
            pos += int(size)
        tpos += 512 * len(sizes)
        out[k] = grouping.unsort(sorted_syms)
    if tpos != len(meta):
        raise DeltaFormatError("context tables have the wrong size", rule="delta-record")
    return [p for p in out if p is not None]
