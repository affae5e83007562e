"""Serving errors: Triton unreachable, slow, refusing a load, or a failed smoke test."""

from __future__ import annotations

from airlock.errors import AirlockError


class ServingError(AirlockError):
    """Triton is down or slow, rejected a request, or a model did not become ready."""

    exit_code = 50
    rule = "serving"


class SmokeTestError(ServingError):
    """The golden smoke test of a new version failed; the old version keeps serving."""

    exit_code = 51
    rule = "smoke-test"


class EncryptedVersionError(ServingError):
    """A version stored encrypted was about to be served: Triton would read ciphertext (refused)."""

    exit_code = 52
    rule = "encrypted-version"
