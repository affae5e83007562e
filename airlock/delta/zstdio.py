"""Per-thread zstd contexts shared by the delta's codec, entropy coder and container.

The lowest layer of ``airlock.delta``: it imports nothing of the package, so ``codec`` and ``entropy``
(which both compress small tables and planes) no longer import each other."""

from __future__ import annotations

import threading

import zstandard

_local = threading.local()


def compressor(level: int, size: int) -> zstandard.ZstdCompressor:
    """A per-thread compressor whose window and tables are sized for ``size`` bytes of input (a
    level-19 context sized for large inputs costs milliseconds to reset, per call)."""
    bucket = max(1 << 10, 1 << (max(size, 1) - 1).bit_length())
    cache: dict[tuple[int, int], zstandard.ZstdCompressor] = _local.__dict__.setdefault("c", {})
    key = (level, bucket)
    if key not in cache:
        params = zstandard.ZstdCompressionParameters.from_level(level, source_size=bucket,
                                                                write_content_size=True)
        cache[key] = zstandard.ZstdCompressor(compression_params=params)
    return cache[key]


def decompressor() -> zstandard.ZstdDecompressor:
    """A per-thread decompressor (contexts are not thread-safe; making one per call costs allocations)."""
    d: zstandard.ZstdDecompressor | None = getattr(_local, "d", None)
    if d is None:
        d = _local.d = zstandard.ZstdDecompressor()
    return d
