"""Planning: what an operation would change, from the catalog and the disk as they are. Pure: no
lock taken, nothing written (Ansible check mode, ``--check``/``--diff``); a missing repository is
planned as empty. ``airlock.repo.transactions`` re-plans under the lock before it writes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airlock.errors import IntegrityError, RepositoryError
from airlock.fsutil import free_bytes
from airlock.hashing import no_progress
from airlock.repo import tier
from airlock.repo.catalog import VersionRow
from airlock.repo.install import disk_bytes, normalise_expected, scan_source
from airlock.repo.layout import SemVer, version_key
from airlock.repo.plan import (
    ActivatePlan,
    Expected,
    FileAction,
    InstallPlan,
    Plan,
    Progress,
    Provenance,
    PrunePlan,
    RollbackPlan,
    UpdatePlan,
)

if TYPE_CHECKING:
    from airlock.crypto import KeyRef, ProviderRegistry
    from airlock.repo.session import RepoSession

NO_PROVENANCE = Provenance()


class Planner:
    """Plans against one repository; ``keys`` (else the session's) resolve encryption key refs."""

    def __init__(self, session: RepoSession, keys: ProviderRegistry | None = None) -> None:
        self.s = session
        self.layout = session.layout
        self.keys = keys

    # ------------------------------------------------------------------------------------ reading
    def before(self, model: str) -> dict[str, Any]:
        """The active and previous versions (both None without a repository)."""
        if not self.s.has_catalog():
            return {"active": None, "previous": None}
        cat = self.s.catalog()
        active, prev = cat.in_state(model, "active"), cat.in_state(model, "previous")
        return {"active": active.version if active else None, "previous": prev.version if prev else None}

    def link_candidates(self, model: str, encryption: str | None = None) -> dict[str, str]:
        """sha256 -> "<version>/<relpath>" of a file of a present version that can be hard-linked:
        only from versions stored the same way (plaintext, or encrypted under the same key ref), so
        a linked file is byte-identical to what this install would store in its place."""
        out: dict[str, str] = {}
        if not self.s.has_catalog():
            return out
        for row in reversed(self.s.catalog().versions(model, with_files=True)):
            if not self.s.present(row) or row.encryption != encryption:
                continue
            for rel, f in row.files.items():
                out.setdefault(f.sha256, f"{row.version}/{rel}")
        return out

    def _fs_block(self, model: str) -> int:
        p = self.layout.model_dir(model)
        while not p.exists():
            p = p.parent
        return os.statvfs(p).f_frsize or 4096

    def _existing(self, model: str, version: str, expected: Expected) -> bool:
        """Already installed with identical content? Different content is refused."""
        row = self.s.catalog().version(model, version) if self.s.has_catalog() else None
        if not self.s.present(row):
            return False
        assert row is not None
        have = {r: (f.size, f.sha256) for r, f in row.files.items()}
        if have != expected:
            diff = sorted(set(have.items()) ^ set(expected.items()))
            raise RepositoryError(f"{self.layout.version_dir(model, version)}: version {version} of {model} "
                                  f"is already installed with different content (first difference: "
                                  f"{diff[0][0]}); a version's content never changes",
                                  path=str(self.layout.version_dir(model, version)), rule="version-content")
        return True

    def _encryption_ref(self, ref: KeyRef | str | None, what: str) -> str | None:
        enc = self.s.encryption(ref, self.keys, what)
        return str(enc) if enc else None

    def _files(self, expected: Expected, linkable: dict[str, str], how: str,
               block: int) -> tuple[list[FileAction], int, int]:
        """Each expected file: a hard link when ``linkable`` has its hash, else written (``how``)."""
        files: list[FileAction] = []
        need = linked = 0
        for rel, (size, sha) in expected.items():
            if sha in linkable:
                files.append(FileAction(rel, size, sha, "link", linkable[sha]))
                linked += size
            else:
                files.append(FileAction(rel, size, sha, how))
                need += disk_bytes(size, block)
        return files, need, linked

    @staticmethod
    def _after(before: dict[str, Any], version: str, activate: bool) -> dict[str, Any]:
        return {"active": version, "previous": before["active"]} if activate else dict(before)

    # ------------------------------------------------------------------------------------ plans
    def install(self, model: str, version: str, src_dir: Path, *, expected: Expected | None = None,
                target_files: dict[str, dict[str, Any]] | None = None, activate: bool = True,
                provenance: Provenance = NO_PROVENANCE, encrypt: KeyRef | str | None = None,
                progress: Progress = no_progress) -> InstallPlan:
        """What installing ``src_dir`` as ``model`` ``version`` would do (stored encrypted under
        ``encrypt``, a ``provider:key_id`` reference, when given). The expected files are
        ``expected``, else the signed ``target_files``, else the source hashed now."""
        SemVer.parse(version)
        src_dir = Path(src_dir)
        ref = self._encryption_ref(encrypt, str(self.layout.version_dir(model, version)))
        if expected is None:
            expected = (normalise_expected(target_files) if target_files is not None
                        else scan_source(src_dir, progress))
        before = self.before(model)
        plan = InstallPlan(model=model, version=version, changed=True, before=before, after=dict(before),
                           src_dir=src_dir, expected=expected, activate=activate, provenance=provenance,
                           encrypt=ref)
        if self._existing(model, version, expected):
            plan.changed = activate and before["active"] != version
            plan.after = self._after(before, version, plan.changed)
            plan.notes.append("version already installed with identical content")
            return plan
        plan.files, plan.bytes_needed, plan.bytes_linked = self._files(
            expected, self.link_candidates(model, ref), "encrypt" if ref else "copy", self._fs_block(model))
        plan.after = self._after(before, version, activate)
        plan.bytes_free = free_bytes(self.layout.model_dir(model))
        return plan

    def update(self, model: str, delta_path: Path, *, expected: Expected | None = None,
               target_files: dict[str, dict[str, Any]] | None = None, activate: bool = True,
               provenance: Provenance = NO_PROVENANCE, encrypt: KeyRef | str | None = None) -> UpdatePlan:
        """What applying ``delta_path`` to the installed source version would do. The result is
        stored encrypted under ``encrypt``, else under the source's key ref if the source version
        is encrypted, else in plaintext."""
        from airlock.delta import read_delta_header

        delta_path = Path(delta_path)
        h = read_delta_header(delta_path)
        SemVer.parse(h.to_version)
        in_delta = {rel: (i.size, i.sha256) for rel, i in sorted(h.target_files.items())}
        want = expected if expected is not None else (
            normalise_expected(target_files) if target_files is not None else None)
        if want is not None and want != in_delta:
            raise IntegrityError(f"{delta_path}: the delta's target hashes differ from the signed manifest's "
                                 f"target_files for {model} {h.to_version}", path=str(delta_path),
                                 rule="delta-target-hashes")
        before = self.before(model)
        plan = UpdatePlan(model=model, version=h.to_version, changed=True, before=before,
                          after=dict(before), delta_path=delta_path, from_version=h.from_version,
                          expected=in_delta, activate=activate, provenance=provenance)
        if self._existing(model, h.to_version, in_delta):
            plan.changed = activate and before["active"] != h.to_version
            plan.after = self._after(before, h.to_version, plan.changed)
            plan.notes.append("version already installed with identical content")
            return plan
        src = self.s.catalog().version(model, h.from_version) if self.s.has_catalog() else None
        if not self.s.present(src):
            raise RepositoryError(f"{delta_path}: the delta updates {model} {h.from_version}, which is not "
                                  f"installed here", path=str(delta_path), rule="delta-source-version")
        assert src is not None
        plan.encrypt = self._encryption_ref(encrypt or src.encryption,
                                            str(self.layout.version_dir(model, h.to_version)))
        if src.encryption is not None:
            self._encryption_ref(src.encryption, str(self.layout.version_dir(model, h.from_version)))
        plan.source_encryption = src.encryption
        # an encrypted side means every file is written anew (plaintext only in a tmpfs workspace)
        linkable = {} if plan.encrypt or src.encryption else {
            i.sha256: f"{h.from_version}/{rel}" for rel, i in h.source_files.items()}
        block = self._fs_block(model)
        plan.files, plan.bytes_needed, plan.bytes_linked = self._files(
            in_delta, linkable, "delta+encrypt" if plan.encrypt else "delta", block)
        kept = self.layout.kept_delta(model, h.from_version, h.to_version)
        if not kept.exists():
            plan.bytes_needed += disk_bytes(delta_path.stat().st_size, block)
        plan.after = self._after(before, h.to_version, activate)
        plan.bytes_free = free_bytes(self.layout.model_dir(model))
        plan.notes.append(f"delta {h.from_version} -> {h.to_version} kept in {kept.parent} for rollback")
        return plan

    def activate(self, model: str, version: str, *, action: str = "activate",
                 mark_old: str | None = None) -> ActivatePlan:
        """A symlink swap; the version replaced becomes ``mark_old`` (``previous``; for a rollback,
        ``rolled_back``: the operator's decision, still good)."""
        mark_old = mark_old or ("rolled_back" if action == "rollback" else "previous")
        SemVer.parse(version)
        row = self.s.require_catalog().version(model, version, with_files=False)
        if not self.s.present(row) and not tier.needs_promotion(row):  # warm/cold: promoted first
            raise RepositoryError(f"{self.layout.version_dir(model, version)}: {model} {version} is not "
                                  "installed", path=str(self.layout.version_dir(model, version)),
                                  rule="version-missing")
        before = self.before(model)
        changed = before["active"] != version or self.s.link_target(model) != version
        return ActivatePlan(action=action, model=model, version=version, changed=changed, before=before,
                            after=self._after(before, version, changed), mark_old=mark_old)

    def rollback(self, model: str, to: str | None = None, *, failed: bool = False) -> RollbackPlan:
        """Back to the previous version (or ``to``); a pruned one is rebuilt from the kept deltas."""
        cat = self.s.require_catalog()
        before = self.before(model)
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
        after = {"active": to, "previous": before["previous"] if before["previous"] != to else None}
        plan = RollbackPlan(model=model, version=to, changed=before["active"] != to, before=before,
                            after=after, failed=failed)
        if self.s.present(row) or tier.needs_promotion(row):  # warm/cold: promoted, not rebuilt
            return plan
        from airlock.delta import ChainStep, find_chain_steps, read_delta_header

        if before["active"] is None:
            raise RepositoryError(f"{model} {to} was pruned and no version is active to rebuild it from",
                                  rule="rollback-no-source")
        from airlock.crypto.tree import delta_view

        pk = self.layout.model_packages(model)
        with delta_view(pk, self.keys or self.s.keys) as view:  # encrypted kept deltas: read in tmpfs
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
        plan.rebuild = [(str(s.path), s.reverse) for s in steps]
        plan.notes.append(f"{to} was pruned: rebuilt from {len(steps)} delta(s) "
                          f"({', '.join(s.path.name + (' reversed' if s.reverse else '') for s in steps)})")
        return plan

    def prune(self, model: str, keep: int = 2) -> PrunePlan:
        if keep < 1:
            raise RepositoryError(f"keep must be at least 1, not {keep}", rule="prune-keep")
        cat = self.s.require_catalog()
        before = self.before(model)
        rows = [r for r in cat.versions(model) if self.s.present(r)]
        protected = {v for v in (before["active"], before["previous"]) if v}
        kept = set(protected)
        for r in sorted(rows, key=lambda r: (r.state != "failed", version_key(r.version)), reverse=True):
            if len(kept) >= keep:
                break
            kept.add(r.version)
        remove = sorted((r.version for r in rows if r.version not in kept), key=version_key)
        return PrunePlan(model=model, version=None, changed=bool(remove), before=before, after=before,
                         keep=keep, remove_versions=remove,
                         remove=[str(self.layout.version_dir(model, v)) for v in remove],
                         notes=([f"keeping {', '.join(sorted(kept, key=version_key))}"] if rows else [])
                         + (["a warm tier is configured: demoted there, not deleted (docs/tiers.md)"]
                            if remove and tier.demotes_on_prune(cat) else []))

    def replan(self, plan: Plan) -> Plan:
        """The same request planned again from the state as it is now (under the lock): from the
        plan's typed inputs, never from re-hashing a source already hashed."""
        if isinstance(plan, InstallPlan):
            full = self.install(plan.model, plan.version, plan.src_dir, expected=plan.expected,
                                activate=plan.activate, provenance=plan.provenance, encrypt=plan.encrypt)
            full.audit_extra = plan.audit_extra
            return full
        if isinstance(plan, UpdatePlan):
            delta = self.update(plan.model, plan.delta_path, expected=plan.expected, activate=plan.activate,
                                provenance=plan.provenance, encrypt=plan.encrypt)
            delta.signed_sha256, delta.audit_extra = plan.signed_sha256, plan.audit_extra
            return delta
        if isinstance(plan, ActivatePlan):
            return self.activate(plan.model, plan.version, action=plan.action, mark_old=plan.mark_old)
        if isinstance(plan, RollbackPlan):
            return self.rollback(plan.model, plan.version, failed=plan.failed)
        if isinstance(plan, PrunePlan):
            return self.prune(plan.model, plan.keep)
        raise RepositoryError(f"unknown plan {type(plan).__name__}", rule="plan")


def row_expected(row: VersionRow) -> Expected:
    """A catalog row's plaintext (size, sha256) per file."""
    return {r: (f.size, f.sha256) for r, f in row.files.items()}
