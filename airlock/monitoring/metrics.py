"""``airlock metrics``: what Airlock knows, written for node_exporter's textfile collector.

Everything is read: the catalog (read-only), the audit log (streamed), the kept manifests through
the read-only compliance check (``Repository.compliance``). Nothing is written under the root; the
only output is ``<textfile-dir>/airlock.prom`` (``prometheus_client.write_to_textfile``: a temporary
file renamed over the old one, so node_exporter never reads half a file) and, next to it, the last
verify summary ``airlock-verify.json`` (node_exporter only reads ``*.prom``) so that a metrics refresh
without ``--verify`` (after a mutating operation) keeps the last verify result.

Metric names are listed in docs/monitoring.md; the alert rules in roles/monitoring use them."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Gauge, Info, write_to_textfile

from airlock.errors import RepositoryError as MetricsError  # exit 30: a path Airlock cannot use
from airlock.repo import audit
from airlock.repo.layout import Layout
from airlock.repo.recover import PRESENT
from airlock.repo.verify import highest_signed_sequence

if TYPE_CHECKING:
    from airlock.bundle import Trust
    from airlock.repo import Repository

PROM_NAME = "airlock.prom"
VERIFY_STATE = "airlock-verify.json"
# audit actions whose last result and time are exported (airlock_operation_last_*)
OPERATIONS = ("install", "update", "activate", "rollback", "prune", "recover", "reload", "key-rotate",
              "key-reencrypt")


@dataclass
class VerifySummary:
    """What the scheduled check exports from one read-only verify."""

    time: float
    duration: float
    ok: bool
    drift_by_rule: dict[str, int] = field(default_factory=dict)
    audit_ok: bool = True
    signatures_checked: bool = False

    @classmethod
    def from_report(cls, report: dict[str, Any], started: float, duration: float) -> VerifySummary:
        rules = Counter(str(d.get("rule")) for d in report.get("drift", []))
        return cls(time=started, duration=duration, ok=bool(report.get("ok")), drift_by_rule=dict(rules),
                   audit_ok=bool(report.get("audit_ok", True)),
                   signatures_checked=bool(report.get("signatures_checked")))


def _parse_time(text: Any) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def run_verify(repo: Repository, trust: Trust | None = None) -> tuple[dict[str, Any], VerifySummary]:
    """The read-only compliance check, timed."""
    started, t0 = time.time(), time.monotonic()
    report = repo.compliance(trust=trust)
    return report, VerifySummary.from_report(report, started, time.monotonic() - t0)


def load_verify_state(textfile_dir: Path) -> VerifySummary | None:
    try:
        raw = json.loads((textfile_dir / VERIFY_STATE).read_text())
        return VerifySummary(**raw)
    except (OSError, ValueError, TypeError):
        return None


def _tree_bytes(path: Path) -> int:
    """Bytes used under ``path``, hard links counted once (unchanged files are linked across versions)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


def _cert_not_after(path: Path) -> float:
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise MetricsError(f"{path}: not a readable PEM certificate ({exc})", path=str(path),
                           rule="tls-cert") from exc
    return cert.not_valid_after_utc.timestamp()


def _staging_metrics(reg: CollectorRegistry, staging: dict[str, Any]) -> None:
    """The last bundle's stage (kept in its install/update audit record): bytes, time, throughput."""
    size, seconds = staging.get("bytes"), staging.get("seconds")
    if not isinstance(size, (int, float)) or not isinstance(seconds, (int, float)):
        return
    bid = staging["bundle_id"]
    Gauge("airlock_bundle_stage_bytes", "Bytes of the last staged bundle (copied or reused).", ["bundle_id"],
          registry=reg).labels(bundle_id=bid).set(size)
    Gauge("airlock_bundle_stage_duration_seconds", "How long staging the last bundle took.", ["bundle_id"],
          registry=reg).labels(bundle_id=bid).set(seconds)
    if seconds > 0:
        Gauge("airlock_bundle_stage_throughput_bytes_per_second", "Staging throughput of the last bundle.",
              ["bundle_id"], registry=reg).labels(bundle_id=bid).set(size / seconds)


def _key_created_metrics(reg: CollectorRegistry, repo: Repository, refs: set[str],
                         first_use: dict[str, float | None]) -> None:
    """When each key-encryption key in use was created: the provider's word (key file: its mtime),
    else the first audit record that used it; the key's age before its first rotation."""
    from airlock.crypto import KeyRef
    from airlock.errors import AirlockError

    created = Gauge("airlock_kek_created_timestamp_seconds", "When each key-encryption key in use was "
                    "created (source: provider, or first-use from the audit log).", ["key", "source"],
                    registry=reg)
    for ref in sorted(refs):
        when: float | None = None
        if repo.keys is not None:
            try:
                kr = KeyRef.parse(ref)
                when = repo.keys.get(kr.provider).created(kr.key_id)
            except AirlockError:
                when = None
        if when is not None:
            created.labels(key=ref, source="provider").set(when)
        elif first_use.get(ref) is not None:
            created.labels(key=ref, source="first-use").set(first_use[ref] or 0)


def build_registry(repo: Repository, verify: VerifySummary | None, *,
                   tiers: dict[str, Path] | None = None, tls_certs: list[Path] | None = None
                   ) -> CollectorRegistry:
    """Every Airlock metric of one appliance, read from the repository (nothing written there)."""
    reg = CollectorRegistry()
    layout: Layout = repo.layout
    g = Gauge  # short alias: each gauge registers itself in ``reg``

    active = Info("airlock_model_active", "The active version of each model (1 per model).",
                  ["model"], registry=reg)
    versions = g("airlock_model_versions", "Versions in the catalog by state and tier.",
                 ["model", "state", "tier"], registry=reg)
    # the verify's view of the catalog: opened read-only, no migration, the readers' shared lock
    key_refs: set[str] = set()  # key-encryption keys the present versions are stored under
    with repo._reading() as cat:
        for name in cat.models():
            rows = cat.versions(name)
            key_refs.update(r.encryption for r in rows if r.encryption and r.state in PRESENT)
            for row in rows:
                if row.state == "active":
                    active.labels(model=name).info({"version": row.version, "bundle_id": row.bundle_id or ""})
            for state, n in Counter(r.state for r in rows).items():
                versions.labels(model=name, state=state, tier="hot").set(n)
        raw = cat.get_meta("sequence")
    # the anti-downgrade floor as Repository.installed_sequence computes it (kept manifests, catalog)
    floors = [int(raw)] if raw is not None else []
    signed = highest_signed_sequence(layout)
    seq = max([*floors, signed] if signed is not None else floors, default=None)

    # audit log: chain, last result and time of each operation, key rotation
    report = repo.audit_report()
    g("airlock_audit_chain_ok", "1 if the hash-chained audit log is intact and holds the catalog's head.",
      registry=reg).set(1 if report.ok else 0)
    g("airlock_audit_records", "Records in the audit log.", registry=reg).set(report.records)
    last: dict[str, dict[str, Any]] = {}
    staging: dict[str, Any] = {}
    first_use: dict[str, float | None] = {}
    for rec in audit.records(layout.audit_log):
        action = str(rec.get("action"))
        if action in OPERATIONS:
            last[action] = rec
        details = rec.get("details")
        if isinstance(details, dict) and isinstance(details.get("staging"), dict):
            staging = {**details["staging"], "bundle_id": str(details.get("bundle_id") or "")}
        if isinstance(details, dict) and rec.get("result") == "ok":
            for ref in {details.get("encryption"), details.get("new")} & key_refs:
                first_use.setdefault(str(ref), _parse_time(rec.get("time")))
    ok_g = g("airlock_operation_last_success", "1 if the last operation of this kind succeeded.",
             ["action"], registry=reg)
    ts_g = g("airlock_operation_last_timestamp_seconds", "When the last operation of this kind ran.",
             ["action"], registry=reg)
    dur_g = g("airlock_operation_last_duration_seconds", "How long the last operation of this kind took "
              "(audit record duration_s).", ["action"], registry=reg)
    for action, rec in sorted(last.items()):
        ok_g.labels(action=action).set(1 if rec.get("result") == "ok" else 0)
        when = _parse_time(rec.get("time"))
        if when is not None:
            ts_g.labels(action=action).set(when)
        if isinstance(rec.get("duration_s"), (int, float)):
            dur_g.labels(action=action).set(rec["duration_s"])
    if staging:
        _staging_metrics(reg, staging)
    rotated = last.get("key-rotate")
    if rotated is not None and rotated.get("result") == "ok" and _parse_time(rotated.get("time")):
        g("airlock_kek_last_rotation_timestamp_seconds",
          "When the key-encryption key was last rotated (audit log key-rotate record).",
          registry=reg).set(_parse_time(rotated.get("time")) or 0)
    _key_created_metrics(reg, repo, key_refs, first_use)
    if seq is not None:
        g("airlock_bundle_sequence", "Sequence of the newest installed signed bundle.", registry=reg).set(seq)

    # verify (this run's or the last one kept in the textfile directory)
    if verify is not None:
        g("airlock_verify_last_run_timestamp_seconds", "When the last read-only verify ran.",
          registry=reg).set(verify.time)
        g("airlock_verify_duration_seconds", "How long the last verify took.",
          registry=reg).set(verify.duration)
        g("airlock_verify_ok", "1 if the last verify found no drift.",
          registry=reg).set(1 if verify.ok else 0)
        g("airlock_verify_signatures_checked", "1 if the last verify re-checked the kept manifests' "
          "signatures against pinned signers.", registry=reg).set(1 if verify.signatures_checked else 0)
        drift = g("airlock_verify_drift_items", "Drift items found by the last verify, by rule.", ["rule"],
                  registry=reg)
        for rule, n in sorted(verify.drift_by_rule.items()):
            drift.labels(rule=rule).set(n)

    # disk: repository usage and each tier's file system
    g("airlock_repository_bytes", "Bytes used by the hot-tier model repository (hard links once).",
      registry=reg).set(_tree_bytes(layout.repo) if layout.repo.is_dir() else 0)
    size = g("airlock_tier_filesystem_size_bytes", "Size of the file system holding each tier.", ["tier"],
             registry=reg)
    avail = g("airlock_tier_filesystem_avail_bytes", "Bytes available (non-root) on each tier's file system.",
              ["tier"], registry=reg)
    for tier, path in {"hot": layout.repo if layout.repo.is_dir() else layout.root, **(tiers or {})}.items():
        try:
            st = os.statvfs(path)
        except OSError as exc:
            raise MetricsError(f"{path}: tier {tier} cannot be read ({exc.strerror})", path=str(path),
                               rule="tier-path") from exc
        size.labels(tier=tier).set(st.f_blocks * st.f_frsize)
        avail.labels(tier=tier).set(st.f_bavail * st.f_frsize)

    if tls_certs:
        tls = g("airlock_tls_cert_not_after_timestamp_seconds", "Expiry of each TLS certificate Airlock "
                "manages.", ["path"], registry=reg)
        for cert in tls_certs:
            tls.labels(path=str(cert)).set(_cert_not_after(cert))
    g("airlock_metrics_last_write_timestamp_seconds", "When this file was written.", registry=reg
      ).set(time.time())
    return reg


def write_metrics(repo: Repository, textfile_dir: Path, verify: VerifySummary | None = None, *,
                  tiers: dict[str, Path] | None = None, tls_certs: list[Path] | None = None) -> Path:
    """Write ``<textfile_dir>/airlock.prom`` atomically; with ``verify`` keep its summary for later
    refreshes, else reuse the kept one. The directory must be outside the appliance root."""
    textfile_dir = textfile_dir.absolute()
    root = repo.layout.root.absolute()
    if textfile_dir == root or root in textfile_dir.parents:
        raise MetricsError(f"{textfile_dir}: the textfile directory must be outside the appliance root "
                           f"{root} (verify is read-only there)", path=str(textfile_dir), rule="textfile-dir")
    if not textfile_dir.is_dir():
        raise MetricsError(f"{textfile_dir}: no such directory (node_exporter's "
                           "--collector.textfile.directory)",
                           path=str(textfile_dir), rule="textfile-dir")
    if not repo.layout.catalog.exists():
        raise MetricsError(f"{repo.layout.repo}: no model repository here (nothing installed yet)",
                           path=str(repo.layout.repo), rule="repository-missing")
    if verify is None:
        verify = load_verify_state(textfile_dir)
    reg = build_registry(repo, verify, tiers=tiers, tls_certs=tls_certs)
    target = textfile_dir / PROM_NAME
    write_to_textfile(str(target), reg)
    if verify is not None:
        tmp = textfile_dir / f".{VERIFY_STATE}.{os.getpid()}"
        tmp.write_text(json.dumps(asdict(verify)))
        os.replace(tmp, textfile_dir / VERIFY_STATE)
    return target
