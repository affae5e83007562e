"""Signed site receipts (docs/receipts.md): what an air-gapped site runs, signed with the site's key,
carried back to the release side, verified there (pinned site keys, anti-replay) and turned into
the minimal next bundle per site (``airlock.receipt.plan``)."""

from airlock.receipt.model import (
    FORMAT_VERSION,
    HostState,
    KeptVersion,
    ModelState,
    Receipt,
    canonical_bytes,
    parse_receipt,
)

__all__ = ["FORMAT_VERSION", "HostState", "KeptVersion", "ModelState", "Receipt", "canonical_bytes",
           "parse_receipt"]
