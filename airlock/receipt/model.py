"""The receipt document: dataclasses, canonical JSON (the manifest's form: sorted keys, fixed
separators, UTF-8, final newline) and a strict, size-bounded parser with the manifest's rules
(bounded JSON, no duplicate keys, no unknown fields, names matched in full against their patterns).

A receipt holds no host paths, no secrets: site id, hosts by inventory name, per model the active
version and every kept version (state, storage tier, signed manifest digest), the kept deltas (from,
to), each host's installed bundle sequence and audit head, and the other payloads (wheels, Debian
packages, container images) of the signed bundles it installed, by bundle path and sha256
(docs/receipts.md)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from airlock import names
from airlock.bundle import manifest as mf
from airlock.errors import ManifestError, UnsafePathError
from airlock.repo.catalog import LOCATIONS, STATES  # the catalog's version states and storage tiers

FORMAT_VERSION = 1
KIND = "airlock-receipt"
MAX_RECEIPT_BYTES = 4 * 1024 * 1024  # a site of 1000 hosts x 10 models x 10 versions fits easily
MAX_DEPTH = 8
MAX_HOSTS = 10_000
MAX_MODELS = 1_000
MAX_VERSIONS = 1_000
_HEX64 = re.compile(r"[0-9a-f]{64}")
PAYLOAD_DIRS = ("wheelhouse", "debs", "images")  # a bundle's other payloads (docs/bundle-format.md)
MAX_PAYLOADS = 10_000


@dataclass(frozen=True)
class KeptVersion:
    """A version the host's catalog knows: its state and the signed manifest it came from."""

    state: str
    bundle_id: str | None = None
    manifest_sha256: str | None = None
    location: str = "hot"  # the storage tier holding its files (catalog schema 4; docs/tiers.md)


@dataclass
class ModelState:
    active: str | None
    versions: dict[str, KeptVersion] = field(default_factory=dict)
    deltas: list[tuple[str, str]] = field(default_factory=list)  # kept deltas (from, to)

    def present(self) -> list[str]:
        """Versions whose files are on the host (not pruned)."""
        return [v for v, k in self.versions.items() if k.state != "pruned"]


@dataclass
class HostState:
    bundle_sequence: int | None = None
    audit_head: tuple[int, str] | None = None
    models: dict[str, ModelState] = field(default_factory=dict)
    payloads: dict[str, str] = field(default_factory=dict)  # wheelhouse/x.whl -> sha256 (kept manifests)


@dataclass
class Receipt:
    site: str
    sequence: int
    created: str
    airlock_version: str
    compatible: str
    hosts: dict[str, HostState]
    format_version: int = FORMAT_VERSION


# ------------------------------------------------------------------------------------- writing


def host_to_dict(h: HostState) -> dict[str, Any]:
    models = {}
    for m, ms in h.models.items():
        models[m] = {
            "active": ms.active,
            "versions": {v: {"state": k.state, "bundle_id": k.bundle_id, "manifest_sha256": k.manifest_sha256,
                             "location": k.location} for v, k in ms.versions.items()},
            "deltas": [[a, b] for a, b in sorted(ms.deltas)],
        }
    return {"bundle_sequence": h.bundle_sequence,
            "audit_head": {"seq": h.audit_head[0], "hash": h.audit_head[1]} if h.audit_head else None,
            "models": models, "payloads": dict(sorted(h.payloads.items()))}


def to_dict(r: Receipt) -> dict[str, Any]:
    return {"kind": KIND, "format_version": r.format_version, "site": r.site, "sequence": r.sequence,
            "created": r.created, "airlock_version": r.airlock_version, "compatible": r.compatible,
            "hosts": {name: host_to_dict(h) for name, h in r.hosts.items()}}


def canonical_bytes(r: Receipt) -> bytes:
    """The one serialisation, written once and signed as bytes."""
    validate(r)
    text = json.dumps(to_dict(r), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)
    data = (text + "\n").encode("utf-8")
    if len(data) > MAX_RECEIPT_BYTES:
        raise _fail(f"{len(data)} bytes exceeds the {MAX_RECEIPT_BYTES} byte limit", "receipt-size")
    return data


# ------------------------------------------------------------------------------------- parsing


def _fail(msg: str, rule: str = "receipt-schema", name: str = "receipt") -> ManifestError:
    return ManifestError(f"{name}: {msg}", path=name, rule=rule)


def parse_receipt(data: bytes, name: str = "receipt") -> Receipt:
    """Signed receipt bytes -> Receipt: size, bounded JSON, strict schema (exit 11 on anything else)."""
    if len(data) > MAX_RECEIPT_BYTES:
        raise _fail(f"{len(data)} bytes exceeds the {MAX_RECEIPT_BYTES} byte limit", "receipt-size", name)
    try:
        raw = mf.load_json(data, MAX_DEPTH)
    except ManifestError as exc:
        raise _fail(str(exc).removeprefix(f"{mf.MANIFEST_NAME}: "),
                    "receipt-parse" if exc.rule == "manifest-parse" else "receipt-schema", name) from exc
    except UnsafePathError as exc:  # a duplicate key (the manifest parser's hook)
        raise _fail(str(exc).removeprefix(f"{mf.MANIFEST_NAME}: "), "receipt-parse", name) from exc
    try:
        r = _from_dict(raw)
        validate(r)
    except ManifestError as exc:
        raise _fail(str(exc).removeprefix("receipt: "), exc.rule, name) from exc
    return r


def _take(obj: Any, where: str, fields: dict[str, type | tuple[type, ...]],
          optional: dict[str, type | tuple[type, ...]] | None = None) -> dict[str, Any]:
    """``obj`` has exactly ``fields`` (each of its type), and may have ``optional`` ones (added to the
    format later: an older receipt without them still parses)."""
    if not isinstance(obj, dict):
        raise _fail(f"{where} is not an object")
    unknown = set(obj) - set(fields) - set(optional or {})
    if unknown:
        raise _fail(f"{where}: unknown field(s) {sorted(unknown)}")
    for key, typ in {**fields, **{k: t for k, t in (optional or {}).items() if k in obj}}.items():
        if key not in obj:
            raise _fail(f"{where}: missing field {key!r}")
        types = typ if isinstance(typ, tuple) else (typ,)
        value = obj[key]
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            raise _fail(f"{where}: field {key!r} has the wrong type")
    return obj


_NONE = type(None)


def host_from_raw(hname: str, h: Any) -> HostState:
    """One host's part of a receipt (also what ``airlock_model_info`` returns as ``receipt``)."""
    where = f"hosts[{hname[:80]!r}]"
    _take(h, where, {"bundle_sequence": (int, _NONE), "audit_head": (dict, _NONE), "models": dict},
          {"payloads": dict})
    head = None
    if h["audit_head"] is not None:
        _take(h["audit_head"], f"{where}.audit_head", {"seq": int, "hash": str})
        head = (h["audit_head"]["seq"], h["audit_head"]["hash"])
    if len(h["models"]) > MAX_MODELS:
        raise _fail(f"{where}: {len(h['models'])} models (at most {MAX_MODELS})")
    models: dict[str, ModelState] = {}
    for mname, m in h["models"].items():
        mw = f"{where}.models[{mname[:80]!r}]"
        _take(m, mw, {"active": (str, _NONE), "versions": dict, "deltas": list})
        if len(m["versions"]) > MAX_VERSIONS or len(m["deltas"]) > MAX_VERSIONS:
            raise _fail(f"{mw}: more than {MAX_VERSIONS} versions or deltas")
        versions = {}
        for v, k in m["versions"].items():
            _take(k, f"{mw}.versions[{v[:40]!r}]", {"state": str, "bundle_id": (str, _NONE),
                                                     "manifest_sha256": (str, _NONE)}, {"location": str})
            versions[v] = KeptVersion(k["state"], k["bundle_id"], k["manifest_sha256"],
                                      k.get("location", "hot"))
        deltas = []
        for d in m["deltas"]:
            if not isinstance(d, list) or len(d) != 2 or not all(isinstance(x, str) for x in d):
                raise _fail(f"{mw}.deltas: each entry is [from, to]")
            deltas.append((d[0], d[1]))
        models[mname] = ModelState(m["active"], versions, deltas)
    payloads = h.get("payloads", {})
    if len(payloads) > MAX_PAYLOADS or not all(isinstance(v, str) for v in payloads.values()):
        raise _fail(f"{where}.payloads: at most {MAX_PAYLOADS} entries, each path: sha256")
    return HostState(h["bundle_sequence"], head, models, dict(payloads))


def _from_dict(raw: Any) -> Receipt:
    _take(raw, "receipt", {"kind": str, "format_version": int, "site": str, "sequence": int, "created": str,
                           "airlock_version": str, "compatible": str, "hosts": dict})
    if raw["kind"] != KIND:
        raise _fail(f"kind {raw['kind'][:40]!r} is not {KIND!r}")
    if raw["format_version"] != FORMAT_VERSION:
        raise _fail(f"unsupported format_version {raw['format_version']}", "receipt-version")
    if len(raw["hosts"]) > MAX_HOSTS:
        raise _fail(f"{len(raw['hosts'])} hosts (at most {MAX_HOSTS})")
    hosts = {hname: host_from_raw(hname, h) for hname, h in raw["hosts"].items()}
    return Receipt(site=raw["site"], sequence=raw["sequence"], created=raw["created"],
                   airlock_version=raw["airlock_version"], compatible=raw["compatible"], hosts=hosts,
                   format_version=raw["format_version"])


def _word(value: str, what: str, ok: bool) -> None:
    if not ok:
        raise _fail(f"{what} {value[:80]!r} is not allowed (see docs/receipts.md)", "receipt-name")


def _short(value: str, what: str) -> None:
    if len(value) > mf.MAX_SHORT or names.bad_char(value) is not None:
        raise _fail(f"{what} {value[:80]!r}: at most {mf.MAX_SHORT} printable characters")


def _seq(value: int, what: str) -> None:
    if not 0 <= value <= mf.INT_MAX:
        raise _fail(f"{what} {value} outside 0..2**63-1")


def validate(r: Receipt) -> None:
    """Semantic checks shared by the writer and the parser (names are what the repository allows)."""
    _word(r.site, "site", names.is_bundle_id(r.site))
    _word(r.compatible, "compatible", names.is_profile(r.compatible))
    _seq(r.sequence, "sequence")
    _short(r.airlock_version, "airlock_version")
    _short(r.created, "created")
    try:
        datetime.fromisoformat(r.created.replace("Z", "+00:00"))
    except ValueError as exc:
        raise _fail(f"created {r.created[:80]!r} is not an ISO 8601 time") from exc
    if len(r.hosts) > MAX_HOSTS:
        raise _fail(f"{len(r.hosts)} hosts (at most {MAX_HOSTS})")
    for hname, h in r.hosts.items():
        _word(hname, "host", names.is_bundle_id(hname))
        if h.bundle_sequence is not None:
            _seq(h.bundle_sequence, f"host {hname}: bundle_sequence")
        if h.audit_head is not None:
            _seq(h.audit_head[0], f"host {hname}: audit_head.seq")
            if not _HEX64.fullmatch(h.audit_head[1]):
                raise _fail(f"host {hname}: audit_head.hash is not a lowercase sha256 hex digest")
        for mname, m in h.models.items():
            _word(mname, "model", names.is_model_name(mname))
            if m.active is not None:
                _word(m.active, "version", names.is_version(m.active))
                if m.versions.get(m.active, KeptVersion("pruned")).state != "active":
                    raise _fail(f"host {hname}: model {mname}: active {m.active} is not a version in "
                                "state active")
            for v, k in m.versions.items():
                _word(v, "version", names.is_version(v))
                if k.location not in LOCATIONS:
                    raise _fail(f"host {hname}: model {mname} {v}: location {k.location[:40]!r} is not one "
                                f"of {LOCATIONS}")
                if k.state not in STATES:
                    raise _fail(f"host {hname}: model {mname} {v}: state {k.state[:40]!r} is not one of "
                                f"{STATES}")
                if k.bundle_id is not None:
                    _word(k.bundle_id, "bundle_id", names.is_bundle_id(k.bundle_id))
                if k.manifest_sha256 is not None and not _HEX64.fullmatch(k.manifest_sha256):
                    raise _fail(f"host {hname}: model {mname} {v}: manifest_sha256 is not a lowercase "
                                "sha256 hex digest")
            for a, b in m.deltas:
                _word(a, "delta version", names.is_version(a))
                _word(b, "delta version", names.is_version(b))
        for path, sha in h.payloads.items():
            check_payload(path, sha, f"host {hname}")


def check_payload(path: str, sha: str, where: str) -> None:
    """A payload of a bundle outside its models: a safe path under wheelhouse/, debs/ or images/."""
    try:
        mf.check_payload_name(path)
    except (ManifestError, UnsafePathError) as exc:
        raise _fail(f"{where}: payload {path[:80]!r} is not a safe bundle path") from exc
    if path.split("/", 1)[0] not in PAYLOAD_DIRS or "/" not in path:
        raise _fail(f"{where}: payload {path[:80]!r} is not under {', '.join(PAYLOAD_DIRS)}")
    if not _HEX64.fullmatch(sha):
        raise _fail(f"{where}: payload {path[:80]!r}: sha256 is not a lowercase hex digest")


def parse_hosts_json(data: bytes, name: str) -> dict[str, Any]:
    """The collected host facts (``receipt create --from-json``): bounded like a receipt."""
    if len(data) > MAX_RECEIPT_BYTES * 4:
        raise _fail(f"{len(data)} bytes is too large for host facts", "receipt-size", name)
    try:
        raw = mf.load_json(data, mf.MAX_DEPTH)
    except (ManifestError, UnsafePathError) as exc:
        raise _fail(str(exc).removeprefix(f"{mf.MANIFEST_NAME}: "), "receipt-parse", name) from exc
    if not isinstance(raw, dict) or not raw:
        raise _fail("expected an object {host: facts} with at least one host", "receipt-schema", name)
    return raw
