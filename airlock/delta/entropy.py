"""Context-modelled entropy coding of byte planes (ANS via ``constriction``).

A fine-tune moves a weight by an amount that is roughly the same in absolute terms across a tensor,
so in units in the last place the move depends on the weight's exponent: small weights move by many
ulps, large ones by few. The decoder already knows the old weight, so its exponent is a free context.
Each plane is coded with one static categorical model per context group (an exponent value with
enough elements; the rare ones share a group), stored as quantized frequency tables.

Stream layout (one per record): ``u32 len(tables)`` + zstd(tables) + per plane ``u32 len`` + ANS words.
``tables`` = one mode byte per plane (0 raw, 1 coded) + for each coded plane and each group (in
ascending context order, the shared rest group last) 256 little-endian u16 frequencies.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import constriction
import numpy as np
import zstandard

from airlock.errors import DeltaFormatError

MIN_GROUP = 512
"""Contexts with fewer elements share one model: a table costs more than it saves below this."""
FREQ_TOTAL = 1 << 15
RAW_IF_ABOVE = 0.97
"""A plane is stored raw unless coding saves at least 3 %: raw planes cost nothing to decode."""
_U32 = struct.Struct("<I")


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
    order: np.ndarray
    bounds: np.ndarray

    @classmethod
    def of(cls, ctx: np.ndarray) -> Grouping:
        gid, sizes = groups(ctx)
        return cls(gid, sizes, np.argsort(gid, kind="stable"), np.concatenate([[0], np.cumsum(sizes)]))

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


def encode(planes: list[np.ndarray], ctx: np.ndarray, level: int = 19, *, grouping: Grouping | None = None,
           hists: list[np.ndarray] | None = None) -> tuple[bytes, list[int]]:
    """Code ``planes`` (uint8 arrays of equal length, least significant first) under context ``ctx``
    (small non-negative ints). Returns the stream and its section lengths (tables, then one per
    plane). ``grouping`` / ``hists`` may be passed when already computed for ``ctx`` / ``planes``."""
    n = ctx.size
    g = grouping or Grouping.of(ctx)
    sizes, bounds = g.sizes, g.bounds
    modes = bytearray(len(planes))
    tables: list[bytes] = []  # top plane first, as the decoder reads them
    sections: list[bytes] = [b""] * len(planes)
    for k in range(len(planes) - 1, -1, -1):
        plane = planes[k]
        hist = hists[k] if hists is not None else g.histograms(plane)
        if plane_cost(hist, n) >= n:  # clearly incompressible: skip the coder
            sections[k] = plane.tobytes()
            continue
        sorted_syms = plane[g.order].astype(np.int32)
        freqs = [_quantize(h) for h in hist]
        coder = constriction.stream.stack.AnsCoder()
        for i in range(len(sizes) - 1, -1, -1):
            if np.count_nonzero(freqs[i]) > 1:  # a constant group needs no symbols at all
                coder.encode_reverse(sorted_syms[bounds[i]:bounds[i + 1]], _model(freqs[i]))
        words = coder.get_compressed().tobytes()
        if len(words) + 512 * len(sizes) >= RAW_IF_ABOVE * n:
            sections[k] = plane.tobytes()
        else:
            modes[k] = 1
            tables.extend(f.astype("<u2").tobytes() for f in freqs)
            sections[k] = words
    from airlock.delta.codec import compressor

    raw_tables = bytes(modes) + b"".join(tables)
    blob = compressor(level, len(raw_tables)).compress(raw_tables)
    parts = [_U32.pack(len(blob)) + blob] + [_U32.pack(len(s)) + s for s in sections]
    return b"".join(parts), [len(p) for p in parts]


def decode(payload: bytes, sections: list[int], ctx: np.ndarray, nplanes: int) -> list[np.ndarray]:
    """Inverse of ``encode`` given the same ``ctx``."""
    if len(sections) != nplanes + 1 or sum(sections) != len(payload):
        raise DeltaFormatError("context-coded record has the wrong number of sections", rule="delta-record")
    n = ctx.size
    grouping = Grouping.of(ctx)
    sizes, order = grouping.sizes, grouping.order
    pos = 0
    views: list[bytes] = []
    for s in sections:
        part = payload[pos:pos + s]
        pos += s
        if len(part) < 4 or _U32.unpack_from(part)[0] != len(part) - 4:
            raise DeltaFormatError("context-coded record section length mismatch", rule="delta-record")
        views.append(part[4:])
    try:
        limit = nplanes * (1 + 512 * len(sizes))
        meta = zstandard.ZstdDecompressor().decompress(views[0], max_output_size=limit)
    except zstandard.ZstdError as exc:
        raise DeltaFormatError(f"context tables do not decompress ({exc})", rule="delta-record") from exc
    modes = meta[:nplanes]
    if len(modes) != nplanes or any(m > 1 for m in modes):
        raise DeltaFormatError("context tables have the wrong size", rule="delta-record")
    tpos = nplanes
    out: list[np.ndarray | None] = [None] * nplanes
    for k in range(nplanes - 1, -1, -1):  # top plane first: lower planes' contexts depend on it
        data = views[k + 1]
        if modes[k] == 0:
            if len(data) != n:
                raise DeltaFormatError("raw plane has the wrong size", rule="delta-record")
            out[k] = np.frombuffer(data, dtype=np.uint8)
            continue
        if len(meta) < tpos + 512 * len(sizes):
            raise DeltaFormatError("context tables are too short", rule="delta-record")
        if len(data) % 4:
            raise DeltaFormatError("coded plane is not whole 32-bit words", rule="delta-record")
        words = np.frombuffer(data, dtype=np.uint32)
        coder = constriction.stream.stack.AnsCoder(words)
        sorted_syms = np.empty(n, dtype=np.uint8)
        pos = 0
        for g, size in enumerate(sizes):
            freqs = np.frombuffer(meta, dtype="<u2", count=256, offset=tpos + 512 * g)
            used = np.flatnonzero(freqs)
            try:
                if used.size == 1:
                    sorted_syms[pos:pos + size] = used[0]
                else:
                    sorted_syms[pos:pos + size] = coder.decode(_model(freqs), int(size))
            except Exception as exc:  # constriction raises plain errors on exhausted/corrupt input
                raise DeltaFormatError(f"coded plane does not decode ({exc})", rule="delta-record") from exc
            pos += int(size)
        tpos += 512 * len(sizes)
        plane = np.empty(n, dtype=np.uint8)
        plane[order] = sorted_syms
        out[k] = plane
    if tpos != len(meta):
        raise DeltaFormatError("context tables have the wrong size", rule="delta-record")
    return [p for p in out if p is not None]
