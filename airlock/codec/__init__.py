"""Lossless coding of bundle payloads (compressed full bundles, docs/bundle-format.md, codec alz1)."""
