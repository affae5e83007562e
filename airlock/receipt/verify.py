"""Verify a site receipt on the release side: the bundle's signature rules (``verify_signature``:
one signature, pinned signer, strong digest, binary class, key neither expired nor revoked), then
the strict schema, then the site binding (``SITE=FPR`` pins a key to one site) and anti-replay: the
sequence must be above the last accepted one from that site, kept in ``<state>/<site>.json``."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airlock import names
from airlock.bundle.manifest import MAX_SIGNATURE_BYTES
from airlock.bundle.signing import SignerInfo, Trust, normalise_fpr, verify_signature
from airlock.errors import AirlockError, ManifestError, ReplayError, SignatureError
from airlock.receipt.model import MAX_RECEIPT_BYTES, Receipt, parse_receipt


@dataclass
class VerifiedReceipt:
    receipt: Receipt
    signer: SignerInfo
    sha256: str
    path: Path
    previous_sequence: int | None

    def as_dict(self) -> dict[str, Any]:
        r = self.receipt
        return {"ok": True, "path": str(self.path), "site": r.site, "sequence": r.sequence,
                "previous_sequence": self.previous_sequence, "sha256": self.sha256,
                "signer": self.signer.primary_fingerprint, "hosts": sorted(r.hosts),
                "compatible": r.compatible, "created": r.created}


def site_pins(entries: list[str]) -> tuple[list[str], dict[str, set[str]]]:
    """``FPR`` (any site) or ``SITE=FPR`` (only receipts of SITE) -> (all fingerprints, site -> pins)."""
    fprs: list[str] = []
    bound: dict[str, set[str]] = {}
    for e in entries:
        site, sep, fpr = e.rpartition("=")
        if sep and not names.is_bundle_id(site):
            raise SignatureError(f"--trust {e!r}: {site!r} is not a site id", rule="trust-format")
        fprs.append(fpr)
        if sep:
            bound.setdefault(site, set()).add(normalise_fpr(fpr))
    return fprs, bound


def _read(path: Path, limit: int, cls: type[AirlockError], rule: str) -> bytes | None:
    from airlock.bundle.safeio import read_limited

    if not path.exists() and not path.is_symlink():
        return None
    return read_limited(path.parent, path.name, limit, cls, rule)


def state_file(state_dir: Path, site: str) -> Path:
    return Path(state_dir) / f"{site}.json"


def last_accepted(state_dir: Path, site: str) -> dict[str, Any] | None:
    p = state_file(state_dir, site)
    if not p.exists():
        return None
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
        int(raw["sequence"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ReplayError(f"{p}: the anti-replay state of site {site} cannot be read ({exc}); refusing "
                          "rather than accepting any sequence", path=str(p), rule="replay-state") from exc
    return dict(raw)


def verify_receipt(path: Path, trust_entries: list[str], *, keyring: Path | None = None,
                   gnupghome: Path | None = None, state_dir: Path | None = None,
                   record: bool = True, latest_only: bool = False) -> VerifiedReceipt:
    """Fail closed: signature (exit 10), schema (11), then anti-replay against ``state_dir`` (16).
    ``record``: keep this receipt as the site's last accepted one. ``latest_only`` (the planner): the
    receipt must be exactly the last accepted one (same sequence and bytes), nothing older."""
    path = Path(path)
    data = _read(path, MAX_RECEIPT_BYTES, ManifestError, "receipt-size")
    if data is None:
        raise ManifestError(f"{path}: no such receipt", path=str(path), rule="receipt-missing")
    sig = _read(path.with_name(path.name + ".asc"), MAX_SIGNATURE_BYTES, SignatureError, "bad-signature")
    fprs, bound = site_pins(trust_entries)
    trust = Trust(fingerprints=fprs, keyring=keyring, gnupghome=gnupghome)
    signer = verify_signature(data, sig, trust, name=str(path))
    receipt = parse_receipt(data, str(path))
    pins = bound.get(receipt.site)
    unbound = {normalise_fpr(f) for f in fprs} - {f for s in bound.values() for f in s}
    allowed = (pins or set()) | unbound
    if signer.primary_fingerprint not in allowed and signer.fingerprint not in allowed:
        raise SignatureError(f"{path}.asc: signed by {signer.primary_fingerprint[-16:]}, which is not "
                             f"pinned for site {receipt.site}", path=f"{path}.asc", rule="untrusted-signer")
    digest = hashlib.sha256(data).hexdigest()
    prev: int | None = None
    if state_dir is not None:
        last = last_accepted(state_dir, receipt.site)
        prev = int(last["sequence"]) if last else None
        if latest_only:
            if last is None or prev != receipt.sequence or last.get("sha256") != digest:
                raise ReplayError(f"{path}: not the last receipt accepted from site {receipt.site} "
                                  f"(accepted: sequence {prev}); verify it first with airlock receipt verify",
                                  path=str(path), rule="replay")
        elif prev is not None and receipt.sequence <= prev:
            raise ReplayError(f"{path}: receipt sequence {receipt.sequence} of site {receipt.site} is not "
                              f"above the last accepted {prev} (a replayed or stale receipt)", path=str(path),
                              rule="replay")
        if record and not latest_only:
            from airlock.fsutil import atomic_write_bytes

            doc = {"site": receipt.site, "sequence": receipt.sequence, "sha256": digest,
                   "signer": signer.primary_fingerprint, "created": receipt.created}
            Path(state_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
            atomic_write_bytes(state_file(state_dir, receipt.site),
                               (json.dumps(doc, sort_keys=True) + "\n").encode(), 0o644)
    return VerifiedReceipt(receipt, signer, digest, path, prev)
