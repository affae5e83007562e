"""Backups of an appliance root with restic: create (under the repository's shared lock, then
retention and ``restic check``), list, check, restore into an empty root (restored aside, verified,
then renamed into place) and the restore drill (restore onto a scratch root and compare with the
live host). Every create, restore and drill is recorded in the audit log."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airlock.backup import stage as st
from airlock.backup.restic import TAG, Progress, Restic
from airlock.errors import AirlockError, BackupError, IntegrityError, RepositoryError
from airlock.faults import fault_point
from airlock.hashing import sha256_file, tree_files
from airlock.repo import audit
from airlock.repo.layout import CATALOG_MODE, ROOT_MODE, Layout
from airlock.repo.lock import repo_lock


@dataclass(frozen=True)
class Retention:
    """restic ``forget --prune`` policy; all zero: keep everything."""

    last: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0

    def args(self) -> list[str]:
        out: list[str] = []
        for flag, n in (("--keep-last", self.last), ("--keep-daily", self.daily),
                        ("--keep-weekly", self.weekly), ("--keep-monthly", self.monthly)):
            if n:
                out += [flag, str(n)]
        return out


@dataclass
class CreateResult:
    snapshot: str
    repo: str
    files: int
    bytes_processed: int
    bytes_added: int
    seconds: float
    manifest: dict[str, Any]
    forgotten: list[str] = field(default_factory=list)
    checked: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"ok": True, "snapshot": self.snapshot, "repo": self.repo, "files": self.files,
                "bytes_processed": self.bytes_processed, "bytes_added": self.bytes_added,
                "seconds": round(self.seconds, 3), "forgotten": self.forgotten, "checked": self.checked,
                "active": self.manifest["active"], "audit_head": self.manifest["audit"]["head"],
                "referenced_only": self.manifest["referenced_only"],
                "keys_config": self.manifest["keys_config"]}


def _audit(root: Path, action: str, result: str, details: dict[str, Any], lock_timeout: float | None) -> None:
    """One record in the root's audit log (and the catalog's head), under the exclusive lock."""
    from airlock.repo import Repository

    repo = Repository(root, lock_timeout=lock_timeout)
    try:
        with repo_lock(repo.layout.lock, lock_timeout):
            repo.audit_record(action, None, None, None, result, details)
    finally:
        repo.close()


def create(root: Path, restic: Restic, *, keys_config: Path | None = None, retention: Retention = Retention(),
           check_subset: str | None = None, lock_timeout: float | None = None,
           progress: Progress | None = None) -> CreateResult:
    """Snapshot ``root`` into the restic repository (initialised on first use), forget by
    ``retention``, then ``restic check`` (reading ``check_subset`` of the data, e.g. ``10%``).

    Audit order: once restic's repository is reachable, a ``backup`` ``started`` record is appended
    (exclusive lock, released at once); the snapshot is then taken under the shared lock, so it holds
    a consistent repository whose audit chain (and the catalog's head) ends with that record or with
    a later complete operation; the outcome (``ok`` with the snapshot id, or ``failed``) is appended
    after the snapshot and is not in it. A restored host's chain therefore verifies and ends with
    the ``started`` record of the backup it came from."""
    layout = Layout(root)
    if not layout.catalog.exists():
        raise RepositoryError(f"{layout.repo}: no model repository here (nothing to back up)",
                              path=str(layout.repo), rule="repository-missing")
    restic.check_secrets()  # a bad password file mode is refused before anything is written
    st.keys_config_scan(keys_config)  # so is a key provider config holding a secret inline
    try:
        if not restic.is_initialized():
            restic.init()
        t0 = time.monotonic()
        _audit(root, "backup", "started", {"repo": restic.repo, "host": socket.gethostname()}, lock_timeout)
        with st.stage_dir(layout) as stage, repo_lock(layout.lock, lock_timeout, shared=True):
            sha = st.copy_catalog(layout.catalog, stage / st.CATALOG_COPY)
            versions, head = st.catalog_versions(stage / st.CATALOG_COPY)
            refs = [v for v in versions if v.location != "hot" and v.state != "pruned"]
            keys = st.keys_config_copy(keys_config, stage)
            manifest = st.write_manifest(stage, layout, sha, versions, head, keys, refs)
            args = ["backup", "--tag", TAG, "--host", socket.gethostname()]
            for pat in st.excludes(layout, [layout.version_dir(v.model, v.version) for v in refs]):
                args += ["--exclude", pat]
            msgs = restic.run(*args, "model_repo", st.STAGE_NAME, cwd=root, progress=progress)
            fault_point("backup.create.after-snapshot")
        summary = next((m for m in msgs if m.get("message_type") == "summary"), None)
        if summary is None:
            raise BackupError(f"{restic.repo}: restic backup gave no summary", path=restic.repo,
                              rule="backup-restic")
        result = CreateResult(str(summary["snapshot_id"]), restic.repo,
                              int(summary.get("total_files_processed", 0)),
                              int(summary.get("total_bytes_processed", 0)), int(summary.get("data_added", 0)),
                              time.monotonic() - t0, manifest)
        if retention.args():
            out = restic.run("forget", "--prune", "--tag", TAG, "--group-by", "host,tags", *retention.args())
            result.forgotten = [s.get("short_id", s.get("id", "")) for grp in _items(out)
                                for s in grp.get("remove") or []]
        check(restic, read_data_subset=check_subset)
        result.checked = True
    except (AirlockError, OSError, KeyboardInterrupt) as exc:
        with contextlib.suppress(Exception, KeyboardInterrupt):
            _audit(root, "backup", "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
                   {"repo": restic.repo, "error": type(exc).__name__, "message": str(exc)}, lock_timeout)
        raise
    _audit(root, "backup", "ok", {"repo": restic.repo, "snapshot": result.snapshot, "files": result.files,
                                  "bytes": result.bytes_processed, "added": result.bytes_added,
                                  "forgotten": result.forgotten, "audit_head": manifest["audit"]["head"]},
           lock_timeout)
    return result


def _items(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """restic prints some answers as one JSON list (snapshots, forget)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.get("message_type") == "list":
            out += [x for x in m["items"] if isinstance(x, dict)]
    return out


def snapshots(restic: Restic, host: str | None = None) -> list[dict[str, Any]]:
    """Airlock's snapshots in the repository, oldest first."""
    args = ["snapshots", "--tag", TAG] + (["--host", host] if host else [])
    snaps = _items(restic.run(*args))
    return sorted(snaps, key=lambda s: str(s.get("time", "")))


def check(restic: Restic, *, read_data_subset: str | None = None, read_data: bool = False) -> dict[str, Any]:
    """``restic check``: structure always, pack contents with ``read_data`` (all) or a subset."""
    args = ["check"]
    if read_data:
        args.append("--read-data")
    elif read_data_subset:
        args.append(f"--read-data-subset={read_data_subset}")
    msgs = restic.run(*args)
    return {"ok": True, "repo": restic.repo, "read_data": read_data or bool(read_data_subset),
            "output": [m.get("text", "") for m in msgs if m.get("message_type") == "text"][-3:]}


def pick_snapshot(restic: Restic, snapshot: str | None, host: str | None) -> dict[str, Any]:
    snaps = snapshots(restic, host)
    if snapshot in (None, "latest"):
        if not snaps:
            raise BackupError(f"{restic.repo}: no Airlock snapshot to restore"
                              + (f" for host {host}" if host else ""), path=restic.repo,
                              rule="backup-snapshot")
        return snaps[-1]
    found = [s for s in snaps if str(s.get("id", "")).startswith(str(snapshot))]
    if len(found) != 1:
        raise BackupError(f"{restic.repo}: snapshot {snapshot!r} "
                          + ("is ambiguous" if found else "not found (airlock backup list)"),
                          path=restic.repo, rule="backup-snapshot")
    return found[0]


def _empty_target(target: Path) -> None:
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise RepositoryError(f"{target}: restore target is not a directory", path=str(target),
                              rule="restore-target")
    if target.is_dir() and any(target.iterdir()):
        raise RepositoryError(f"{target}: restore target is not empty; restore into an empty or new "
                              "directory (a live root is never overwritten)", path=str(target),
                              rule="restore-target")


@dataclass
class RestoreResult:
    root: str
    snapshot: str
    manifest: dict[str, Any]
    verified: bool
    seconds: float
    bytes: int
    keys_config: str | None = None
    compliance: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"ok": True, "root": self.root, "snapshot": self.snapshot, "verified": self.verified,
                "seconds": round(self.seconds, 3), "bytes": self.bytes, "active": self.manifest["active"],
                "audit_head": self.manifest["audit"]["head"], "source_host": self.manifest["host"],
                "source_root": self.manifest["root"], "referenced_only": self.manifest["referenced_only"],
                "keys_config_restored": self.keys_config, "keys_config": self.manifest["keys_config"]}


def restore(restic: Restic, target: Path, *, snapshot: str | None = None, host: str | None = None,
            verify: bool = True, keys_config_out: Path | None = None, verify_keys: Path | None = None,
            trust: Any = None, lock_timeout: float | None = None,
            say: Callable[[str], None] = lambda _m: None) -> RestoreResult:
    """Restore a snapshot into ``target`` (absent or empty). restic restores (and decrypts, so a
    changed pack is refused) into a sibling directory; the catalog copy is put in place, the
    audit chain and (unless ``verify`` is off) the whole repository are verified there, the restore
    is audited, and only then is the directory renamed to ``target``. A failure leaves ``target``
    as it was."""
    target = target.absolute()
    _empty_target(target)
    if keys_config_out is not None and keys_config_out.exists():
        raise RepositoryError(f"{keys_config_out}: exists; the restored key provider config is never "
                              "written over a file", path=str(keys_config_out), rule="restore-target")
    restic.check_secrets()
    snap = pick_snapshot(restic, snapshot, host)
    snap_id = str(snap["id"])
    target.parent.mkdir(parents=True, exist_ok=True)
    _sweep_restoring(target)
    work = target.parent / f".{target.name}.restoring-{os.getpid()}"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(mode=ROOT_MODE)
    os.chmod(work, ROOT_MODE)
    t0 = time.monotonic()
    try:
        say(f"restoring snapshot {snap_id[:8]} of {snap.get('hostname')} ({snap.get('time')})")
        restic.run("restore", snap_id, "--target", str(work), "--verify")
        fault_point("backup.restore.after-restic")
        stage = work / st.STAGE_NAME
        try:
            manifest = json.loads((stage / st.MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise IntegrityError(f"{restic.repo}: snapshot {snap_id[:8]} is not an Airlock backup ({exc})",
                                 path=restic.repo, rule="backup-format") from exc
        layout = Layout(work)
        cat = stage / st.CATALOG_COPY
        if hashlib.sha256(cat.read_bytes()).hexdigest() != manifest.get("catalog_sha256"):
            raise IntegrityError(f"{restic.repo}: the catalog in snapshot {snap_id[:8]} does not match its "
                                 "recorded hash", path=restic.repo, rule="backup-integrity")
        layout.metadata.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.replace(cat, layout.catalog)
        os.chmod(layout.catalog, CATALOG_MODE)
        keys_out = None
        if keys_config_out is not None and (stage / st.KEYS_COPY).exists():
            keys_config_out.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            shutil.copyfile(stage / st.KEYS_COPY, keys_config_out)
            os.chmod(keys_config_out, 0o600)
            keys_out = str(keys_config_out)
        shutil.rmtree(stage)
        nbytes = sum((work / "model_repo" / rel).stat().st_size for rel in tree_files(work / "model_repo"))
        compliance = None
        if verify:
            say("verifying the restored repository (audit chain, every file against the signed manifests)")
            compliance = verify_root(work, verify_keys, trust)
        _audit(work, "restore", "ok", {"repo": restic.repo, "snapshot": snap_id, "source_host":
                                       manifest.get("host"), "source_root": manifest.get("root"),
                                       "verified": verify}, lock_timeout)
        fault_point("backup.restore.before-rename")
        _empty_target(target)  # nobody filled it meanwhile
        if target.exists():
            target.rmdir()
        os.rename(work, target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return RestoreResult(str(target), snap_id, manifest, verify, time.monotonic() - t0, nbytes, keys_out,
                         compliance)


def _sweep_restoring(target: Path) -> None:
    """Remove what a killed restore into ``target`` left beside it (its process is gone)."""
    for old in target.parent.glob(f".{target.name}.restoring-*"):
        pid = old.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(old, ignore_errors=True)


def verify_root(root: Path, keys_config: Path | None = None, trust: Any = None) -> dict[str, Any]:
    """What ``airlock audit verify`` and ``airlock model verify`` check, on a restored root: raises
    AuditError (33) or IntegrityError (13) naming the first problem."""
    from airlock.crypto.providers import load_registry
    from airlock.repo import Repository

    repo = Repository(root, keys=load_registry(keys_config))  # None: no config named, no default one
    try:
        repo.audit_verify()
        report = repo.compliance(trust=trust)
    finally:
        repo.close()
    if not report["ok"]:
        first = report["drift"][0]
        raise IntegrityError(f"{root}: the restored repository does not verify ({len(report['drift'])} "
                             f"item(s), first: {first['path']}: {first['rule']})", path=str(root),
                             rule="restore-verify")
    return report


# ------------------------------------------------------------------------------------------- drill
SKIP_COMPARE = ("metadata/", "update_packages/staged/")


def _tree_hashes(repo_dir: Path) -> dict[str, str]:
    out = {}
    for rel in tree_files(repo_dir):
        if rel.startswith(SKIP_COMPARE) or rel == "update_history.log" or "/.staging-" in f"/{rel}" \
                or "/.trash-" in f"/{rel}":
            continue
        out[rel] = sha256_file(repo_dir / rel)
    return out


def compare(live: Path, restored: Path, backup_head: audit.AuditHead | None = None) -> dict[str, Any]:
    """Live host vs restored root: active versions (catalog and ``current`` links), every file's
    sha256 (versions, kept manifests and deltas), and the audit log: the restored chain must be a
    prefix of the live one up to ``backup_head``, the head the snapshot recorded (default: the
    restored log's last record; records added since are not errors)."""
    from airlock.repo import Repository

    def active(root: Path) -> dict[str, str | None]:
        repo = Repository(root)
        try:
            return {m["model"]: m["active"] for m in repo.list_models()}
        finally:
            repo.close()

    def links(root: Path) -> dict[str, str]:
        repo_dir = Layout(root).repo
        return {p.parent.name: os.readlink(p) for p in repo_dir.glob("*/current") if p.is_symlink()}

    lh, rh = _tree_hashes(Layout(live).repo), _tree_hashes(Layout(restored).repo)
    differ = sorted(k for k in rh.keys() & lh.keys() if rh[k] != lh[k])
    restored_head = backup_head or audit.tail_head(Layout(restored).audit_log)
    chain = audit.scan(Layout(live).audit_log, anchor=restored_head)
    act_live, act_rest = active(live), active(restored)
    out = {
        "active_live": act_live, "active_restored": act_rest, "active_same": act_live == act_rest,
        "links_same": links(live) == links(restored),
        "files_compared": len(rh.keys() & lh.keys()), "files_differ": differ,
        "missing_on_live": sorted(rh.keys() - lh.keys()), "live_only": sorted(lh.keys() - rh.keys()),
        "audit_prefix_ok": chain.ok, "audit_restored_head": restored_head.as_dict(),
        "audit_live_head": chain.head.as_dict(),
    }
    out["identical"] = (out["active_same"] and out["links_same"] and not differ and not out["missing_on_live"]
                        and chain.ok)
    return out


def drill(live: Path, restic: Restic, scratch: Path, *, keep: bool = False, snapshot: str | None = None,
          keys_config: Path | None = None, trust: Any = None, lock_timeout: float | None = None,
          say: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """Restore the latest backup onto ``scratch`` (verified as any restore), compare it with the live
    root, record the result in the live root's audit log, remove the scratch root unless ``keep``."""
    t0 = time.monotonic()
    report: dict[str, Any] = {"live": str(live), "scratch": str(scratch), "repo": restic.repo}
    try:
        # this host's latest snapshot: a repository shared by a fleet holds other hosts' too
        res = restore(restic, scratch, snapshot=snapshot, host=socket.gethostname(), verify=True,
                      verify_keys=keys_config,
                      trust=trust, lock_timeout=lock_timeout, say=say)
        report.update(snapshot=res.snapshot, restore_seconds=round(res.seconds, 3), restored_bytes=res.bytes,
                      verified=True)
        say("comparing with the live host")
        report["compare"] = compare(live, scratch, audit.parse_head(res.manifest["audit"]["head"]))
        report["ok"] = bool(report["compare"]["identical"])
    except AirlockError as exc:
        report.update(ok=False, error=exc.as_dict())
    report["seconds"] = round(time.monotonic() - t0, 3)
    details = {k: report.get(k) for k in ("repo", "snapshot", "ok", "seconds")}
    if "compare" in report:
        c = report["compare"]
        details.update(files_compared=c["files_compared"], files_differ=len(c["files_differ"]),
                       active_same=c["active_same"], audit_prefix_ok=c["audit_prefix_ok"])
    if "error" in report:
        details["error"] = report["error"]["message"]
    _audit(live, "restore-drill", "ok" if report["ok"] else "failed", details, lock_timeout)
    if not keep and scratch.exists() and "snapshot" in report:
        shutil.rmtree(scratch, ignore_errors=True)
        report["scratch_removed"] = True
    return report
