"""``Repository``: the model repository on an appliance, as the fronts (CLI, Ansible modules) see it.

A facade over four parts, each in its own module:

- ``airlock.repo.session``: the open repository (layout, catalog, keys, owner) and the shared
  plumbing: the writers' lock with crash recovery (``airlock.repo.recover``) on first entry, the
  readers' shared lock over a read-only catalog, the audit record of every result or failure;
- ``airlock.repo.planning``: pure planning (no lock, no write): typed plans (``airlock.repo.plan``:
  ``InstallPlan``, ``UpdatePlan``, ``ActivatePlan``, ``RollbackPlan``, ``PrunePlan``) carrying a
  ``Provenance`` record, shown by check mode and ``--diff``;
- ``airlock.repo.transactions``: a plan carried out under the lock (``plan.apply(transactions)``),
  re-planned there first so a stale plan cannot do harm, written in the crash-safe order;
- reports: verify/compliance (``airlock.repo.verify``), the audit chain, list/show/history/state.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airlock.errors import IntegrityError, RepositoryError
from airlock.fsutil import atomic_write_bytes
from airlock.hashing import no_progress
from airlock.repo import audit, tier
from airlock.repo.catalog import PRESENT, Catalog
from airlock.repo.install import normalise_expected
from airlock.repo.plan import (
    ActivatePlan,
    InstallPlan,
    Plan,
    Progress,
    Provenance,
    PrunePlan,
    RollbackPlan,
    UpdatePlan,
)
from airlock.repo.planning import Planner
from airlock.repo.recover import RecoveryStep
from airlock.repo.session import RepoSession
from airlock.repo.transactions import Transactions
from airlock.repo.verify import check_model, check_repository, unavailable_warning

if TYPE_CHECKING:
    from airlock.bundle import Manifest, StagedBundle, Trust
    from airlock.crypto import KeyRef, ProviderRegistry

TargetFiles = dict[str, dict[str, Any]]  # a signed manifest's target_files: relpath -> {size, sha256}


def _expected(target_files: TargetFiles | None) -> dict[str, tuple[int, str]] | None:
    return normalise_expected(target_files) if target_files is not None else None


class Repository(RepoSession):
    def planner(self, keys: ProviderRegistry | None = None) -> Planner:
        return Planner(self, keys)

    def transactions(self, keys: ProviderRegistry | None = None) -> Transactions:
        return Transactions(self, keys)

    def recovery_steps(self) -> tuple[RecoveryStep, ...]:
        return (tier.recover,)  # copies outside a version's recorded tier

    def _before(self, model: str) -> dict[str, Any]:
        return self.planner().before(model)

    def _require_catalog(self) -> Catalog:
        return self.require_catalog()

    # ------------------------------------------------------------------------------------ planning
    def plan_install(self, model: str, version: str, src_dir: Path, *,
                     target_files: TargetFiles | None = None, activate: bool = True,
                     provenance: Provenance | None = None, progress: Progress = no_progress,
                     encrypt: KeyRef | str | None = None,
                     keys: ProviderRegistry | None = None) -> InstallPlan:
        """What installing ``src_dir`` as ``model`` ``version`` would do. Writes nothing."""
        return self.planner(keys).install(model, version, src_dir, target_files=target_files,
                                          activate=activate, provenance=provenance or Provenance(),
                                          encrypt=encrypt, progress=progress)

    def plan_update(self, model: str, delta_path: Path, *, target_files: TargetFiles | None = None,
                    activate: bool = True, provenance: Provenance | None = None,
                    encrypt: KeyRef | str | None = None, keys: ProviderRegistry | None = None) -> UpdatePlan:
        """What applying ``delta_path`` to the installed source version would do. Writes nothing."""
        return self.planner(keys).update(model, delta_path, target_files=target_files, activate=activate,
                                         provenance=provenance or Provenance(), encrypt=encrypt)

    def plan_activate(self, model: str, version: str, *, action: str = "activate") -> ActivatePlan:
        return self.planner().activate(model, version, action=action)

    def plan_rollback(self, model: str, to: str | None = None) -> RollbackPlan:
        return self.planner().rollback(model, to)

    def plan_prune(self, model: str, keep: int = 2) -> PrunePlan:
        return self.planner().prune(model, keep)

    def execute(self, plan: Plan, progress: Progress = no_progress, *,
                keys: ProviderRegistry | None = None) -> Plan:
        """Carry out a plan (re-planned under the lock first, so a stale plan cannot do harm)."""
        return plan.apply(self.transactions(keys), progress)

    # ------------------------------------------------------------------------------------ operations
    def install_version(self, model: str, version: str, src_dir: Path, *,
                        target_files: TargetFiles | None = None, activate: bool = True,
                        provenance: Provenance | None = None, progress: Progress = no_progress,
                        encrypt: KeyRef | str | None = None, keys: ProviderRegistry | None = None,
                        staging: dict[str, Any] | None = None) -> InstallPlan:
        """Install a full version from a directory (hashes from ``target_files`` when given, e.g. the
        signed manifest's; else hashed from the source). ``encrypt`` (``provider:key_id``): store
        every file encrypted, the plaintext hashed while encrypting; the catalog keeps plaintext
        hashes and the key ref. ``staging``: the bundle's staging figures, kept in the audit record."""
        return InstallPlan.request(model, version, src_dir, expected=_expected(target_files),
                                   activate=activate, provenance=provenance, encrypt=encrypt,
                                   audit_extra={"staging": staging} if staging else None,
                                   ).apply(self.transactions(keys), progress)

    def update_from_delta(self, model: str, delta_path: Path, *, target_files: TargetFiles | None = None,
                          activate: bool = True, provenance: Provenance | None = None,
                          progress: Progress = no_progress, encrypt: KeyRef | str | None = None,
                          keys: ProviderRegistry | None = None, staging: dict[str, Any] | None = None,
                          signed_sha256: str | None = None) -> UpdatePlan:
        """Build the delta's target version from the installed source version; unchanged files are
        hard links to the source's; the delta is kept for rollback. An encrypted source (or
        ``encrypt``) goes through a tmpfs workspace, the result encrypted under ``encrypt`` or the
        source's key ref. ``signed_sha256``: the delta is a staged copy hashed against the signed
        manifest (``install_from_bundle``): kept without hashing it again."""
        return UpdatePlan.request(model, delta_path, expected=_expected(target_files), activate=activate,
                                  provenance=provenance, encrypt=encrypt, signed_sha256=signed_sha256,
                                  audit_extra={"staging": staging} if staging else None,
                                  ).apply(self.transactions(keys), progress)

    def activate(self, model: str, version: str, *, action: str = "activate",
                 mark_old: str = "previous", started: float | None = None) -> ActivatePlan:
        """Atomic symlink swap to ``version``; the version it replaces becomes ``mark_old``."""
        return self.transactions().activate(ActivatePlan.request(model, version, action=action,
                                                                 mark_old=mark_old), started=started)

    def rollback(self, model: str, to: str | None = None, *, progress: Progress = no_progress,
                 keys: ProviderRegistry | None = None, failed: bool = False) -> RollbackPlan:
        """Back to the previous good version (or ``to``), rebuilt from the kept deltas if it was
        pruned; the version left is marked ``rolled_back``, or ``failed`` when ``failed``."""
        return RollbackPlan.request(model, to, failed=failed).apply(self.transactions(keys), progress)

    def prune(self, model: str, keep: int = 2) -> PrunePlan:
        """Remove versions beyond the ``keep`` newest; never the active or the previous-good one."""
        return PrunePlan.request(model, keep).apply(self.transactions())

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
        plans: list[Plan] = []
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
                    provenance = Provenance(me.description, dict(me.dependencies), m.bundle_id, msha,
                                            m.sequence)
                    common: dict[str, Any] = {
                        "target_files": me.target_files, "activate": activate, "provenance": provenance,
                        "progress": progress, "encrypt": encrypt, "keys": keys,
                        "staging": staged.counters.audit()}
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
            out["warnings"] = [unavailable_warning(model, out["unavailable"])] if out["unavailable"] else []
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
                        "versions": [{"version": r.version, "state": r.state, "location": r.location}
                                     for r in rows]})
        return out

    def show(self, model: str, version: str | None = None) -> dict[str, Any]:
        cat = self._require_catalog()
        if version:
            row = cat.version(model, version)
            if row is None:
                raise RepositoryError(f"{model} {version} is not in the catalog", rule="version-missing")
            loc = tier.location_of(cat, model, version)  # path: where the files are (docs/tiers.md)
            return {**row.as_dict(with_files=True), **({"path": str(loc.path)} if loc else {})}
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


