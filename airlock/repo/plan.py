"""Plans: what an operation would change, computed without writing anything (Ansible check mode
and ``--diff`` show them) and typed by operation, so a plan carries what applying it needs and
applies itself (``plan.apply(transactions)``, see ``airlock.repo.transactions``).

Planning lives in ``airlock.repo.planning`` (reads only); applying re-plans under the repository
lock from the plan's own typed inputs, so a stale plan (made before another operation ran) cannot
do harm, and then carries out the fresh one. ``<Kind>Plan.request(...)`` is a plan not made yet
(the engine's own calls: it is planned under the lock, after crash recovery, when applied).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

Progress = Callable[[int], None]
Expected = dict[str, tuple[int, str]]  # relpath -> (size, sha256) of the plaintext


@dataclass
class FileAction:
    relpath: str
    size: int
    sha256: str
    how: str  # "copy" | "encrypt" | "link" | "delta" | "delta+encrypt"
    source: str | None = None  # the file hard-linked from ("<version>/<relpath>")


@dataclass(frozen=True)
class Provenance:
    """Where a version came from, recorded in its catalog row: the signed manifest's description,
    dependencies, bundle id, sha256 and sequence (all empty for a plain directory or delta)."""

    description: str = ""
    dependencies: dict[str, str] = field(default_factory=dict)
    bundle_id: str | None = None
    manifest_sha256: str | None = None
    sequence: int | None = None


class Applier(Protocol):
    """What carries plans out under the lock (``airlock.repo.transactions.Transactions``)."""

    def install(self, plan: InstallPlan, progress: Progress) -> InstallPlan: ...
    def update(self, plan: UpdatePlan, progress: Progress) -> UpdatePlan: ...
    def activate(self, plan: ActivatePlan) -> ActivatePlan: ...
    def rollback(self, plan: RollbackPlan, progress: Progress) -> RollbackPlan: ...
    def prune(self, plan: PrunePlan) -> PrunePlan: ...


def _no_progress(_n: int) -> None:
    pass


@dataclass(kw_only=True)
class Plan:
    """What every plan shows: the action, the catalog states before and after, the files it writes
    or links, the space it needs, what it removes, notes."""

    action: str = ""  # install | update | activate | rollback | prune (the audit record's action)
    model: str
    version: str | None
    changed: bool
    before: dict[str, Any]
    after: dict[str, Any]
    files: list[FileAction] = field(default_factory=list)
    bytes_needed: int = 0
    bytes_linked: int = 0
    bytes_free: int | None = None
    remove: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def apply(self, applier: Applier, progress: Progress = _no_progress) -> Plan:
        raise NotImplementedError

    @property
    def diff(self) -> str:
        """Human-readable before/after (Ansible --diff)."""
        lines = [f"{self.action} {self.model}" + (f" {self.version}" if self.version else "")
                 + ("" if self.changed else " (no change)")]
        for key in sorted(set(self.before) | set(self.after)):
            b, a = self.before.get(key), self.after.get(key)
            lines.append(f"  {key}: {b}" if b == a else f"  {key}: {b} -> {a}")
        copies = [f for f in self.files if f.how != "link"]
        links = [f for f in self.files if f.how == "link"]
        for f in copies:
            lines.append(f"  + {f.relpath} ({f.size} bytes, {f.how})")
        for f in links:
            lines.append(f"  = {f.relpath} ({f.size} bytes, hard link to {f.source})")
        for r in self.remove:
            lines.append(f"  - {r}")
        if self.files or self.bytes_needed:
            lines.append(f"  bytes needed: {self.bytes_needed}, hard-linked: {self.bytes_linked}"
                         + (f", free: {self.bytes_free}" if self.bytes_free is not None else ""))
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines) + "\n"

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.action, "model": self.model, "version": self.version, "changed": self.changed,
            "before": self.before, "after": self.after,
            "files": [{"path": f.relpath, "size": f.size, "sha256": f.sha256, "how": f.how,
                       "source": f.source} for f in self.files],
            "bytes_needed": self.bytes_needed, "bytes_linked": self.bytes_linked,
            "bytes_free": self.bytes_free, "remove": self.remove, "notes": self.notes, "diff": self.diff,
        }


@dataclass(kw_only=True)
class InstallPlan(Plan):
    """A full version from a directory (a bundle's payload or a plain model directory)."""

    action: str = "install"
    version: str
    src_dir: Path
    expected: Expected | None  # None in a request without signed hashes: the source is hashed
    activate: bool = True
    provenance: Provenance = field(default_factory=Provenance)
    encrypt: str | None = None  # the key ref the version is stored under ("provider:key_id")
    audit_extra: dict[str, Any] = field(default_factory=dict)  # e.g. a bundle's staging figures

    @classmethod
    def request(cls, model: str, version: str, src_dir: Path, *, expected: Expected | None = None,
                activate: bool = True, provenance: Provenance | None = None, encrypt: object = None,
                audit_extra: dict[str, Any] | None = None) -> InstallPlan:
        return cls(model=model, version=version, changed=False, before={}, after={}, src_dir=Path(src_dir),
                   expected=expected, activate=activate, provenance=provenance or Provenance(),
                   encrypt=str(encrypt) if encrypt else None, audit_extra=audit_extra or {})

    def apply(self, applier: Applier, progress: Progress = _no_progress) -> InstallPlan:
        return applier.install(self, progress)


@dataclass(kw_only=True)
class UpdatePlan(Plan):
    """A version built by applying a delta to the installed source version."""

    action: str = "update"
    delta_path: Path
    from_version: str | None  # None in a request (read from the delta's header when planned)
    expected: Expected | None  # the delta's target files (a request: the signed ones, if any)
    activate: bool = True
    provenance: Provenance = field(default_factory=Provenance)
    encrypt: str | None = None  # the result's key ref (``encrypt`` asked for, else the source's)
    source_encryption: str | None = None
    signed_sha256: str | None = None  # a staged delta already hashed against the signed manifest
    audit_extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def request(cls, model: str, delta_path: Path, *, expected: Expected | None = None,
                activate: bool = True, provenance: Provenance | None = None, encrypt: object = None,
                signed_sha256: str | None = None, audit_extra: dict[str, Any] | None = None) -> UpdatePlan:
        return cls(model=model, version=None, changed=False, before={}, after={},
                   delta_path=Path(delta_path), from_version=None, expected=expected, activate=activate,
                   provenance=provenance or Provenance(), encrypt=str(encrypt) if encrypt else None,
                   signed_sha256=signed_sha256, audit_extra=audit_extra or {})

    def apply(self, applier: Applier, progress: Progress = _no_progress) -> UpdatePlan:
        return applier.update(self, progress)


@dataclass(kw_only=True)
class ActivatePlan(Plan):
    """A symlink swap to an installed version (``rollback`` when the fronts roll back by swapping)."""

    action: str = "activate"  # or "rollback": a rollback to a version still installed
    version: str
    mark_old: str = "previous"  # what the version it replaces becomes

    @classmethod
    def request(cls, model: str, version: str, *, action: str = "activate",
                mark_old: str = "previous") -> ActivatePlan:
        return cls(action=action, model=model, version=version, changed=False, before={}, after={},
                   mark_old=mark_old)

    def apply(self, applier: Applier, progress: Progress = _no_progress) -> ActivatePlan:
        return applier.activate(self)


@dataclass(kw_only=True)
class RollbackPlan(Plan):
    """Back to the previous good version (or a named one), rebuilt from the kept deltas first when it
    was pruned (``rebuild``: the delta chain, ``(path, reverse)`` per step)."""

    action: str = "rollback"
    rebuild: list[tuple[str, bool]] | None = None
    failed: bool = False  # mark the version rolled back from failed (automatic rollback)

    @classmethod
    def request(cls, model: str, to: str | None = None, *, failed: bool = False) -> RollbackPlan:
        """``to`` None: the previous version, as the catalog says when it is planned."""
        return cls(model=model, version=to, changed=False, before={}, after={}, failed=failed)

    def apply(self, applier: Applier, progress: Progress = _no_progress) -> RollbackPlan:
        return applier.rollback(self, progress)


@dataclass(kw_only=True)
class PrunePlan(Plan):
    """Versions to remove beyond the ``keep`` newest (never the active or the previous one)."""

    action: str = "prune"
    keep: int
    remove_versions: list[str] = field(default_factory=list)

    @classmethod
    def request(cls, model: str, keep: int = 2) -> PrunePlan:
        return cls(model=model, version=None, changed=False, before={}, after={}, keep=keep)

    def apply(self, applier: Applier, progress: Progress = _no_progress) -> PrunePlan:
        return applier.prune(self)
