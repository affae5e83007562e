"""Create a site receipt: each host's facts from its repository (``host_facts``, read-only, also
returned by ``airlock_model_info`` as ``airlock_repo.receipt``), one canonical document for the site,
signed with the site's key by the bundle signer (``airlock.bundle.signing.sign_bytes``)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airlock import __version__, names
from airlock.errors import AirlockError, ManifestError
from airlock.receipt.model import HostState, KeptVersion, ModelState, Receipt, canonical_bytes, host_from_raw

if TYPE_CHECKING:
    from airlock.repo.layout import Layout
    from airlock.repo.session import RepoSession as Repository


def _delta_versions(model: str, filename: str) -> tuple[str, str] | None:
    """``<model>-<from>-<to>.aldelta`` -> (from, to); versions may hold '-' (pre-releases), so the
    split is the one where both sides are SemVer."""
    stem = filename.removesuffix(".aldelta")
    if stem == filename or not stem.startswith(f"{model}-"):
        return None
    rest = stem[len(model) + 1:]
    for i, c in enumerate(rest):
        if c == "-" and names.is_version(rest[:i]) and names.is_version(rest[i + 1:]):
            return rest[:i], rest[i + 1:]
    return None


def host_facts(repo: Repository) -> HostState:
    """What this host has, from its catalog (opened read-only, under the readers' shared lock: no
    byte changes, no migration) and its kept deltas' names. No path, no key ref."""
    from airlock.repo.audit import parse_head
    from airlock.repo.verify import highest_signed_sequence

    layout = repo.layout
    if not layout.catalog.exists():
        return HostState()
    models: dict[str, ModelState] = {}
    with repo._reading() as cat:  # verify's read-only view of the catalog
        for model in cat.models():
            rows = cat.versions(model)
            active = next((r.version for r in rows if r.state == "active"), None)
            versions = {r.version: KeptVersion(r.state, r.bundle_id, r.manifest_sha256, r.location)
                        for r in rows}
            kept = layout.model_packages(model)
            deltas = []
            if kept.is_dir():
                for p in sorted(kept.iterdir()):
                    pair = _delta_versions(model, p.name) if p.is_file() else None
                    if pair is not None:
                        deltas.append(pair)
            models[model] = ModelState(active, versions, deltas)
        raw_seq = cat.get_meta("sequence")
        head = parse_head(cat.get_meta("audit_head"))
    # the anti-downgrade floor as Repository.installed_sequence computes it (kept manifests win)
    known = [s for s in (int(raw_seq) if raw_seq is not None else None, highest_signed_sequence(layout))
             if s is not None]
    return HostState(max(known) if known else None, (head.seq, head.hash) if head else None, models,
                     kept_payloads(layout))


def kept_payloads(layout: Layout) -> dict[str, str]:
    """The other payloads (wheels, Debian packages, images) of the signed bundles this host installed,
    from their kept manifests: bundle path -> sha256, the newest bundle's where two name one path."""
    from airlock.bundle import manifest as mf
    from airlock.receipt.model import PAYLOAD_DIRS

    found: list[tuple[int, str, dict[str, str]]] = []
    if layout.bundle_records.is_dir():
        for rec in sorted(layout.bundle_records.iterdir()):
            try:
                m = mf.parse_manifest((rec / mf.MANIFEST_NAME).read_bytes())
            except (OSError, AirlockError):
                continue  # verify reports a kept manifest that cannot be read
            files = {p: e.sha256 for p, e in m.files.items() if p.split("/", 1)[0] in PAYLOAD_DIRS}
            found.append((m.sequence, rec.name, files))
    out: dict[str, str] = {}
    for _seq, _name, files in sorted(found):
        out.update(files)
    return out


def _created() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def hosts_from_json(data: bytes, name: str) -> dict[str, HostState]:
    """``{host: facts}`` where facts is a host part of a receipt, or ``airlock_model_info``'s
    ``airlock_repo`` (``{"receipt": facts, ...}``; ``{"exists": false}`` for a host without a
    repository) as ``playbooks/receipt.yml`` collects them."""
    from airlock.receipt.model import parse_hosts_json

    raw = parse_hosts_json(data, name)
    out = {}
    for host, value in raw.items():
        if isinstance(value, Mapping) and "airlock_repo" in value:
            value = value["airlock_repo"]
        if isinstance(value, Mapping) and value.get("exists") is False:
            out[host] = HostState()  # no repository on this host yet: it has nothing
            continue
        if isinstance(value, Mapping) and "receipt" in value:
            value = value["receipt"]
        out[host] = host_from_raw(host, value)
    return out


@dataclass
class Created:
    receipt: Receipt
    data: bytes
    signature: bytes


def create_receipt(hosts: dict[str, HostState], *, site: str, compatible: str, signer: str,
                   sequence: int | None = None, gnupghome: Path | None = None,
                   passphrase_file: Path | None = None) -> Created:
    """Canonical receipt bytes and the site key's detached signature over them. ``sequence``
    defaults to the current Unix time (monotonic per site as long as the clock does not go back)."""
    from airlock.bundle.signing import sign_bytes

    if not hosts:
        raise ManifestError("receipt: no hosts", rule="receipt-schema")
    r = Receipt(site=site, sequence=int(time.time()) if sequence is None else sequence, created=_created(),
                airlock_version=__version__, compatible=compatible, hosts=hosts)
    data = canonical_bytes(r)
    return Created(r, data, sign_bytes(data, signer, gnupghome=gnupghome, passphrase_file=passphrase_file))


def write_receipt(created: Created, out: Path) -> tuple[Path, Path]:
    """``out`` and ``out.asc``, each written atomically; an existing receipt is not overwritten."""
    from airlock.fsutil import atomic_write_bytes

    sig = out.with_name(out.name + ".asc")
    for p in (out, sig):
        if p.exists():
            raise ManifestError(f"{p}: already exists; write the receipt to a new file", path=str(p),
                                rule="output")
    atomic_write_bytes(sig, created.signature, 0o644)
    atomic_write_bytes(out, created.data, 0o644)
    return out, sig


def as_json(created: Created) -> dict[str, Any]:
    return json.loads(created.data)
