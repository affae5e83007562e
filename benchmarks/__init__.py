"""Benchmarks: `python -m benchmarks.run` (delta sizes/speeds vs bsdiff, xdelta3, zstd)."""
