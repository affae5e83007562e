"""Compliance check: what is on disk against what was signed, and the catalog against both.

The trust anchors are the signed manifests kept in ``update_packages/bundles/<id>/`` (their
signatures re-checked against the pinned signers when trust is given) and the audit log's head as
recorded outside the log (the catalog, and the control node's ``anchor``). The SQLite catalog is an
index, never an anchor: each version's provenance (bundle id, manifest sha256, sequence) and its
file hashes are derived from the kept manifests and any disagreement with the catalog is drift; a
file on disk is checked against the signed hash when one exists. Stray versions and files, the mode
of every repository path, the ``current`` link and deleted history rows are reported too.

Nothing is written: the catalog is opened read-only (``mode=ro``, no migration), the lock is a
reader's shared lock, and no audit record is appended (the result is the report; the control node
keeps it). Each drift item is a ``Drift`` (rule, path, model, version, expected, found); the rules
are listed in docs/repository.md ("Verify")."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airlock.errors import AirlockError
from airlock.hashing import Progress, digest_file, no_progress
from airlock.repo import audit
from airlock.repo.catalog import PRESENT, Catalog, VersionRow, tier_dir
from airlock.repo.layout import (
    CATALOG_MODE,
    CURRENT,
    DIR_MODE,
    FILE_MODE,
    KEPT_MODE,
    METADATA_MODE,
    ROOT_MODE,
    Layout,
    SemVer,
)

if TYPE_CHECKING:
    from airlock.bundle import Manifest, ModelEntry, Trust
    from airlock.crypto import ProviderRegistry

WORKERS = 2  # both cores: hashlib releases the GIL while hashing


@dataclass(frozen=True)
class Drift:
    """One disagreement between what should be and what is."""

    rule: str
    path: str
    model: str | None = None
    version: str | None = None
    expected: Any = None
    found: Any = None

    def as_dict(self, host: str | None = None) -> dict[str, Any]:
        d = {"model": self.model, "version": self.version, "path": self.path, "rule": self.rule,
             "expected": self.expected, "found": self.found}
        return {"host": host, **d} if host is not None else d

    def text(self) -> str:
        return drift_text(self.as_dict())


def drift_text(d: dict[str, Any]) -> str:
    """One drift item (``Drift.as_dict``) as one untruncated line."""
    who = " ".join(str(x) for x in (d.get("host"), d.get("model"), d.get("version")) if x)
    tail = "" if d.get("expected") is None and d.get("found") is None else \
        f" (expected {d.get('expected')}, found {d.get('found')})"
    return f"{who + ': ' if who else ''}{d.get('path')}: {d.get('rule')}{tail}"


# ---------------------------------------------------------------------------------- signed anchors
@dataclass
class KeptManifest:
    record: str  # directory name under update_packages/bundles/
    path: Path
    sha256: str
    manifest: Manifest


@dataclass
class SignedIndex:
    """The kept signed manifests, by (model, version)."""

    manifests: list[KeptManifest] = field(default_factory=list)
    drift: list[Drift] = field(default_factory=list)
    signatures_checked: bool = False

    def entries(self, model: str, version: str) -> list[tuple[KeptManifest, ModelEntry]]:
        return [(k, me) for k in self.manifests for me in k.manifest.models
                if me.name == model and me.version == version]

    def lookup(self, row: VersionRow) -> tuple[KeptManifest, ModelEntry] | None:
        """The signed entry for this version: the one from the bundle the catalog names if it
        states this version, else any kept manifest that does (a cleared bundle id is drift)."""
        found = self.entries(row.model, row.version)
        same = [e for e in found if e[0].manifest.bundle_id == row.bundle_id]
        return (same or found)[0] if found else None

    @property
    def highest_sequence(self) -> int | None:
        return max((k.manifest.sequence for k in self.manifests), default=None)


def _kept_records(layout: Layout) -> list[Path]:
    base = layout.bundle_records
    if not base.is_dir() or base.is_symlink():
        return []
    return sorted(p for p in base.iterdir() if p.is_dir() and not p.is_symlink())


def signed_index(layout: Layout, trust: Trust | None = None) -> SignedIndex:
    """Read every kept manifest (no symlinks, size-limited). With ``trust`` each signature is checked
    again and a manifest that fails is drift (rule ``signature``) and no anchor; without it the
    manifests are parsed only (``signatures_checked`` False: say so loudly)."""
    from airlock.bundle.manifest import MANIFEST_NAME, MAX_MANIFEST_BYTES, parse_manifest
    from airlock.bundle.safeio import read_limited
    from airlock.bundle.verify import load_signed_manifest
    from airlock.errors import ManifestError

    index = SignedIndex(signatures_checked=trust is not None)
    for rec in _kept_records(layout):
        mpath = rec / MANIFEST_NAME
        try:
            if trust is not None:
                signed = load_signed_manifest(rec, trust)
                data, manifest = signed.data, signed.manifest
            else:
                data = read_limited(rec, MANIFEST_NAME, MAX_MANIFEST_BYTES, ManifestError, "manifest-size")
                manifest = parse_manifest(data)
        except AirlockError as exc:
            rule = "signature" if exc.rule == "signature" or type(exc).__name__ == "SignatureError" \
                else "manifest-unreadable"
            index.drift.append(Drift(rule, str(mpath), expected="a manifest signed by a pinned signer"
                                     if rule == "signature" else "a valid manifest", found=str(exc)))
            continue
        if manifest.bundle_id != rec.name:
            index.drift.append(Drift("manifest-bundle-id", str(mpath), expected=rec.name,
                                     found=manifest.bundle_id))
        index.manifests.append(KeptManifest(rec.name, mpath, hashlib.sha256(data).hexdigest(), manifest))
    return index


def highest_signed_sequence(layout: Layout) -> int | None:
    """The highest bundle sequence among the manifests kept on this host: the anti-downgrade floor,
    whatever the catalog says. Signatures are not re-checked here (no trust at hand): an unsigned
    file dropped in can only raise the floor, i.e. refuse more, never allow a downgrade."""
    return signed_index(layout).highest_sequence


def _targets(entry: tuple[KeptManifest, ModelEntry]) -> tuple[dict[str, tuple[int, str]], dict[str, Any]]:
    kept, me = entry
    targets = {rel: (int(i["size"]), str(i["sha256"])) for rel, i in me.target_files.items()}
    blocks: dict[str, Any] = {}
    if me.kind == "full":
        for rel in targets:
            fe = kept.manifest.files.get(f"{me.path}/{rel}")
            if fe is not None and fe.blocks:
                blocks[rel] = (fe.block_size, list(fe.blocks))
    return targets, blocks


# ---------------------------------------------------------------------------------- one version
def _problem(path: str, kind: str, expected: Any = None, actual: Any = None) -> dict[str, Any]:
    return {"path": path, "kind": kind, "expected": expected, "actual": actual}


def _first_bad_block(path: Path, block_size: int, blocks: list[str]) -> int | None:
    d = digest_file(path, block_size)
    for i, (got, want) in enumerate(zip(d.blocks, blocks, strict=False)):
        if got != want:
            return i * block_size
    return None if len(d.blocks) == len(blocks) else min(len(d.blocks), len(blocks)) * block_size


Expected = dict[str, tuple[int, str]]


def provenance(row: VersionRow, index: SignedIndex) -> tuple[list[dict[str, Any]], Expected]:
    """The catalog row against the kept signed manifests: (problems, expected files). The expected
    files are the signed ones when a kept manifest states this version, else the catalog's."""
    catalog = {r: (f.size, f.sha256) for r, f in row.files.items()}
    entry = index.lookup(row)
    problems: list[dict[str, Any]] = []
    if entry is None:
        if row.bundle_id:
            problems.append(_problem(".", "manifest-missing", row.bundle_id, None))
        return problems, catalog
    kept, _me = entry
    m = kept.manifest
    for kind, want, have in (("provenance-bundle-id", m.bundle_id, row.bundle_id),
                             ("provenance-manifest-sha256", kept.sha256, row.manifest_sha256),
                             ("provenance-sequence", m.sequence, row.sequence)):
        if want != have:
            problems.append(_problem(".", kind, want, have))
    targets, _ = _targets(entry)
    for rel in sorted(set(targets) | set(catalog)):
        if targets.get(rel) != catalog.get(rel):
            want_t, have_t = targets.get(rel), catalog.get(rel)
            problems.append(_problem(rel, "catalog-vs-signed", want_t[1] if want_t else None,
                                     have_t[1] if have_t else None))
    return problems, targets


def version_home(layout: Layout, cat: Catalog, row: VersionRow) -> Path | None:
    """The directory holding a version's files where the catalog says they live (its ``location``):
    the repository for hot, ``<tier dir>/<model>/<version>`` for warm and cold; None when that tier's
    directory is not configured or not there (an unmounted warm tier, unplugged cold media)."""
    if row.location == "hot":
        return layout.version_dir(row.model, row.version)
    base = tier_dir(cat, row.location)
    return base / row.model / row.version if base is not None and base.is_dir() else None


def verify_version(layout: Layout, row: VersionRow, *, uid: int | None = None,
                   gid: int | None = None, keys: ProviderRegistry | None = None,
                   index: SignedIndex | None = None, progress: Progress = no_progress,
                   vdir: Path | None = None) -> dict[str, Any]:
    """Drift report for one version, checked in ``vdir`` (default: its hot directory; see
    ``version_home``); per file only the first problem found is reported. An encrypted version
    (``row.encryption``) is checked by its plaintext hashes, decrypting with ``keys``."""
    from airlock.repo.encryption import stored_sha256, stored_size

    index = index if index is not None else signed_index(layout)
    vdir = vdir if vdir is not None else layout.version_dir(row.model, row.version)
    enc = row.encryption is not None
    problems, expected = provenance(row, index)
    entry = index.lookup(row)
    blocks = _targets(entry)[1] if entry is not None else {}
    report: dict[str, Any] = {"model": row.model, "version": row.version, "state": row.state,
                              "location": row.location, "path": str(vdir), "files": len(expected), "bytes": 0,
                              "problems": problems,
                              "manifest": entry[0].manifest.bundle_id if entry else None, "encrypted": enc,
                              "key_ref": row.encryption}
    if not vdir.is_dir() or vdir.is_symlink():
        problems.append(_problem(".", "missing-version-dir", str(vdir), None))
        report["ok"] = False
        return report
    found: set[str] = set()
    for dirpath, dirs, files in os.walk(vdir):
        dmode = stat.S_IMODE(os.lstat(dirpath).st_mode)
        drel = Path(dirpath).relative_to(vdir).as_posix()
        if dmode != DIR_MODE:
            problems.append(_problem(drel, "dir-mode", oct(DIR_MODE), oct(dmode)))
        for name in [*files, *[d for d in dirs if os.path.islink(os.path.join(dirpath, d))]]:
            found.add((Path(dirpath) / name).relative_to(vdir).as_posix())
    for rel in sorted(found - set(expected)):
        problems.append(_problem(rel, "extra-file"))

    def check(rel: str) -> dict[str, Any] | None:
        want_size, want_sha = expected[rel]
        p = vdir / rel
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            return _problem(rel, "missing", want_sha, None)
        if not stat.S_ISREG(st.st_mode):
            return _problem(rel, "not-a-regular-file")
        try:  # an encrypted file that fails to authenticate is drift, not a crash of the check
            size = stored_size(p, enc)
            if size != want_size:
                return _problem(rel, "size", want_size, size)
            got = stored_sha256(p, keys, model=row.model, rel=rel, key_ref=row.encryption) if enc \
                else digest_file(p).sha256
        except AirlockError as exc:
            return _problem(rel, "decrypt", row.encryption, str(exc))
        if got != want_sha:
            prob = _problem(rel, "sha256", want_sha, got)
            if rel in blocks and not enc:
                bs, bl = blocks[rel]
                prob["first_bad_offset"] = _first_bad_block(p, bs, bl)
            return prob
        mode = stat.S_IMODE(st.st_mode)
        if mode != FILE_MODE:
            return _problem(rel, "mode", oct(FILE_MODE), oct(mode))
        if uid is not None and st.st_uid != uid:
            return _problem(rel, "owner", uid, st.st_uid)
        if gid is not None and st.st_gid != gid:
            return _problem(rel, "group", gid, st.st_gid)
        return None

    def checked(rel: str) -> dict[str, Any] | None:
        try:
            return check(rel)
        finally:
            progress(expected[rel][0])  # bytes of this file, checked (a progress bar's tick)

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        for prob in pool.map(checked, sorted(expected)):
            if prob:
                problems.append(prob)
    report["bytes"] = sum(size for size, _ in expected.values())
    report["ok"] = not problems
    return report


def version_drift(report: dict[str, Any]) -> list[Drift]:
    """A version report's problems as drift items (paths made absolute on the host)."""
    vdir = Path(report["path"])
    return [Drift(p["kind"], str(vdir if p["path"] == "." else vdir / p["path"]), report["model"],
                  report["version"], p["expected"], p["actual"]) for p in report["problems"]]


# ---------------------------------------------------------------------------------- one model
def current_link(layout: Layout, model: str, active: str | None) -> dict[str, Any]:
    link = layout.current(model)
    target = os.readlink(link) if link.is_symlink() else None
    ok = target == active and (target is None or (link.parent / target).is_dir())
    return {"path": str(link), "target": target, "expected": active, "ok": bool(ok)}


def _mode_drift(path: Path, want: int, model: str | None = None) -> list[Drift]:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return []
    have = stat.S_IMODE(st.st_mode)
    return [] if have == want else [Drift("repo-mode", str(path), model, None, oct(want), oct(have))]


def _stray(layout: Layout, model: str, rows: list[VersionRow]) -> list[Drift]:
    """Entries of <model>/ other than ``current`` and the present versions the catalog records."""
    mdir = layout.model_dir(model)
    if not mdir.is_dir():
        return []
    present = {r.version for r in rows if r.state in PRESENT}
    out = []
    for entry in sorted(mdir.iterdir()):
        if entry.name == CURRENT or entry.name in present:
            continue
        try:
            SemVer.parse(entry.name)
            versioned = entry.is_dir() and not entry.is_symlink()
        except AirlockError:
            versioned = False
        state = next((r.state for r in rows if r.version == entry.name), None)
        out.append(Drift("stray-version" if versioned else "stray-file", str(entry), model,
                         entry.name if versioned else None, "not present" if state else "not in the catalog",
                         "directory" if entry.is_dir() else "file"))
    return out


def check_model(layout: Layout, cat: Catalog, model: str, version: str | None = None, *,
                uid: int | None = None, gid: int | None = None, keys: ProviderRegistry | None = None,
                index: SignedIndex | None = None, progress: Progress = no_progress) -> dict[str, Any]:
    """One model: every present version (or ``version``) checked where its files live (hot, warm or
    cold tier), the provenance of every catalog row (pruned ones too: rollback rebuilds them from
    those hashes), stray entries, modes, the link. A version whose tier directory is not there (an
    unmounted warm tier, unplugged cold media) is listed under ``unavailable`` (its provenance is still
    checked) when the whole model is verified, and is drift when it is the version asked for."""
    from airlock.errors import RepositoryError

    index = index if index is not None else signed_index(layout)
    all_rows = cat.versions(model, with_files=True)
    rows = [r for r in all_rows if r.version == version] if version else \
        [r for r in all_rows if r.state in PRESENT]
    if not rows:
        raise RepositoryError(f"{layout.model_dir(model)}: {model} {version or ''} is not installed",
                              path=str(layout.model_dir(model)), rule="version-missing")
    homes = {r.version: version_home(layout, cat, r) if r.state in PRESENT else None for r in rows}
    unavailable = [r for r in rows if r.state in PRESENT and homes[r.version] is None]
    away = {r.version for r in unavailable}
    reports = [verify_version(layout, r, uid=uid, gid=gid, keys=keys, index=index, progress=progress,
                              vdir=homes[r.version]) for r in rows if r.version not in away]
    drift = [d for r in reports for d in version_drift(r)]
    if version is not None and unavailable:
        r = unavailable[0]
        drift.append(Drift("tier-unavailable", str(tier_dir(cat, r.location) or r.location), model, r.version,
                           f"the {r.location} tier's directory", None))
    for r in all_rows:
        if (version is None and r.state not in PRESENT) or r.version in away:
            drift.extend(version_drift({"path": str(layout.version_dir(model, r.version)), "model": model,
                                        "version": r.version, "problems": provenance(r, index)[0]}))
    if version is None:
        drift.extend(_stray(layout, model, all_rows))
        drift.extend(_mode_drift(layout.model_dir(model), ROOT_MODE, model))
    active = cat.in_state(model, "active")
    link = current_link(layout, model, active.version if active else None)
    if not link["ok"]:
        drift.append(Drift("current-link", link["path"], model, None, link["expected"], link["target"]))
    unsigned = [r.version for r in rows if index.lookup(r) is None and not r.bundle_id]
    return {"model": model, "ok": not drift, "versions": reports, "current": link,
            "drift": [d.as_dict() for d in drift], "unsigned": unsigned,
            "unavailable": [{"version": r.version, "location": r.location} for r in unavailable]}


def unavailable_warning(model: str, unavailable: list[dict[str, str]]) -> str:
    return (f"{model} " + ", ".join(f"{u['version']} ({u['location']})" for u in unavailable)
            + ": tier directory not available, files NOT checked (provenance only)")


# ---------------------------------------------------------------------------------- the repository
def repo_mode_drift(layout: Layout) -> list[Drift]:
    """Mode of every repository path that is not inside a version."""
    paths = [(layout.root, ROOT_MODE), (layout.repo, ROOT_MODE), (layout.packages, ROOT_MODE),
             (layout.metadata, METADATA_MODE), (layout.catalog, CATALOG_MODE),
             (layout.audit_log, audit.AUDIT_MODE)]
    for rec in _kept_records(layout):
        paths.extend((f, KEPT_MODE) for f in sorted(rec.iterdir()) if f.is_file() and not f.is_symlink())
    return [d for p, m in paths for d in _mode_drift(p, m)]


def _stray_top(layout: Layout, models: set[str]) -> list[Drift]:
    known = {"metadata", "update_packages", layout.audit_log.name, *models}
    if not layout.repo.is_dir():
        return []
    return [Drift("stray-entry", str(e), None, None, "not in the catalog",
                  "directory" if e.is_dir() else "file")
            for e in sorted(layout.repo.iterdir()) if e.name not in known]


def history_drift(cat: Catalog, log: Path) -> list[Drift]:
    """Audit records without their catalog history row (rows deleted from the catalog). Both are
    written by every operation, history first, so a crash can only leave a row without a record;
    key operations (``key-*``) have no history row."""
    rows = cat.history_keys()
    i = 0
    out = []
    for rec in _audit_records(log):
        action = str(rec.get("action"))
        if action.startswith("key-"):
            continue
        key = (action, rec.get("model"), rec.get("from"), rec.get("to"), rec.get("result"))
        j = next((k for k in range(i, len(rows)) if rows[k] == key), None)
        if j is None:
            out.append(Drift("history-row-missing", str(cat.path), rec.get("model"), rec.get("to"),
                             f"a history row for audit record seq {rec.get('seq')} ({action})", None))
        else:
            i = j + 1
    return out


def _audit_records(log: Path) -> Iterator[dict[str, Any]]:
    if not log.exists():
        return
    with open(log, "rb") as fh:
        for raw in fh:
            try:
                rec = json.loads(raw)
            except ValueError:
                continue  # the chain check reports it
            if isinstance(rec, dict):
                yield rec


def audit_drift(report: audit.AuditReport) -> list[Drift]:
    return [Drift(f.rule, report.path, None, None, None, f.message) for f in report.findings]


def check_repository(layout: Layout, cat: Catalog, *, models: list[str] | None = None,
                     trust: Trust | None = None, anchor: audit.AuditHead | None = None,
                     expected: dict[str, str | None] | None = None, loadable: bool = False,
                     uid: int | None = None, gid: int | None = None,
                     keys: ProviderRegistry | None = None) -> dict[str, Any]:
    """The whole repository (the compliance report of playbooks/verify.yml)."""
    from airlock.repo.loadable import check_loadable

    index = signed_index(layout, trust)
    known = cat.models()
    drift: list[Drift] = list(index.drift)
    warnings: list[str] = []
    if not index.signatures_checked:
        warnings.append(f"signatures NOT checked: no trust given, so the {len(index.manifests)} kept "
                        "manifest(s) were used as found (pass the pinned signers: --trust/--keyring, "
                        "airlock_trust)")
    reports: dict[str, Any] = {}
    for model in models or known:
        if model not in known:
            drift.append(Drift("model-missing", str(layout.model_dir(model)), model, None, "installed", None))
            continue
        rep = check_model(layout, cat, model, uid=uid, gid=gid, keys=keys, index=index)
        reports[model] = rep
        drift.extend(Drift(**d) for d in rep["drift"])
        if rep["unavailable"]:
            warnings.append(unavailable_warning(model, rep["unavailable"]))
        if rep["unsigned"]:
            warnings.append(f"{model} {', '.join(rep['unsigned'])}: no signed manifest kept for this version "
                            "(installed from a directory): checked against the catalog only")
        active = cat.in_state(model, "active")
        if loadable and active is not None and layout.version_dir(model, active.version).is_dir():
            try:
                enc_files = {r: (f.size, f.sha256) for r, f in (cat.version(model, active.version) or
                                                                 active).files.items()}
                lr = check_loadable(layout.version_dir(model, active.version),
                                    keys=keys if active.encryption else None, model=model,
                                    expected=enc_files if active.encryption else None)
                rep["loadable"] = {"tensors": lr.tensors, "files": lr.files, "checks": lr.checks}
            except AirlockError as exc:
                drift.append(Drift("not-loadable", str(layout.version_dir(model, active.version)), model,
                                   active.version, "loadable", str(exc)))
    for model, want in sorted((expected or {}).items()):
        row = cat.in_state(model, "active")
        have = row.version if row else None
        if want is not None and have != str(want):
            drift.append(Drift("expected-version", str(layout.current(model)) if model in known else
                               str(layout.repo), model, have, str(want), have))
    drift.extend(repo_mode_drift(layout))
    drift.extend(_stray_top(layout, set(known)))
    raw = cat.get_meta("sequence")
    seq_catalog = int(raw) if raw is not None else None
    if seq_catalog != index.highest_sequence:
        drift.append(Drift("sequence", str(layout.catalog), None, None, index.highest_sequence, seq_catalog))
    report = audit.scan(layout.audit_log, audit.parse_head(cat.get_meta("audit_head")), anchor)
    drift.extend(audit_drift(report))
    drift.extend(history_drift(cat, layout.audit_log))
    return {"ok": not drift, "models": reports, "drift": [d.as_dict() for d in drift], "warnings": warnings,
            "signatures_checked": index.signatures_checked, "audit": report.as_dict(),
            "audit_ok": report.ok, "audit_head": report.head.as_dict(),
            "sequence": {"catalog": seq_catalog, "signed": index.highest_sequence}}


def dumps(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=True)
