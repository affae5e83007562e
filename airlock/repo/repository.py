"""``Repository``: the model repository on an appliance (docs/repository.md).

Every mutating operation runs under the repository lock, starts with ``recover()`` and is split
into ``plan_*`` (reads only; Ansible check mode / --diff) and ``execute(plan)``. Write ordering,
so that a kill -9 at any point leaves the previously active version serving and intact:

  stage beside the final dir -> copy/link, hash-check -> loadability check -> seal + fsync
  -> rename into place -> catalog row (one transaction) -> symlink swap -> catalog states -> audit

``recover()`` removes staging/trash leftovers and directories the catalog does not know, marks
versions whose directory vanished as pruned and aligns catalog states with the ``current`` link.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import hashlib
import json
import os
import pwd
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airlock import settings
from airlock.errors import (
    AirlockError,
    DiskSpaceError,
    IntegrityError,
    RepositoryError,
)
from airlock.faults import fault_point
from airlock.fsutil import (
    atomic_symlink,
    atomic_write_bytes,
    free_bytes,
    fsync_dir,
    rmtree_writable,
    staging_dir,
)
from airlock.hashing import copy_hashing, no_progress, sha256_file
from airlock.repo import audit
from airlock.repo.catalog import Catalog, VersionRow
from airlock.repo.encryption import Encryption, resolve
from airlock.repo.install import (
    Expected,
    build_tree,
    disk_bytes,
    enospc,
    normalise_expected,
    scan_source,
    seal,
    tree_matches,
)
from airlock.repo.layout import (
    DEFAULT_ROOT,
    KEEP_PREFIX,
    STAGING_PREFIX,
    TRASH_PREFIX,
    Layout,
    SemVer,
    version_key,
)
from airlock.repo.loadable import check_loadable
from airlock.repo.lock import repo_lock
from airlock.repo.plan import FileAction, Plan
from airlock.repo.recover import PRESENT, recover
from airlock.repo.verify import check_model, check_repository

if TYPE_CHECKING:
    from airlock.bundle import Manifest, StagedBundle, Trust
    from airlock.crypto import KeyRef, ProviderRegistry

Progress = Callable[[int], None]


class Repository:
    def __init__(self, root: Path | None = None, *, owner: str | None = None, group: str | None = None,
                 lock_timeout: float | None = None, check_torch: bool = False,
                 keys: ProviderRegistry | None = None) -> None:
        self.layout = Layout(Path(root) if root is not None else DEFAULT_ROOT)
        self.keys = keys  # key providers for encrypted versions (docs/security.md); per call too
        self.owner, self.group = owner, group
        self.lock_timeout = lock_timeout
        self.check_torch = check_torch
        self._depth = 0
        self._catalog: Catalog | None = None

    # ------------------------------------------------------------------------------------ plumbing
    @property
    def root(self) -> Path:
        return self.layout.root

    def _ids(self) -> tuple[int | None, int | None]:
        """uid/gid to chown to: only when configured and running as root (names are resolved, and
        an unknown one refused, either way: ``check_owner`` runs this before anything is copied)."""
        try:
            uid = pwd.getpwnam(self.owner).pw_uid if self.owner else None
            gid = grp.getgrnam(self.group).gr_gid if self.group else None
        except KeyError as exc:
            raise RepositoryError(f"{self.root}: unknown owner/group {exc}: create it or fix --owner/--group",
                                  path=str(self.root), rule="owner") from exc
        if os.geteuid() != 0:
            return None, None
        return uid, gid

    def check_owner(self) -> None:
        """Refuse an unknown --owner/--group now, before staging or copying (exit 30)."""
        self._ids()

    def catalog(self) -> Catalog:
        if self._catalog is None:
            self.layout.metadata.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._catalog = Catalog(self.layout.catalog)
        return self._catalog

    def close(self) -> None:
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None

    @contextlib.contextmanager
    def _mutating(self, recover: bool = True) -> Iterator[Catalog]:
        """The lock (re-entrant within this object) and recovery on first entry (not for verify:
        a compliance check reports drift as found instead of repairing it first)."""
        if self._depth:
            self._depth += 1
            try:
                yield self.catalog()
            finally:
                self._depth -= 1
            return
        self.layout.create_dirs()
        with repo_lock(self.layout.lock, self.lock_timeout):
            self._depth = 1
            try:
                cat = self.catalog()
                if recover:
                    self.recover()
                yield cat
            finally:
                self._depth = 0

    def audit_record(self, action: str, model: str | None, frm: str | None, to: str | None, result: str,
               details: dict[str, Any], *, started: float | None = None) -> None:
        """``started``: ``time.monotonic()`` when the operation began (the record's ``duration_s``)."""
        audit.record(self.catalog(), self.layout.audit_log, action, model, frm, to, result, details,
                     duration=None if started is None else time.monotonic() - started)

    @contextlib.contextmanager
    def _recording_failure(self, action: str, model: str, frm: str | None, to: str | None) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        except (AirlockError, OSError, KeyboardInterrupt) as exc:
            result = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            with contextlib.suppress(Exception, KeyboardInterrupt):
                self.audit_record(action, model, frm, to, result,
                            {"error": type(exc).__name__, "message": str(exc)}, started=started)
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                raise DiskSpaceError(f"{self.layout.repo}: no space left on device during {action} "
                                     f"({exc})", path=str(self.layout.repo),
                                     rule="disk-space-enospc") from exc
            raise

    def record_failure(self, action: str, model: str | None, exc: BaseException) -> None:
        """Record an operation refused before it started (e.g. a plan the CLI could not make), or
        one stopped on its way (``interrupted`` for Ctrl-C)."""
        if not self.layout.catalog.exists():
            return  # no repository: nothing to protect, nowhere to record
        result = "interrupted" if getattr(exc, "rule", None) == "interrupted" else "failed"
        with self._mutating(recover=False):
            self.audit_record(action, model, None, None, result,
                        {"error": type(exc).__name__, "message": str(exc)})

    def audit_head(self) -> audit.AuditHead | None:
        raw = self.catalog().get_meta("audit_head") if self.layout.catalog.exists() else None
        return audit.parse_head(raw)

    def link_target(self, model: str) -> str | None:
        return self.layout.link_target(model)

    def _present(self, row: VersionRow | None) -> bool:
        return bool(row and row.state in PRESENT and self.layout.version_dir(row.model, row.version).is_dir())

    # ------------------------------------------------------------------------------------ recovery
    def recover(self) -> list[str]:
        """Bring disk and catalog back to a consistent state after a crash (caller holds the lock);
        see ``airlock.repo.recover``."""
        return recover(self.layout, self.catalog())

    def recover_now(self) -> list[str]:
        """Crash recovery on its own, under the lock (what every mutating operation starts with): so
        a rollback after a killed apply plans from the recovered state and leaves no leftovers, even
        when the version it goes back to is still the active one."""
        with self._mutating(recover=False):
            return self.recover()

    # ------------------------------------------------------------------------------------ planning
    def _before(self, model: str) -> dict[str, Any]:
        cat = self.catalog()
        active, prev = cat.in_state(model, "active"), cat.in_state(model, "previous")
        return {"active": active.version if active else None, "previous": prev.version if prev else None}

    def _enc(self, ref: KeyRef | str | None, keys: ProviderRegistry | None, what: str) -> Encryption | None:
        return resolve(ref, keys or self.keys, what)

    def _link_candidates(self, model: str, encryption: str | None = None) -> dict[str, str]:
        """sha256 -> "<version>/<relpath>" of a file of a present version that can be hard-linked:
        only from versions stored the same way (plaintext, or encrypted under the same key ref), so
        a linked file is byte-identical to what this install would store in its place."""
        out: dict[str, str] = {}
        cat = self.catalog()
        for row in reversed(cat.versions(model, with_files=True)):
            if not self._present(row) or row.encryption != encryption:
                continue
            for rel, f in row.files.items():
                out.setdefault(f.sha256, f"{row.version}/{rel}")
        return out

    def _fs_block(self, model: str) -> int:
        p = self.layout.model_dir(model)
        while not p.exists():
            p = p.parent
        return os.statvfs(p).f_frsize or 4096

    def _existing(self, model: str, version: str, expected: Expected) -> tuple[bool, VersionRow | None]:
        """(already installed with identical content?, row). Different content is refused."""
        row = self.catalog().version(model, version)
        if not self._present(row):
            return False, None
        assert row is not None
        have = {r: (f.size, f.sha256) for r, f in row.files.items()}
        if have != expected:
            diff = sorted(set(have.items()) ^ set(expected.items()))
            raise RepositoryError(f"{self.layout.version_dir(model, version)}: version {version} of {model} "
                                  f"is already installed with different content (first difference: "
                                  f"{diff[0][0]}); a version's content never changes",
                                  path=str(self.layout.version_dir(model, version)), rule="version-content")
        return True, row

    def plan_install(self, model: str, version: str, src_dir: Path, *,
                     target_files: dict[str, dict[str, Any]] | None = None, activate: bool = True,
                     description: str = "", dependencies: dict[str, str] | None = None,
                     bundle_id: str | None = None, manifest_sha256: str | None = None,
                     sequence: int | None = None, progress: Progress = no_progress,
                     encrypt: KeyRef | str | None = None, keys: ProviderRegistry | None = None) -> Plan:
        """What installing ``src_dir`` as ``model`` ``version`` would do (stored encrypted under
        ``encrypt``, a ``provider:key_id`` reference, when given). Writes nothing."""
        SemVer.parse(version)
        src_dir = Path(src_dir)
        enc = self._enc(encrypt, keys, str(self.layout.version_dir(model, version)))
        expected = (normalise_expected(target_files) if target_files is not None
                    else scan_source(src_dir, progress))
        args = {"model": model, "version": version, "src_dir": str(src_dir), "expected": expected,
                "activate": activate, "description": description, "dependencies": dependencies or {},
                "bundle_id": bundle_id, "manifest_sha256": manifest_sha256, "sequence": sequence,
                "encrypt": str(enc) if enc else None}
        before = self._before(model) if self.layout.catalog.exists() else {"active": None, "previous": None}
        has_cat = self.layout.catalog.exists()
        exists, _row = self._existing(model, version, expected) if has_cat else (False, None)
        after = dict(before)
        if exists:
            changed = activate and before["active"] != version
            if changed:
                after = {"active": version, "previous": before["active"]}
            return Plan("install", model, version, changed, before, after, args=args,
                        notes=["version already installed with identical content"])
        has_cat = self.layout.catalog.exists()
        cands = self._link_candidates(model, str(enc) if enc else None) if has_cat else {}
        block = self._fs_block(model)
        files: list[FileAction] = []
        need = linked = 0
        for rel, (size, sha) in expected.items():
            if sha in cands:
                files.append(FileAction(rel, size, sha, "link", cands[sha]))
                linked += size
            else:
                files.append(FileAction(rel, size, sha, "encrypt" if enc else "copy"))
                need += disk_bytes(size, block)
        if activate:
            after = {"active": version, "previous": before["active"]}
        return Plan("install", model, version, True, before, after, files, need, linked,
                    free_bytes(self.layout.model_dir(model)), args=args)

    def plan_update(self, model: str, delta_path: Path, *,
                    target_files: dict[str, dict[str, Any]] | None = None, activate: bool = True,
                    description: str = "", dependencies: dict[str, str] | None = None,
                    bundle_id: str | None = None, manifest_sha256: str | None = None,
                    sequence: int | None = None, encrypt: KeyRef | str | None = None,
                    keys: ProviderRegistry | None = None) -> Plan:
        """What applying ``delta_path`` to the installed source version would do. Writes nothing.
        The result is stored encrypted under ``encrypt``, else under the source's key ref if the
        source version is encrypted, else in plaintext."""
        from airlock.delta import read_delta_header

        delta_path = Path(delta_path)
        h = read_delta_header(delta_path)
        SemVer.parse(h.to_version)
        expected = {rel: (i.size, i.sha256) for rel, i in sorted(h.target_files.items())}
        if target_files is not None and normalise_expected(target_files) != expected:
            raise IntegrityError(f"{delta_path}: the delta's target hashes differ from the signed manifest's "
                                 f"target_files for {model} {h.to_version}", path=str(delta_path),
                                 rule="delta-target-hashes")
        args = {"model": model, "delta_path": str(delta_path), "expected": expected, "activate": activate,
                "description": description, "dependencies": dependencies or {}, "bundle_id": bundle_id,
                "manifest_sha256": manifest_sha256, "sequence": sequence,
                "from_version": h.from_version, "version": h.to_version}
        has_cat = self.layout.catalog.exists()
        before = self._before(model) if has_cat else {"active": None, "previous": None}
        exists, _ = self._existing(model, h.to_version, expected) if has_cat else (False, None)
        if exists:
            changed = activate and before["active"] != h.to_version
            after = {"active": h.to_version, "previous": before["active"]} if changed else dict(before)
            return Plan("update", model, h.to_version, changed, before, after, args=args,
                        notes=["version already installed with identical content"])
        src = self.catalog().version(model, h.from_version) if has_cat else None
        if not self._present(src):
            raise RepositoryError(f"{delta_path}: the delta updates {model} {h.from_version}, which is not "
                                  f"installed here", path=str(delta_path), rule="delta-source-version")
        assert src is not None
        enc = self._enc(encrypt or src.encryption, keys, str(self.layout.version_dir(model, h.to_version)))
        if src.encryption is not None:
            self._enc(src.encryption, keys, str(self.layout.version_dir(model, h.from_version)))
        args.update(encrypt=str(enc) if enc else None, source_encryption=src.encryption)
        # an encrypted side means every file is written anew (plaintext only in a tmpfs workspace)
        src_by_sha = {} if enc or src.encryption else {i.sha256: rel for rel, i in h.source_files.items()}
        block = self._fs_block(model)
        files: list[FileAction] = []
        need = linked = 0
        for rel, (size, sha) in expected.items():
            if sha in src_by_sha:
                files.append(FileAction(rel, size, sha, "link", f"{h.from_version}/{src_by_sha[sha]}"))
                linked += size
            else:
                files.append(FileAction(rel, size, sha, "delta+encrypt" if enc else "delta"))
                need += disk_bytes(size, block)
        kept = self.layout.kept_delta(model, h.from_version, h.to_version)
        if not kept.exists():
            need += disk_bytes(delta_path.stat().st_size, block)
        after = {"active": h.to_version, "previous": before["active"]} if activate else dict(before)
        return Plan("update", model, h.to_version, True, before, after, files, need, linked,
                    free_bytes(self.layout.model_dir(model)), args=args,
                    notes=[f"delta {h.from_version} -> {h.to_version} kept in {kept.parent} for rollback"])

    def _require_catalog(self) -> Catalog:
        if not self.layout.catalog.exists():
            raise RepositoryError(f"{self.layout.repo}: no model repository here (nothing installed yet)",
                                  path=str(self.layout.repo), rule="repository-missing")
        return self.catalog()

    def plan_activate(self, model: str, version: str, *, action: str = "activate") -> Plan:
        SemVer.parse(version)
        self._require_catalog()
        row = self.catalog().version(model, version, with_files=False)
        if not self._present(row):
            raise RepositoryError(f"{self.layout.version_dir(model, version)}: {model} {version} is not "
                                  "installed", path=str(self.layout.version_dir(model, version)),
                                  rule="version-missing")
        before = self._before(model)
        changed = before["active"] != version or self.link_target(model) != version
        after = {"active": version, "previous": before["active"]} if changed else dict(before)
        return Plan(action, model, version, changed, before, after, args={"model": model, "version": version})

    def plan_rollback(self, model: str, to: str | None = None) -> Plan:
        cat = self._require_catalog()
        before = self._before(model)
        if to is None:
            if before["previous"] is None:
                raise RepositoryError(f"{self.layout.model_dir(model)}: {model} has no previous version to "
                                      "roll back to (use --to VERSION)",
                                      path=str(self.layout.model_dir(model)), rule="rollback-no-previous")
            to = str(before["previous"])
        SemVer.parse(to)
        row = cat.version(model, to)
        if row is None:
            raise RepositoryError(f"{self.layout.model_dir(model)}: {model} {to} was never installed here",
                                  path=str(self.layout.model_dir(model)), rule="version-missing")
        args: dict[str, Any] = {"model": model, "version": to, "rebuild": None}
        after = {"active": to, "previous": before["previous"] if before["previous"] != to else None}
        plan = Plan("rollback", model, to, before["active"] != to, before, after, args=args)
        if self._present(row):
            return plan
        from airlock.delta import ChainStep, find_chain_steps, read_delta_header

        if before["active"] is None:
            raise RepositoryError(f"{model} {to} was pruned and no version is active to rebuild it from",
                                  rule="rollback-no-source")
        from airlock.crypto.tree import delta_view

        pk = self.layout.model_packages(model)
        with delta_view(pk, self.keys) as view:  # encrypted kept deltas: read in a tmpfs workspace
            steps = [ChainStep(pk / s.path.name, s.reverse, s.from_version, s.to_version)
                     for s in find_chain_steps(view, str(before["active"]), to)]
            last = read_delta_header(view / steps[-1].path.name)
        out = last.source_files if steps[-1].reverse else last.target_files
        block = self._fs_block(model)
        active_sha = {f.sha256 for f in (cat.version(model, str(before["active"])) or row).files.values()}
        for rel, info in sorted(out.items()):
            how = "link" if info.sha256 in active_sha else "delta"
            plan.files.append(FileAction(rel, info.size, info.sha256, how,
                                         f"{before['active']}/..." if how == "link" else None))
            if how == "delta":
                plan.bytes_needed += disk_bytes(info.size, block)
            else:
                plan.bytes_linked += info.size
        plan.bytes_free = free_bytes(self.layout.model_dir(model))
        plan.changed = True
        args["rebuild"] = [(str(s.path), s.reverse) for s in steps]
        plan.notes.append(f"{to} was pruned: rebuilt from {len(steps)} delta(s) "
                          f"({', '.join(s.path.name + (' reversed' if s.reverse else '') for s in steps)})")
        return plan

    def plan_prune(self, model: str, keep: int = 2) -> Plan:
        if keep < 1:
            raise RepositoryError(f"keep must be at least 1, not {keep}", rule="prune-keep")
        self._require_catalog()
        before = self._before(model)
        rows = [r for r in self.catalog().versions(model) if self._present(r)]
        protected = {v for v in (before["active"], before["previous"]) if v}
        kept = set(protected)
        for r in sorted(rows, key=lambda r: (r.state != "failed", version_key(r.version)), reverse=True):
            if len(kept) >= keep:
                break
            kept.add(r.version)
        remove = sorted((r.version for r in rows if r.version not in kept), key=version_key)
        return Plan("prune", model, None, bool(remove), before, before,
                    remove=[str(self.layout.version_dir(model, v)) for v in remove],
                    args={"model": model, "remove": remove, "keep": keep},
                    notes=[f"keeping {', '.join(sorted(kept, key=version_key))}"] if rows else [])

    # ------------------------------------------------------------------------------------ execution
    def _preflight(self, plan: Plan, where: Path) -> None:
        if settings.skip_space_preflight():
            return
        free = free_bytes(where)
        plan.bytes_free = free
        if plan.bytes_needed > free:
            raise DiskSpaceError(f"{where}: {plan.action} of {plan.model} {plan.version} needs "
                                 f"{plan.bytes_needed} bytes ({plan.bytes_linked} more hard-linked), only "
                                 f"{free} bytes are free", path=str(where), rule="disk-space-preflight")

    def execute(self, plan: Plan, progress: Progress = no_progress) -> Plan:
        """Carry out a plan. Under the lock it is re-planned first, so a stale plan cannot do harm."""
        a = plan.args
        if plan.action == "install":
            return self.install_version(a["model"], a["version"], Path(a["src_dir"]),
                                        target_files={r: {"size": s, "sha256": h} for r, (s, h) in
                                                      a["expected"].items()},
                                        activate=a["activate"], description=a["description"],
                                        dependencies=a["dependencies"], bundle_id=a["bundle_id"],
                                        manifest_sha256=a["manifest_sha256"], sequence=a["sequence"],
                                        progress=progress, encrypt=a.get("encrypt"))
        if plan.action == "update":
            return self.update_from_delta(a["model"], Path(a["delta_path"]), activate=a["activate"],
                                          description=a["description"], dependencies=a["dependencies"],
                                          bundle_id=a["bundle_id"], manifest_sha256=a["manifest_sha256"],
                                          sequence=a["sequence"], progress=progress, encrypt=a.get("encrypt"))
        if plan.action == "activate":
            return self.activate(a["model"], a["version"])
        if plan.action == "rollback":
            return self.rollback(a["model"], to=a["version"], progress=progress)
        if plan.action == "prune":
            return self.prune(a["model"], keep=a["keep"])
        raise RepositoryError(f"unknown plan action {plan.action!r}", rule="plan")

    def _register(self, cat: Catalog, plan: Plan, tree: Path, final: Path, source: str,
                  enc: Encryption | None = None) -> None:
        """Seal, rename into place, record in the catalog (the crash-safe heart of install/update)."""
        a = plan.args
        problem = tree_matches(tree, a["expected"], encrypted=enc is not None)
        if problem:
            raise IntegrityError(f"{tree}: staged version does not match the expected files: {problem}",
                                 path=str(tree), rule="install-tree")
        report = check_loadable(tree, use_torch=self.check_torch, keys=enc.keys if enc else None,
                                model=plan.model)
        plan.notes.append("loadable: " + ", ".join(report.checks or ["no safetensors"]))
        uid, gid = self._ids()
        seal(tree, uid, gid)
        fault_point(f"repo.{plan.action}.before-rename")
        os.rename(tree, final)
        fsync_dir(final.parent)
        fault_point(f"repo.{plan.action}.after-rename")
        with cat.transaction():
            cat.add_version(plan.model, str(plan.version), str(final), a["expected"], state="staged",
                            description=a["description"], dependencies=a["dependencies"],
                            bundle_id=a["bundle_id"], manifest_sha256=a["manifest_sha256"],
                            sequence=a["sequence"], source=source, encryption=str(enc) if enc else None)
        fault_point(f"repo.{plan.action}.after-catalog")

    def install_version(self, model: str, version: str, src_dir: Path, *,
                        target_files: dict[str, dict[str, Any]] | None = None, activate: bool = True,
                        description: str = "", dependencies: dict[str, str] | None = None,
                        bundle_id: str | None = None, manifest_sha256: str | None = None,
                        sequence: int | None = None, progress: Progress = no_progress,
                        encrypt: KeyRef | str | None = None, keys: ProviderRegistry | None = None,
                        staging: dict[str, Any] | None = None) -> Plan:
        """Install a full version from a directory (hashes from ``target_files`` when given, e.g. the
        signed manifest's; else hashed from the source). ``encrypt`` (``provider:key_id``): store
        every file encrypted, the plaintext hashed while encrypting; the catalog keeps plaintext
        hashes and the key ref. ``staging``: the bundle's staging figures, kept in the audit record."""
        started = time.monotonic()
        with self._mutating() as cat, self._recording_failure("install", model, None, version):
            plan = self.plan_install(model, version, src_dir, target_files=target_files, activate=activate,
                                     description=description, dependencies=dependencies, bundle_id=bundle_id,
                                     manifest_sha256=manifest_sha256, sequence=sequence, encrypt=encrypt,
                                     keys=keys)
            enc = self._enc(plan.args["encrypt"], keys, str(self.layout.version_dir(model, version)))
            if plan.files:
                final = self.layout.version_dir(model, version)
                self.layout.model_dir(model).mkdir(parents=True, exist_ok=True, mode=0o755)
                self._preflight(plan, final.parent)
                with staging_dir(final, prefix=STAGING_PREFIX) as work:
                    try:
                        stats = build_tree(work / "tree", Path(src_dir), plan.files,
                                           self.layout.model_dir(model), progress, enc)
                    except OSError as exc:
                        if exc.errno == errno.ENOSPC:
                            raise enospc(exc, final, plan.bytes_needed, plan.bytes_free or 0) from exc
                        raise
                    self._register(cat, plan, work / "tree", final, str(src_dir), enc)
                self.audit_record("install", model, plan.before["active"], version, "ok",
                            {"files": len(plan.files), "copied": stats.copied, "linked": stats.linked,
                             "bytes_copied": stats.bytes_copied, "bundle_id": bundle_id,
                             "encryption": plan.args["encrypt"], **({"staging": staging} if staging else {})},
                                  started=started)
            if activate and plan.changed:
                self.activate(model, version)
            return plan

    def _keep_delta(self, model: str, delta_path: Path, frm: str, to: str,
                    enc: Encryption | None = None, signed_sha256: str | None = None) -> Path:
        """Copy the delta into ``update_packages/<model>/`` (atomically) so rollback can reverse it;
        for an encrypted version (``enc``) the kept copy is stored encrypted under the same key: it
        holds the version's tensors (docs/security.md). ``signed_sha256``: the delta is a staged
        copy already hashed against this signed hash, so it is not hashed again; a plaintext keep is
        then a hard link (no byte read; a copy, hashed while copying, across file systems)."""
        from airlock.repo.encryption import keep_encrypted, kept_matches

        kept = self.layout.kept_delta(model, frm, to)
        kept.parent.mkdir(parents=True, exist_ok=True)
        want = signed_sha256 or sha256_file(delta_path)
        if kept.exists() and kept_matches(kept, want, enc):
            return kept
        tmp = kept.parent / f"{KEEP_PREFIX}{uuid.uuid4().hex}"
        linked = False
        if enc is None and signed_sha256 is not None:
            try:
                os.link(delta_path, tmp)
                linked = True
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                    raise
        if linked:
            got = want
        elif enc is not None:
            got = keep_encrypted(delta_path, tmp, enc, model, kept.name)
        else:
            with open(delta_path, "rb") as fi, open(tmp, "wb") as fo:
                got = copy_hashing(fi, fo).sha256
                fo.flush()
                os.fsync(fo.fileno())
        if got != want:
            tmp.unlink()
            raise IntegrityError(f"{delta_path}: changed while it was being kept", path=str(delta_path),
                                 rule="delta-changed")
        os.chmod(tmp, 0o444)
        os.replace(tmp, kept)
        fsync_dir(kept.parent)
        return kept

    def update_from_delta(self, model: str, delta_path: Path, *,
                          target_files: dict[str, dict[str, Any]] | None = None, activate: bool = True,
                          description: str = "", dependencies: dict[str, str] | None = None,
                          bundle_id: str | None = None, manifest_sha256: str | None = None,
                          sequence: int | None = None, progress: Progress = no_progress,
                          encrypt: KeyRef | str | None = None, keys: ProviderRegistry | None = None,
                          staging: dict[str, Any] | None = None, signed_sha256: str | None = None) -> Plan:
        """Build the delta's target version from the installed source version; unchanged files are
        hard links to the source's; the delta is kept for rollback. An encrypted source (or
        ``encrypt``) goes through ``apply_chain_encrypted``: plaintext only in a tmpfs workspace,
        the result encrypted under ``encrypt`` or the source's key ref. ``signed_sha256``: the delta
        is a staged copy hashed against the signed manifest (``install_from_bundle``): it is kept
        without hashing it again and applied without the records pre-pass (every record used is
        still checked against its own hash)."""
        from airlock.crypto.tree import apply_chain_encrypted
        from airlock.delta import ChainStep, apply_delta

        started = time.monotonic()
        with self._mutating() as cat:
            with self._recording_failure("update", model, None, None):
                plan = self.plan_update(model, delta_path, target_files=target_files, activate=activate,
                                        description=description, dependencies=dependencies,
                                        bundle_id=bundle_id, manifest_sha256=manifest_sha256,
                                        sequence=sequence, encrypt=encrypt, keys=keys)
            frm, to = plan.args["from_version"], str(plan.version)
            with self._recording_failure("update", model, frm, to):
                if plan.files:
                    final = self.layout.version_dir(model, to)
                    self._preflight(plan, final.parent)
                    src_enc = plan.args.get("source_encryption")
                    enc = self._enc(plan.args.get("encrypt"), keys, str(final))
                    src_keys = self._enc(src_enc, keys, str(final))
                    kept = self._keep_delta(model, Path(delta_path), frm, to, enc or src_keys, signed_sha256)
                    fault_point("repo.update.after-keep-delta")
                    details: dict[str, Any] = {"delta": kept.name, "bundle_id": bundle_id,
                                               "encryption": str(enc) if enc else None,
                                               **({"staging": staging} if staging else {})}
                    with staging_dir(final, prefix=STAGING_PREFIX) as work:
                        if enc or src_enc:
                            apply_chain_encrypted(
                                self.layout.version_dir(model, frm), [ChainStep(kept, False, frm, to)],
                                work / "tree", keys or self.keys,
                                src_encrypted=src_enc is not None,
                                out_key=(enc.provider, enc.key_id) if enc else None,
                                expect=plan.args["expected"], model=model,
                                src_expect=self._catalog_files(cat, model, frm))
                            details["files"] = len(plan.args["expected"])
                        else:
                            summary = apply_delta(self.layout.version_dir(model, frm), kept, work / "tree",
                                                  link_unchanged=True, progress=progress,
                                                  records_checked=signed_sha256 is not None)
                            details.update(files=summary.files, linked=summary.linked,
                                           bytes_written=summary.bytes_written)
                        self._register(cat, plan, work / "tree", final, f"delta:{kept.name}", enc)
                    self.audit_record("update", model, frm, to, "ok", details, started=started)
            if activate and plan.changed:
                self.activate(model, to)
            return plan

    def activate(self, model: str, version: str, *, action: str = "activate",
                 mark_old: str = "previous", started: float | None = None) -> Plan:
        """Atomic symlink swap to ``version``; the version it replaces becomes ``mark_old``.
        ``started``: when the operation began (a rollback's rebuild counts in its duration)."""
        started = time.monotonic() if started is None else started
        with self._mutating() as cat, self._recording_failure(action, model, None, version):
            plan = self.plan_activate(model, version, action=action)
            if not plan.changed:
                return plan
            old = plan.before["active"]
            # the intent is recorded first, so recovery finishes a swap the way it was meant
            intent = json.dumps({"version": version, "old": old, "mark_old": mark_old})
            with cat.transaction(f"repo.{action}.intent-commit"):
                cat.set_meta(f"pending-activation:{model}", intent)
            fault_point(f"repo.{action}.before-swap")
            atomic_symlink(version, self.layout.current(model))
            fault_point(f"repo.{action}.after-swap")
            with cat.transaction():
                cat.apply_activation(model, version, old, mark_old)
            self.audit_record(action, model, old, version, "ok", {"marked": {old: mark_old} if old else {}},
                              started=started)
            return plan

    def rollback(self, model: str, to: str | None = None, *, progress: Progress = no_progress,
                 keys: ProviderRegistry | None = None, failed: bool = False) -> Plan:
        """Back to the previous good version (or ``to``): a symlink swap, after rebuilding the version
        from the kept deltas if it was pruned (in the stored form recorded for it: encrypted under
        its key ref or plaintext). The version rolled back from is marked ``rolled_back`` (an operator's
        decision: still good, ``activate`` rolls forward), or ``failed`` when ``failed`` (the automatic
        rollback after a failed apply or health gate)."""
        from airlock.crypto import is_encrypted
        from airlock.crypto.tree import apply_chain_encrypted
        from airlock.delta import ChainStep, apply_chain

        started = time.monotonic()
        with self._mutating() as cat:
            with self._recording_failure("rollback", model, None, to):
                plan = self.plan_rollback(model, to)
            target = str(plan.version)
            with self._recording_failure("rollback", model, plan.before["active"], target):
                if plan.args["rebuild"]:
                    self._preflight(plan, self.layout.model_dir(model))
                    steps = [ChainStep(Path(p), rev, "", "") for p, rev in plan.args["rebuild"]]
                    row = cat.version(model, target)
                    active = cat.version(model, str(plan.before["active"]), with_files=False)
                    assert row is not None and active is not None
                    final = self.layout.version_dir(model, target)
                    enc = self._enc(row.encryption, keys, str(final))
                    src_enc = self._enc(active.encryption, keys, str(final))
                    expected = {r: (f.size, f.sha256) for r, f in row.files.items()}
                    src_dir = self.layout.version_dir(model, active.version)
                    sealed = any(is_encrypted(s.path) for s in steps)  # kept deltas of encrypted versions
                    with staging_dir(final, prefix=STAGING_PREFIX) as work:
                        if enc or src_enc or sealed:
                            apply_chain_encrypted(src_dir, steps, work / "tree", keys or self.keys,
                                                  src_encrypted=src_enc is not None,
                                                  out_key=(enc.provider, enc.key_id) if enc else None,
                                                  expect=expected, model=model,
                                                  src_expect=self._catalog_files(cat, model, active.version))
                        else:
                            apply_chain(src_dir, steps, work / "tree", link_unchanged=True, progress=progress)
                        plan.args.update(expected=expected,
                                         description=row.description, dependencies=row.dependencies,
                                         bundle_id=row.bundle_id, manifest_sha256=row.manifest_sha256,
                                         sequence=row.sequence)
                        self._verify_rebuilt(work / "tree", expected, enc)
                        self._register(cat, plan, work / "tree", final, "rebuilt:reverse-delta", enc)
                else:  # a symlink swap: an encrypted target's files must still be in their places
                    from airlock.repo.encryption import check_stored_headers

                    check_stored_headers(self.layout.version_dir(model, target), cat.version(model, target))
            self.activate(model, target, action="rollback", mark_old="failed" if failed else "rolled_back",
                          started=started)
            return plan

    @staticmethod
    def _catalog_files(cat: Catalog, model: str, version: str) -> Expected | None:
        """The catalog's plaintext (size, sha256) per file of a version: what decrypted plaintext must be."""
        row = cat.version(model, version)
        return {r: (f.size, f.sha256) for r, f in row.files.items()} if row is not None else None

    @staticmethod
    def _verify_rebuilt(tree: Path, expected: Expected, enc: Encryption | None = None) -> None:
        """The rebuilt files must be exactly the ones recorded when the version was first installed."""
        from airlock.repo.encryption import stored_sha256

        problem = tree_matches(tree, expected, encrypted=enc is not None)
        if problem is None:
            for rel, (_size, sha) in expected.items():
                if stored_sha256(tree / rel, enc.keys if enc else None) != sha:
                    problem = f"{rel} hash differs"
                    break
        if problem:
            raise IntegrityError(f"{tree}: rebuilt version differs from its catalog record: {problem}",
                                 path=str(tree), rule="rollback-rebuild")

    def prune(self, model: str, keep: int = 2) -> Plan:
        """Remove versions beyond the ``keep`` newest; never the active or the previous-good one.
        Catalog rows (with file hashes) stay, state ``pruned``: rollback can rebuild from deltas."""
        with self._mutating() as cat, self._recording_failure("prune", model, None, None):
            plan = self.plan_prune(model, keep)
            for version in plan.args["remove"]:
                vdir = self.layout.version_dir(model, version)
                trash = vdir.parent / f"{TRASH_PREFIX}{version}-{uuid.uuid4().hex[:8]}"
                os.rename(vdir, trash)
                fsync_dir(vdir.parent)
                fault_point("repo.prune.after-trash")
                with cat.transaction():
                    cat.set_state(model, version, "pruned")
                fault_point("repo.prune.after-catalog")
                rmtree_writable(trash)
            if plan.changed:
                self.audit_record("prune", model, None, None, "ok",
                                  {"removed": plan.args["remove"], "keep": keep})
            return plan

    # ------------------------------------------------------------------------------------ bundles
    def plan_from_bundle(self, staged: StagedBundle, *, activate: bool = True,
                         encrypt: KeyRef | str | None = None,
                         keys: ProviderRegistry | None = None) -> list[Plan]:
        """Check-mode view of ``install_from_bundle``: one plan per model entry; writes nothing."""
        return self.plan_bundle(staged.manifest, staged.path, activate=activate, encrypt=encrypt, keys=keys)

    def plan_bundle(self, m: Manifest, root: Path, *, activate: bool = True,
                    encrypt: KeyRef | str | None = None, keys: ProviderRegistry | None = None) -> list[Plan]:
        """One plan per model entry of the signed manifest ``m`` whose payloads are under ``root`` (a
        stage, or the source itself in check mode); writes nothing."""
        from airlock.bundle.verify import check_sequence

        check_sequence(m, self.installed_sequence(), str(root))
        plans = []
        for me in m.models:
            if me.kind == "full":
                plans.append(self.plan_install(me.name, me.version, root / me.path,
                                               target_files=me.target_files, activate=activate,
                                               encrypt=encrypt, keys=keys))
            else:
                plans.append(self.plan_update(me.name, root / me.path, target_files=me.target_files,
                                              activate=activate, encrypt=encrypt, keys=keys))
        return plans

    def install_from_bundle(self, staged: StagedBundle, *, activate: bool = True,
                            progress: Progress = no_progress, encrypt: KeyRef | str | None = None,
                            keys: ProviderRegistry | None = None) -> list[Plan]:
        """Install every model of a staged (verified) bundle: full versions and deltas, refusing a
        sequence below the installed one (checked here, under the lock) unless the bundle is a signed
        rollback. The manifest and signature kept are the bytes the stage verified (``staged.signed``),
        never read again. ``encrypt``: store the installed versions encrypted under this key ref (the
        manifest's hashes are plaintext)."""
        from airlock.bundle import MANIFEST_NAME, SIGNATURE_NAME
        from airlock.bundle.verify import check_sequence

        m = staged.manifest
        with self._mutating() as cat:
            installed = self.installed_sequence()
            check_sequence(m, installed, str(staged.path))
            record = self.layout.bundle_record(m.bundle_id)
            kept_before = (record / MANIFEST_NAME).exists()
            floor_before = cat.get_meta("sequence")
            msha = hashlib.sha256(staged.signed.data).hexdigest()
            # The manifest is kept before any version refers to it (a crash mid-install leaves no version
            # whose provenance is missing); it is the anti-downgrade floor, so a bundle that installed
            # nothing takes it back out below: a refused bundle must not raise the floor.
            atomic_write_bytes(record / MANIFEST_NAME, staged.signed.data, 0o444)
            atomic_write_bytes(record / SIGNATURE_NAME, staged.signed.signature, 0o444)
            with cat.transaction():
                cat.set_meta("sequence", str(max(m.sequence, installed or 0)))
            plans: list[Plan] = []
            try:
                for me in m.models:
                    common: dict[str, Any] = {
                        "target_files": me.target_files, "activate": activate, "description": me.description,
                        "dependencies": dict(me.dependencies), "bundle_id": m.bundle_id,
                        "manifest_sha256": msha, "sequence": m.sequence, "progress": progress,
                        "encrypt": encrypt, "keys": keys, "staging": staged.counters.audit()}
                    if me.kind == "full":
                        plans.append(self.install_version(me.name, me.version, staged.path / me.path,
                                                          **common))
                    else:
                        p = self.update_from_delta(me.name, staged.path / me.path, **common,
                                                   signed_sha256=m.files[me.path].sha256)
                        if p.version != me.version:
                            raise IntegrityError(f"{me.path}: delta leads to {p.version}, manifest says "
                                                 f"{me.version}", path=me.path, rule="delta-version")
                        plans.append(p)
            except BaseException:
                if not plans and not kept_before:
                    self._forget_bundle(cat, record, floor_before)
                raise
            return plans

    @staticmethod
    def _forget_bundle(cat: Catalog, record: Path, floor: str | None) -> None:
        """Undo keeping a bundle's manifest when none of its models was installed (the caller holds the
        lock): the record goes and the catalog's floor is what it was."""
        with contextlib.suppress(FileNotFoundError):
            for f in record.iterdir():
                f.unlink()
            record.rmdir()
        with cat.transaction():
            if floor is None:
                cat.del_meta("sequence")
            else:
                cat.set_meta("sequence", floor)

    # ------------------------------------------------------------------------------------ queries
    def installed_sequence(self) -> int | None:
        """The anti-downgrade floor: the highest sequence of the signed manifests kept on this host,
        or the catalog's if higher. A lowered catalog value never lowers it (the catalog is an index,
        not an anchor); verify reports the disagreement as drift (rule ``sequence``)."""
        from airlock.repo.verify import highest_signed_sequence

        raw = self.catalog().get_meta("sequence") if self.layout.catalog.exists() else None
        known = [int(raw)] if raw is not None else []
        signed = highest_signed_sequence(self.layout)
        return max([*known, signed]) if signed is not None else (known[0] if known else None)

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Catalog]:
        """Verify's view: the catalog opened read-only (no migration, no journal), the reader's shared
        lock (writers wait, nothing is created or written), no recovery: drift is reported as found."""
        if not self.layout.catalog.exists():
            raise RepositoryError(f"{self.layout.repo}: no model repository here (nothing installed yet)",
                                  path=str(self.layout.repo), rule="repository-missing")
        with repo_lock(self.layout.lock, self.lock_timeout, shared=True):
            try:
                cat = Catalog(self.layout.catalog, readonly=True)
            except sqlite3.DatabaseError as exc:
                raise self._unreadable(exc) from exc
            try:
                yield cat
            except sqlite3.DatabaseError as exc:  # e.g. a crashed write's journal (only a writer rolls back)
                raise self._unreadable(exc) from exc
            finally:
                cat.close()

    def _unreadable(self, exc: Exception) -> RepositoryError:
        return RepositoryError(f"{self.layout.catalog}: the catalog cannot be read read-only ({exc}); if a "
                               "write was interrupted, the next mutating command recovers it",
                               path=str(self.layout.catalog), rule="catalog-read")

    def verify(self, model: str, version: str | None = None, *, keys: ProviderRegistry | None = None,
               trust: Trust | None = None, progress: Progress = no_progress) -> dict[str, Any]:
        """Drift report of one model (``airlock.repo.verify.check_model``): hashes against the kept
        signed manifests and the catalog, provenance, modes, owner, extra/missing files, stray
        entries, the current link (plaintext hashes of encrypted versions, decrypted with ``keys``).
        Writes nothing; ``trust`` re-checks the kept manifests' signatures."""
        from airlock.repo.verify import signed_index

        with self._reading() as cat:
            self._require_keys(cat, model, version, keys)
            uid, gid = self._ids()
            index = signed_index(self.layout, trust)
            out = check_model(self.layout, cat, model, version, uid=uid, gid=gid, keys=keys or self.keys,
                              index=index, progress=progress)
            out["drift"][:0] = [d.as_dict() for d in index.drift]
            out["ok"] = not out["drift"]
            out["signatures_checked"] = index.signatures_checked
            return out

    def compliance(self, models: list[str] | None = None, *, trust: Trust | None = None,
                   anchor: audit.AuditHead | None = None, expected: dict[str, str | None] | None = None,
                   loadable: bool = False, keys: ProviderRegistry | None = None) -> dict[str, Any]:
        """The whole repository's compliance report (``airlock.repo.verify.check_repository``):
        every model, repository modes, stray entries, the sequence, the kept manifests' signatures
        (with ``trust``), the audit chain against the catalog's head and the control node's
        ``anchor``, deleted history rows. Writes nothing."""
        with self._reading() as cat:
            for model in models or cat.models():
                if model in cat.models():
                    self._require_keys(cat, model, None, keys)
            uid, gid = self._ids()
            return check_repository(self.layout, cat, models=models, trust=trust, anchor=anchor,
                                    expected=expected, loadable=loadable, uid=uid, gid=gid,
                                    keys=keys or self.keys)

    def _require_keys(self, cat: Catalog, model: str, version: str | None,
                      keys: ProviderRegistry | None) -> None:
        """Refused up front: without keys an encrypted version cannot be checked."""
        for r in cat.versions(model):
            if r.state in PRESENT and (version is None or r.version == version):
                self._enc(r.encryption, keys, str(self.layout.version_dir(model, r.version)))

    def list_models(self) -> list[dict[str, Any]]:
        if not self.layout.catalog.exists():
            return []
        cat = self.catalog()
        out = []
        for model in cat.models():
            rows = cat.versions(model)
            out.append({"model": model, "active": self._before(model)["active"],
                        "previous": self._before(model)["previous"],
                        "versions": [{"version": r.version, "state": r.state} for r in rows]})
        return out

    def show(self, model: str, version: str | None = None) -> dict[str, Any]:
        cat = self._require_catalog()
        if version:
            row = cat.version(model, version)
            if row is None:
                raise RepositoryError(f"{model} {version} is not in the catalog", rule="version-missing")
            return row.as_dict(with_files=True)
        if model not in cat.models():
            raise RepositoryError(f"{model}: no such model in the catalog", rule="model-missing")
        return {"model": model, **self._before(model), "current": self.link_target(model),
                "versions": [r.as_dict() for r in cat.versions(model)]}

    def history(self, model: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        return self.catalog().history(model, limit) if self.layout.catalog.exists() else []

    def state(self) -> dict[str, Any]:
        """JSON-able repository state (for the Ansible _info module). Read-only like verify: the
        catalog opened read-only under the readers' shared lock, no migration, no recovery, not one
        byte written (a writer holding the lock is waited for, other readers are not)."""
        from airlock.receipt.create import host_facts
        from airlock.receipt.model import host_to_dict

        models: dict[str, Any] = {}
        if self.layout.catalog.exists():
            with self._reading() as cat:
                for model in cat.models():
                    rows = cat.versions(model)
                    active, prev = cat.in_state(model, "active"), cat.in_state(model, "previous")
                    models[model] = {"active": active.version if active else None,
                                     "previous": prev.version if prev else None,
                                     "current": self.link_target(model),
                                     "versions": {r.version: r.state for r in rows}}
                    encrypted = {r.version: r.encryption for r in rows if r.encryption}
                    if encrypted:  # version -> key ref of versions stored encrypted
                        models[model]["encrypted"] = encrypted
        facts = host_facts(self)  # the anti-downgrade floor and the audit head, read the same way
        head = facts.audit_head
        return {"root": str(self.root), "repo": str(self.layout.repo), "sequence": facts.bundle_sequence,
                "models": models, "audit_head": {"seq": head[0], "hash": head[1]} if head else None,
                "receipt": host_to_dict(facts)}  # this host's part of a site receipt

    def _catalog_head(self) -> audit.AuditHead | None:
        if not self.layout.catalog.exists():
            return None
        with self._reading() as cat:
            return audit.parse_head(cat.get_meta("audit_head"))

    def audit_report(self, anchor: audit.AuditHead | None = None) -> audit.AuditReport:
        """The chain, against the catalog's head and the control node's ``anchor`` (problems listed,
        not raised); writes nothing."""
        return audit.scan(self.layout.audit_log, self._catalog_head(), anchor)

    def audit_verify(self, anchor: audit.AuditHead | None = None) -> audit.AuditReport:
        """``audit_report``, raising ``AuditError`` (exit 33) on the first problem."""
        return audit.verify(self.layout.audit_log, self._catalog_head(), anchor)


