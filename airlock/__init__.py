"""Airlock: signed bundles, tensor-aware deltas and fleet updates for air-gapped LLM appliances."""

__version__ = "0.1.0"
