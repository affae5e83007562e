"""Transactions: plans carried out under the repository lock. Each re-plans first (from the plan's
typed inputs, against the state recovery left), so a stale plan cannot do harm. Write ordering, so
that a kill -9 at any point leaves the previously active version serving and intact:

  stage beside the final dir -> copy/link or apply deltas, hash-check -> loadability check
  -> seal + fsync -> rename into place -> catalog row (one transaction) -> symlink swap
  -> catalog states -> audit
"""

from __future__ import annotations

import errno
import json
import os
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airlock import settings
from airlock.errors import DiskSpaceError, IntegrityError
from airlock.faults import fault_point
from airlock.fsutil import atomic_symlink, free_bytes, fsync_dir, rmtree_writable, staging_dir
from airlock.hashing import copy_hashing, no_progress, sha256_file
from airlock.repo import tier
from airlock.repo.catalog import Catalog, VersionRow
from airlock.repo.encryption import Encryption
from airlock.repo.install import build_tree, enospc, seal, tree_matches
from airlock.repo.layout import KEEP_PREFIX, STAGING_PREFIX, TRASH_PREFIX
from airlock.repo.loadable import check_loadable
from airlock.repo.plan import (
    ActivatePlan,
    Expected,
    InstallPlan,
    Plan,
    Progress,
    Provenance,
    PrunePlan,
    RollbackPlan,
    UpdatePlan,
)
from airlock.repo.planning import Planner, row_expected

if TYPE_CHECKING:
    from airlock.crypto import ProviderRegistry
    from airlock.delta import ChainStep
    from airlock.repo.session import RepoSession


class Transactions:
    """Carries plans out against one repository (``plan.apply(Transactions(repo))``); ``keys``
    (else the session's) open and write encrypted versions."""

    def __init__(self, session: RepoSession, keys: ProviderRegistry | None = None) -> None:
        self.s = session
        self.layout = session.layout
        self.keys = keys
        self.planner = Planner(session, keys)

    def _enc(self, ref: str | None, what: Path) -> Encryption | None:
        return self.s.encryption(ref, self.keys, str(what))

    def _preflight(self, plan: Plan, where: Path) -> None:
        if settings.skip_space_preflight():
            return
        free = free_bytes(where)
        plan.bytes_free = free
        if plan.bytes_needed > free:
            raise DiskSpaceError(f"{where}: {plan.action} of {plan.model} {plan.version} needs "
                                 f"{plan.bytes_needed} bytes ({plan.bytes_linked} more hard-linked), only "
                                 f"{free} bytes are free", path=str(where), rule="disk-space-preflight")

    def _register(self, cat: Catalog, plan: Plan, expected: Expected, provenance: Provenance, tree: Path,
                  final: Path, source: str, enc: Encryption | None = None) -> None:
        """Seal, rename into place, record in the catalog (the crash-safe heart of install/update)."""
        problem = tree_matches(tree, expected, encrypted=enc is not None)
        if problem:
            raise IntegrityError(f"{tree}: staged version does not match the expected files: {problem}",
                                 path=str(tree), rule="install-tree")
        report = check_loadable(tree, use_torch=self.s.check_torch, keys=enc.keys if enc else None,
                                model=plan.model)
        plan.notes.append("loadable: " + ", ".join(report.checks or ["no safetensors"]))
        uid, gid = self.s.ids()
        seal(tree, uid, gid)
        fault_point(f"repo.{plan.action}.before-rename")
        os.rename(tree, final)
        fsync_dir(final.parent)
        fault_point(f"repo.{plan.action}.after-rename")
        with cat.transaction():
            cat.add_version(plan.model, str(plan.version), str(final), expected, state="staged",
                            description=provenance.description, dependencies=provenance.dependencies,
                            bundle_id=provenance.bundle_id, manifest_sha256=provenance.manifest_sha256,
                            sequence=provenance.sequence, source=source, encryption=str(enc) if enc else None)
        fault_point(f"repo.{plan.action}.after-catalog")

    def _materialise(self, cat: Catalog, model: str, src: VersionRow, steps: list[ChainStep], tree: Path, *,
                     enc: Encryption | None, expected: Expected, progress: Progress,
                     records_checked: bool = False) -> dict[str, Any]:
        """Build ``tree`` by applying the delta ``steps`` to the installed version ``src`` (the one
        place the encrypted and plaintext routes part): an encrypted source, result or kept delta
        goes through a tmpfs workspace (``apply_chain_encrypted``), plaintext is applied in place
        with unchanged files hard-linked. Returns the audit figures."""
        from airlock.crypto import is_encrypted
        from airlock.crypto.tree import apply_chain_encrypted
        from airlock.delta import apply_chain, apply_delta

        src_dir = self.layout.version_dir(model, src.version)
        src_enc = self._enc(src.encryption, src_dir)
        if enc or src_enc or any(is_encrypted(s.path) for s in steps):
            apply_chain_encrypted(src_dir, steps, tree, self.keys or self.s.keys,
                                  src_encrypted=src_enc is not None,
                                  out_key=(enc.provider, enc.key_id) if enc else None,
                                  expect=expected, model=model, src_expect=row_expected(src))
            return {"files": len(expected)}
        if len(steps) == 1 and not steps[0].reverse:
            summary = apply_delta(src_dir, steps[0].path, tree, link_unchanged=True, progress=progress,
                                  records_checked=records_checked)
            return {"files": summary.files, "linked": summary.linked, "bytes_written": summary.bytes_written}
        apply_chain(src_dir, steps, tree, link_unchanged=True, progress=progress)
        return {"files": len(expected)}

    # ------------------------------------------------------------------------------------ install
    def install(self, plan: InstallPlan, progress: Progress = no_progress) -> InstallPlan:
        """Install a full version from a directory: every file copied (encrypted under the plan's key
        ref when it has one, the plaintext hashed while encrypting) or hard-linked from an installed
        version with the same content, checked against the expected hashes."""
        started = time.monotonic()
        model, version = plan.model, plan.version
        with self.s.mutating() as cat, self.s.recording_failure("install", model, None, version):
            fresh = self.planner.replan(plan)
            assert isinstance(fresh, InstallPlan)
            plan = fresh
            final = self.layout.version_dir(model, version)
            enc = self._enc(plan.encrypt, final)
            assert plan.expected is not None
            if plan.files:
                self.layout.model_dir(model).mkdir(parents=True, exist_ok=True, mode=0o755)
                self._preflight(plan, final.parent)
                with staging_dir(final, prefix=STAGING_PREFIX) as work:
                    try:
                        stats = build_tree(work / "tree", plan.src_dir, plan.files,
                                           self.layout.model_dir(model), progress, enc)
                    except OSError as exc:
                        if exc.errno == errno.ENOSPC:
                            raise enospc(exc, final, plan.bytes_needed, plan.bytes_free or 0) from exc
                        raise
                    self._register(cat, plan, plan.expected, plan.provenance, work / "tree", final,
                                   str(plan.src_dir), enc)
                self.s.audit_record("install", model, plan.before["active"], version, "ok",
                                    {"files": len(plan.files), "copied": stats.copied, "linked": stats.linked,
                                     "bytes_copied": stats.bytes_copied,
                                     "bundle_id": plan.provenance.bundle_id, "encryption": plan.encrypt,
                                     **plan.audit_extra}, started=started)
            if plan.activate and plan.changed:
                self.activate(ActivatePlan.request(model, version))
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

    def update(self, plan: UpdatePlan, progress: Progress = no_progress) -> UpdatePlan:
        """Build the delta's target version from the installed source version; unchanged files are
        hard links to the source's; the delta is kept for rollback. ``plan.signed_sha256``: the delta
        is a staged copy hashed against the signed manifest: it is kept without hashing it again and
        applied without the records pre-pass (every record used is still checked against its own
        hash)."""
        from airlock.delta import ChainStep

        started = time.monotonic()
        model = plan.model
        with self.s.mutating() as cat:
            with self.s.recording_failure("update", model, None, None):
                fresh = self.planner.replan(plan)
                assert isinstance(fresh, UpdatePlan)
                plan = fresh
            frm, to = str(plan.from_version), str(plan.version)
            assert plan.expected is not None
            with self.s.recording_failure("update", model, frm, to):
                if plan.files:
                    final = self.layout.version_dir(model, to)
                    self._preflight(plan, final.parent)
                    enc = self._enc(plan.encrypt, final)
                    src_keys = self._enc(plan.source_encryption, final)
                    kept = self._keep_delta(model, plan.delta_path, frm, to, enc or src_keys,
                                            plan.signed_sha256)
                    fault_point("repo.update.after-keep-delta")
                    src = cat.version(model, frm)
                    assert src is not None
                    details: dict[str, Any] = {"delta": kept.name, "bundle_id": plan.provenance.bundle_id,
                                               "encryption": str(enc) if enc else None, **plan.audit_extra}
                    with staging_dir(final, prefix=STAGING_PREFIX) as work:
                        details.update(self._materialise(
                            cat, model, src, [ChainStep(kept, False, frm, to)], work / "tree", enc=enc,
                            expected=plan.expected, progress=progress,
                            records_checked=plan.signed_sha256 is not None))
                        self._register(cat, plan, plan.expected, plan.provenance, work / "tree", final,
                                       f"delta:{kept.name}", enc)
                    self.s.audit_record("update", model, frm, to, "ok", details, started=started)
            if plan.activate and plan.changed:
                self.activate(ActivatePlan.request(model, to))
            return plan

    # ------------------------------------------------------------------------------------ swaps
    def activate(self, plan: ActivatePlan, *, started: float | None = None) -> ActivatePlan:
        """Atomic symlink swap to the plan's version; the version it replaces becomes ``mark_old``.
        ``started``: when the operation began (a rollback's rebuild counts in its duration)."""
        started = time.monotonic() if started is None else started
        model, version, action = plan.model, plan.version, plan.action
        with self.s.mutating() as cat, self.s.recording_failure(action, model, None, version):
            tier.ensure_hot(self.s, cat, model, version)  # a warm/cold version is promoted first
            fresh = self.planner.replan(plan)
            assert isinstance(fresh, ActivatePlan)
            plan = fresh
            if not plan.changed:
                return plan
            old, mark_old = plan.before["active"], plan.mark_old
            # the intent is recorded first, so recovery finishes a swap the way it was meant
            intent = json.dumps({"version": version, "old": old, "mark_old": mark_old})
            with cat.transaction(f"repo.{action}.intent-commit"):
                cat.set_meta(f"pending-activation:{model}", intent)
            fault_point(f"repo.{action}.before-swap")
            atomic_symlink(version, self.layout.current(model))
            fault_point(f"repo.{action}.after-swap")
            with cat.transaction():
                cat.apply_activation(model, version, old, mark_old)
            self.s.audit_record(action, model, old, version, "ok", {"marked": {old: mark_old} if old else {}},
                                started=started)
            return plan

    def rollback(self, plan: RollbackPlan, progress: Progress = no_progress) -> RollbackPlan:
        """Back to the plan's version: a symlink swap, after rebuilding the version from the kept
        deltas if it was pruned (in the stored form recorded for it: encrypted under its key ref or
        plaintext). The version rolled back from is marked ``rolled_back`` (an operator's decision:
        still good, ``activate`` rolls forward), or ``failed`` when ``plan.failed`` (the automatic
        rollback after a failed apply or health gate)."""
        from airlock.delta import ChainStep

        started = time.monotonic()
        model = plan.model
        with self.s.mutating() as cat:
            with self.s.recording_failure("rollback", model, None, plan.version):
                tier.ensure_hot(self.s, cat, model, plan.version or self.planner.before(model)["previous"],
                                keys=self.keys)
                fresh = self.planner.replan(plan)
                assert isinstance(fresh, RollbackPlan)
                plan = fresh
            to = str(plan.version)
            with self.s.recording_failure("rollback", model, plan.before["active"], to):
                if plan.rebuild:
                    self._preflight(plan, self.layout.model_dir(model))
                    steps = [ChainStep(Path(p), rev, "", "") for p, rev in plan.rebuild]
                    row = cat.version(model, to)
                    active = cat.version(model, str(plan.before["active"]))  # its files: the plaintext check
                    assert row is not None and active is not None
                    final = self.layout.version_dir(model, to)
                    enc = self._enc(row.encryption, final)
                    expected = row_expected(row)
                    with staging_dir(final, prefix=STAGING_PREFIX) as work:
                        self._materialise(cat, model, active, steps, work / "tree", enc=enc,
                                          expected=expected, progress=progress)
                        self._verify_rebuilt(work / "tree", expected, enc)
                        provenance = Provenance(row.description, dict(row.dependencies), row.bundle_id,
                                                row.manifest_sha256, row.sequence)
                        self._register(cat, plan, expected, provenance, work / "tree", final,
                                       "rebuilt:reverse-delta", enc)
                else:  # a symlink swap: an encrypted target's files must still be in their places
                    from airlock.repo.encryption import check_stored_headers

                    check_stored_headers(self.layout.version_dir(model, to), cat.version(model, to))
            self.activate(ActivatePlan.request(model, to, action="rollback",
                                               mark_old="failed" if plan.failed else "rolled_back"),
                          started=started)
            return plan

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

    # ------------------------------------------------------------------------------------ prune
    def prune(self, plan: PrunePlan) -> PrunePlan:
        """Remove versions beyond the ``keep`` newest; never the active or the previous-good one.
        Catalog rows (with file hashes) stay, state ``pruned``: rollback can rebuild from deltas."""
        model = plan.model
        with self.s.mutating() as cat, self.s.recording_failure("prune", model, None, None):
            fresh = self.planner.replan(plan)
            assert isinstance(fresh, PrunePlan)
            plan = fresh
            for version in plan.remove_versions:
                if tier.demotes_on_prune(cat):  # a warm tier is configured: demoted, not deleted
                    tier.move_locked(self.s, cat, model, version, "warm")
                    continue
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
                self.s.audit_record("prune", model, None, None, "ok",
                                    {"removed": plan.remove_versions, "keep": plan.keep})
            return plan
