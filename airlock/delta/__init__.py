"""Tensor-aware deltas between two versions of a safetensors model (see docs/delta-format.md)."""

from __future__ import annotations

from airlock.delta.apply import ApplySummary, apply_delta, verify_source
from airlock.delta.chain import ChainStep, apply_chain, find_chain, find_chain_steps, identify_version
from airlock.delta.header import DeltaHeader, read_delta_header
from airlock.delta.inventory import content_id, scan
from airlock.delta.make import DeltaSummary, make_delta

__all__ = [
    "ApplySummary", "ChainStep", "DeltaHeader", "DeltaSummary", "apply_chain", "apply_delta", "content_id",
    "find_chain", "find_chain_steps", "identify_version", "make_delta", "read_delta_header", "scan",
    "verify_source",
]
