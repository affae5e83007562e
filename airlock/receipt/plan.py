"""The minimal next bundle per site, from verified receipts (docs/receipts.md, "Planning").

The release side keeps a *release repository* (an Airlock repository into which every released
bundle was installed: its catalog, the full versions, the kept deltas under
``update_packages/<model>/`` and the kept signed manifests). For each site and model the planner:

1. finds, for every host, the cheapest chain of forward deltas (``find_chain_steps``) from any
   version the host really has (present, not pruned, whose signed manifest digest agrees with the
   release side's record) to the target;
2. builds candidate entry lists (the union of the hosts' chains, each host's chain alone, the full
   target model) and *simulates* how ``Repository.install_from_bundle`` installs them on every host
   (each entry in order: a delta needs its source or its target present; a full model always
   installs, hard-linking unchanged files), refusing a candidate that leaves any host off the target
   or moves a host that already serves the target;
3. keeps the smallest candidate that works for every host.

Other payloads (``--payloads DIR``: the release's ``wheelhouse/``, ``debs/``, ``images/``): a file
goes to a site when any of its hosts lacks that bundle path with that sha256 (the receipt lists what
each host's kept signed manifests carried).

The plan reports, per site, the bytes of the planned bundle against "ship the full models" and
"ship every delta" (every forward delta the release side holds up to the target), and the payload
bytes planned against shipping every payload."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from airlock import names
from airlock.errors import AirlockError, ManifestError, RepositoryError
from airlock.receipt.model import HostState
from airlock.receipt.verify import VerifiedReceipt

PLAN_KIND = "airlock-bundle-plan"
PLAN_VERSION = 1
LAYOUTS = ("auto", "per-site", "shared")


class PlanError(RepositoryError):
    """The release side cannot serve a site (target version missing, a host ahead of the target)."""

    rule = "plan"


@dataclass(frozen=True)
class Entry:
    kind: str  # full | delta | payload
    model: str  # "" for a payload
    version: str  # "" for a payload
    from_version: str | None
    source: str  # release-side path: a version directory, a kept .aldelta or a payload file
    bytes: int
    dest: str | None = None  # a payload's path in the bundle (wheelhouse/x.whl)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.model, "version": self.version,
                "from_version": self.from_version, "source": self.source, "bytes": self.bytes,
                "dest": self.dest}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Entry:
        return cls(d["kind"], d["model"], d["version"], d.get("from_version"), d["source"], int(d["bytes"]),
                   d.get("dest"))


def release_payloads(root: Path) -> dict[str, tuple[str, int, Path]]:
    """The release's other payloads: every file under ``root``'s wheelhouse/, debs/ and images/ as
    bundle path -> (sha256, size, file), hashed streaming."""
    from airlock.hashing import sha256_file
    from airlock.receipt.model import PAYLOAD_DIRS, check_payload

    root = Path(root)
    if not root.is_dir():
        raise PlanError(f"{root}: no payload directory here", path=str(root), rule="plan-payloads")
    out: dict[str, tuple[str, int, Path]] = {}
    for top in PAYLOAD_DIRS:
        base = root / top
        if not base.is_dir():
            continue
        for f in sorted(x for x in base.rglob("*") if x.is_file() and not x.is_symlink()):
            rel = f.relative_to(root).as_posix()
            sha = sha256_file(f)
            check_payload(rel, sha, str(root))
            out[rel] = (sha, f.stat().st_size, f)
    return out


def _plan_payloads(hosts: dict[str, HostState], release: dict[str, tuple[str, int, Path]]) -> dict[str, Any]:
    """The payloads some host of the site lacks (that path with that sha256)."""
    entries = [Entry("payload", "", "", None, str(f), size, dest=path)
               for path, (sha, size, f) in sorted(release.items())
               if any(h.payloads.get(path) != sha for h in hosts.values())]
    return {"entries": [e.as_dict() for e in entries], "bytes": sum(e.bytes for e in entries),
            "bytes_all": sum(size for _sha, size, _f in release.values())}


@dataclass
class Release:
    """What the release repository can ship for one model."""

    model: str
    target: str
    full: Entry
    kept: Path
    every_delta_bytes: int
    manifests: dict[str, str]  # bundle_id -> sha256 of the kept signed manifest

    def chain(self, frm: str) -> list[Entry] | None:
        from airlock.delta.chain import find_chain_steps

        try:
            steps = find_chain_steps(self.kept, frm, self.target, forward_only=True)
        except AirlockError:
            return None
        return [Entry("delta", self.model, s.to_version, s.from_version, str(s.path), s.path.stat().st_size)
                for s in steps]


def _release(root: Path, model: str, target: str) -> Release:
    import hashlib

    from airlock.delta.header import read_delta_header
    from airlock.errors import DeltaFormatError
    from airlock.repo import Repository
    from airlock.repo.layout import version_key

    repo = Repository(root, lock_timeout=30)
    try:
        layout = repo.layout
        if not layout.catalog.exists():
            raise PlanError(f"{root}: no release repository here", path=str(root), rule="plan-release")
        row = repo.catalog().version(model, target)
        vdir = layout.version_dir(model, target)
        if row is None or row.state == "pruned" or not vdir.is_dir():
            raise PlanError(f"{root}: the release repository has no {model} {target} to ship", path=str(root),
                            rule="plan-target")
        if row.encryption is not None:
            raise PlanError(f"{model} {target} is stored encrypted in the release repository; plan from a "
                            "plaintext one", path=str(root), rule="plan-target")
        full = Entry("full", model, target, None, str(vdir), sum(f.size for f in row.files.values()))
        kept = layout.model_packages(model)
        every = 0
        if kept.is_dir():
            for p in sorted(kept.iterdir()):
                try:
                    h = read_delta_header(p) if p.is_file() else None
                except DeltaFormatError:
                    h = None
                if h is not None and version_key(h.to_version) <= version_key(target):
                    every += p.stat().st_size
        manifests: dict[str, str] = {}
        if layout.bundle_records.is_dir():
            for rec in layout.bundle_records.iterdir():
                mpath = rec / "MANIFEST.json"
                if mpath.is_file():
                    manifests[rec.name] = hashlib.sha256(mpath.read_bytes()).hexdigest()
        return Release(model, target, full, kept, every, manifests)
    finally:
        repo.close()


@dataclass
class HostOutcome:
    ok: bool
    route: list[str] = field(default_factory=list)
    note: str = ""


def simulate(host: HostState, model: str, entries: list[Entry], target: str) -> HostOutcome:
    """What ``install_from_bundle`` does with ``entries`` on this host (docstring of the module)."""
    ms = host.models.get(model)
    present = set(ms.present()) if ms else set()
    active = ms.active if ms else None
    start = active
    route: list[str] = []
    for e in entries:
        if e.kind == "full" or e.version in present or (e.from_version in present):
            label = (f"full {e.version}" if e.kind == "full" else f"{e.from_version}->{e.version}")
            if e.version in present and e.version == active:
                continue
            route.append(label if e.version not in present else f"activate {e.version}")
            present.add(e.version)
            active = e.version
            if start == target and active != target:
                return HostOutcome(False, route, f"would move off {target}, which it already serves")
        else:
            return HostOutcome(False, route, f"has neither {e.from_version} nor {e.version} for the delta "
                               f"{e.from_version}->{e.version}")
    if active != target:
        return HostOutcome(False, route, f"ends on {active}, not {target}")
    return HostOutcome(True, route)


def _usable(host: HostState, model: str, rel: Release) -> tuple[list[str], list[str]]:
    """Present versions a delta may start from, and why others are not."""
    ms = host.models.get(model)
    if ms is None:
        return [], []
    good, why = [], []
    for v in ms.present():
        k = ms.versions[v]
        known = rel.manifests.get(k.bundle_id) if k.bundle_id else None
        if known is not None and k.manifest_sha256 is not None and known != k.manifest_sha256:
            why.append(f"{v}: its signed manifest {k.bundle_id} differs from the release side's")
            continue
        good.append(v)
    return good, why


def _order(entries: list[Entry]) -> list[Entry]:
    from airlock.repo.layout import version_key

    uniq = {(e.from_version, e.version): e for e in entries}
    return sorted(uniq.values(),
                  key=lambda e: (version_key(e.from_version or e.version), version_key(e.version)))


def _plan_model(hosts: dict[str, HostState], rel: Release) -> dict[str, Any]:
    from airlock.repo.layout import version_key

    target = rel.target
    chains: dict[str, list[Entry] | None] = {}
    notes: dict[str, list[str]] = {}
    for name, h in hosts.items():
        ms = h.models.get(rel.model)
        if ms is not None and ms.active is not None and version_key(ms.active) > version_key(target):
            raise PlanError(f"host {name} runs {rel.model} {ms.active}, newer than the target {target}: "
                            "plan a signed rollback instead", rule="plan-ahead")
        if ms is not None and ms.active == target:
            continue
        good, why = _usable(h, rel.model, rel)
        notes[name] = why
        best: list[Entry] | None = None
        for v in good:
            c = rel.chain(v)
            if c is not None and (best is None or (sum(e.bytes for e in c), len(c))
                                  < (sum(e.bytes for e in best), len(best))):
                best = c
        chains[name] = best
    if not chains:
        return {"entries": [], "hosts": {n: {"route": [], "how": "current"} for n in hosts}, "bytes": 0,
                "needed": False}
    candidates: list[list[Entry]] = []
    if all(c is not None for c in chains.values()):
        candidates.append(_order([e for c in chains.values() if c for e in c]))
    candidates += [c for c in chains.values() if c]
    candidates.append([rel.full])
    best_entries: list[Entry] | None = None
    best_out: dict[str, HostOutcome] = {}
    for cand in candidates:
        outs = {n: simulate(h, rel.model, cand, target) for n, h in hosts.items()}
        if all(o.ok for o in outs.values()):
            size = sum(e.bytes for e in cand)
            if best_entries is None or size < sum(e.bytes for e in best_entries):
                best_entries, best_out = cand, outs
    assert best_entries is not None  # the full target installs everywhere
    host_report = {}
    for n, o in best_out.items():
        full = any(r.startswith("full") for r in o.route)
        how = "current" if not o.route else "full" if full else "delta"
        host_report[n] = {"route": o.route, "how": how, "notes": notes.get(n, [])}
    return {"entries": [e.as_dict() for e in best_entries], "hosts": host_report,
            "bytes": sum(e.bytes for e in best_entries), "needed": True}


def make_plan(receipts: list[VerifiedReceipt], release_root: Path, target: dict[str, str], *,
              layout: str = "auto", payloads: Path | None = None) -> dict[str, Any]:
    """The plan document (JSON-able); see the module docstring."""
    if layout not in LAYOUTS:
        raise ManifestError(f"layout {layout!r} is not one of {LAYOUTS}", rule="plan")
    if not receipts:
        raise ManifestError("no receipts to plan from", rule="plan")
    for m, v in target.items():
        if not names.is_model_name(m) or not names.is_version(v):
            raise ManifestError(f"--target {m}={v}: not MODEL=VERSION (SemVer)", rule="plan")
    sites: dict[str, Any] = {}
    seen: set[str] = set()
    releases = {m: _release(Path(release_root), m, v) for m, v in sorted(target.items())}
    rel_payloads = release_payloads(payloads) if payloads is not None else {}
    for vr in receipts:
        r = vr.receipt
        if r.site in seen:
            raise ManifestError(f"two receipts of site {r.site}", rule="plan")
        seen.add(r.site)
        models = {m: _plan_model(r.hosts, rel) for m, rel in releases.items()}
        needed = [m for m, p in models.items() if p["needed"]]
        pay = _plan_payloads(r.hosts, rel_payloads)
        seq = max((h.bundle_sequence or 0) for h in r.hosts.values()) + 1
        sites[r.site] = {
            "receipt_sequence": r.sequence, "receipt_sha256": vr.sha256, "compatible": r.compatible,
            "bundle_sequence": seq, "models": models, "payloads": pay,
            "bytes": sum(p["bytes"] for p in models.values()) + pay["bytes"],
            "bytes_full_models": sum(releases[m].full.bytes for m in needed),
            "bytes_every_delta": sum(releases[m].every_delta_bytes for m in needed),
        }
    bundles = _bundles(sites, releases, {vr.receipt.site: vr.receipt.hosts for vr in receipts}, layout)
    return {"kind": PLAN_KIND, "format_version": PLAN_VERSION,
            "created": datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
            "release_root": str(Path(release_root).resolve()), "target": dict(sorted(target.items())),
            "sites": sites, "bundles": bundles["bundles"], "layout": bundles["layout"],
            "totals": bundles["totals"]}


def _bundles(sites: dict[str, Any], releases: dict[str, Release], hosts: dict[str, dict[str, HostState]],
             layout: str) -> dict[str, Any]:
    """One bundle per site, or one shared bundle when every site gets the same (bytes carried across
    the air gap, summed over sites, are then equal and one bundle is built, signed and tracked);
    ``layout`` forces either. A shared bundle needs one appliance profile."""
    per_site = [{"name": s, "sites": [s], "compatible": p["compatible"], "sequence": p["bundle_sequence"],
                 "entries": [*(e for m in p["models"].values() for e in m["entries"]),
                             *p["payloads"]["entries"]],
                 "bytes": p["bytes"]}
                for s, p in sites.items() if p["bytes"]]
    per_total = sum(b["bytes"] for b in per_site)
    shared = None
    profiles = {p["compatible"] for p in sites.values()}
    if len(profiles) == 1 and (layout == "shared" or (layout == "auto" and len(sites) > 1)):
        all_hosts = {f"{s}/{n}": h for s, hs in hosts.items() for n, h in hs.items()}
        entries: list[Entry] = []
        for m, rel in releases.items():
            chosen = [Entry.from_dict(e) for p in sites.values() for e in p["models"][m]["entries"]]
            if not chosen:
                continue
            cand = [rel.full] if any(e.kind == "full" for e in chosen) else _order(chosen)
            if not all(simulate(h, m, cand, rel.target).ok for h in all_hosts.values()):
                cand = [rel.full]
            entries += cand
        wanted = {e["dest"]: Entry.from_dict(e) for p in sites.values() for e in p["payloads"]["entries"]}
        entries += [wanted[d] for d in sorted(wanted)]
        size = sum(e.bytes for e in entries)
        shared = {"name": "shared", "sites": sorted(sites), "compatible": profiles.pop(),
                  "sequence": max(p["bundle_sequence"] for p in sites.values()),
                  "entries": [e.as_dict() for e in entries], "bytes": size}
    shared_total = shared["bytes"] * len(sites) if shared else None
    use_shared = shared is not None and entries_nonempty(shared) and (
        layout == "shared" or (layout == "auto" and shared_total is not None and shared_total <= per_total))
    if layout == "shared" and shared is None:
        raise ManifestError("a shared bundle needs every site on one appliance profile", rule="plan")
    out = [shared] if use_shared and shared else per_site
    return {"bundles": out, "layout": "shared" if use_shared else "per-site",
            "totals": {"per_site_bytes": per_total,
                       "shared_bytes_per_site": shared["bytes"] if shared else None,
                       "shared_bytes_all_sites": shared_total,
                       "full_models_bytes": sum(p["bytes_full_models"] for p in sites.values()),
                       "every_delta_bytes": sum(p["bytes_every_delta"] for p in sites.values())}}


def entries_nonempty(bundle: dict[str, Any]) -> bool:
    return bool(bundle["entries"])


def write_plan(plan: dict[str, Any], out: Path) -> None:
    from airlock.fsutil import atomic_write_bytes

    if out.exists():
        raise ManifestError(f"{out}: already exists", path=str(out), rule="output")
    atomic_write_bytes(out, (json.dumps(plan, indent=2, sort_keys=True) + "\n").encode(), 0o644)


def load_plan(path: Path) -> dict[str, Any]:
    from airlock.bundle.manifest import MAX_MANIFEST_BYTES, load_json

    data = Path(path).read_bytes()
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{path}: too large for a plan", path=str(path), rule="plan")
    raw = load_json(data)
    if not isinstance(raw, dict) or raw.get("kind") != PLAN_KIND or raw.get("format_version") != PLAN_VERSION:
        raise ManifestError(f"{path}: not a bundle plan (airlock bundle plan -o FILE)", path=str(path),
                            rule="plan")
    bundles = raw.get("bundles")
    ok = isinstance(bundles, list) and all(
        isinstance(b, dict) and isinstance(b.get("name"), str) and isinstance(b.get("sites"), list)
        and isinstance(b.get("compatible"), str) and isinstance(b.get("sequence"), int)
        and isinstance(b.get("entries"), list) and all(
            isinstance(e, dict) and e.get("kind") in ("full", "delta", "payload")
            and isinstance(e.get("model"), str) and isinstance(e.get("version"), str)
            and isinstance(e.get("source"), str)
            and (e["kind"] != "delta" or isinstance(e.get("from_version"), str))
            and (e["kind"] != "payload" or isinstance(e.get("dest"), str)) for e in b["entries"])
        for b in bundles)
    if not ok:
        raise ManifestError(f"{path}: malformed plan (bundles/entries); make it again (airlock bundle plan)",
                            path=str(path), rule="plan")
    return raw


def build_from_plan(plan_path: Path, out_dir: Path, *, signer: str, gnupghome: Path | None = None,
                    passphrase_file: Path | None = None, block_size: int | None = None,
                    split_size: int | None = None) -> list[dict[str, Any]]:
    """Build every bundle the plan lists into ``out_dir/<name>`` (a spec per bundle, then the ordinary
    builder: same hashing, signing and FAT32 splitting). Returns one summary per bundle."""
    import tempfile

    import yaml

    from airlock.bundle.build import build_bundle

    plan = load_plan(plan_path)
    out_dir = Path(out_dir)
    done = []
    for b in plan["bundles"]:
        if not names.is_bundle_id(b["name"]):
            raise ManifestError(f"{plan_path}: bundle name {b['name']!r}", rule="plan")
        bundle_id = f"{b['name']}-{b['sequence']}"
        models, files = [], []
        for e in b["entries"]:
            if e["kind"] == "payload":
                files.append({"src": e["source"], "dest": e["dest"]})
                continue
            entry: dict[str, Any] = {"name": e["model"], "version": e["version"]}
            if e["kind"] == "full":
                entry["path"] = e["source"]
            else:
                entry.update(delta_file=e["source"], from_version=e["from_version"])
            models.append(entry)
        spec = {"bundle_id": bundle_id, "compatible": b["compatible"], "sequence": b["sequence"],
                "models": models, "files": files}
        with tempfile.TemporaryDirectory(prefix="airlock-plan-") as td:
            spec_path = Path(td) / f"{bundle_id}.yml"
            spec_path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
            m = build_bundle(spec_path, out_dir / b["name"], signer=signer, gnupghome=gnupghome,
                             passphrase_file=passphrase_file, block_size=block_size, split_size=split_size)
        done.append({"name": b["name"], "sites": b["sites"], "path": str(out_dir / b["name"]),
                     "bundle_id": m.bundle_id, "sequence": m.sequence, "bytes": m.total_bytes})
    return done
