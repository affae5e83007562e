"""Crash recovery, run under the lock at the start of every mutating operation.

Removes staging, trash and temp-link leftovers and SemVer-named version directories the catalog
does not know (a kill between rename and catalog commit), marks versions whose directory vanished
as pruned, finishes or drops a recorded activation intent, and otherwise aligns the catalog with
the ``current`` link (swapped before the catalog is updated, so the link is the truth).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from airlock.errors import RepositoryError
from airlock.fsutil import atomic_symlink, rmtree_writable
from airlock.repo import audit
from airlock.repo.catalog import PRESENT, Catalog
from airlock.repo.layout import CURRENT, KEEP_PREFIX, LEFTOVER_PREFIXES, Layout, SemVer

__all__ = ["PRESENT", "RecoveryStep", "recover"]
# a package's own recovery (e.g. tier copies): run after the repository's, under the same lock
RecoveryStep = Callable[[Layout, Catalog], list[str]]


def _is_version_dir(entry: Path) -> bool:
    if entry.is_symlink() or not entry.is_dir():
        return False
    try:
        SemVer.parse(entry.name)
    except RepositoryError:
        return False
    return True


def recover(layout: Layout, cat: Catalog, steps: Sequence[RecoveryStep] = ()) -> list[str]:
    """Bring disk and catalog back to a consistent state after a crash (the caller holds the lock
    and has the catalog open for writing), then run the extra ``steps``. Returns what was done (also
    recorded in the audit log)."""
    actions: list[str] = []
    model_dirs = layout.model_dirs()
    for pk in [layout.packages, *[p for p in layout.packages.glob("*") if p.is_dir()]]:
        for leftover in pk.glob(f"{KEEP_PREFIX}*"):
            rmtree_writable(leftover)
            actions.append(f"removed {leftover}")
    for mdir in model_dirs:
        model = mdir.name
        for entry in list(mdir.iterdir()):
            if entry.name.startswith(LEFTOVER_PREFIXES):
                rmtree_writable(entry)
                actions.append(f"removed leftover {entry}")
        rows = {r.version: r for r in cat.versions(model)}
        for entry in list(mdir.iterdir()):
            if entry.name == CURRENT or entry.name.startswith(".") or not _is_version_dir(entry):
                continue  # not ours to judge: only version directories are cleaned up
            row = rows.get(entry.name)
            if row is None or row.state == "pruned":
                if layout.link_target(model) == entry.name:
                    continue  # never remove what serves; verify reports it
                rmtree_writable(entry)
                actions.append(f"removed {entry} (not recorded in the catalog)")
        with cat.transaction("repo.recover.before-commit"):
            for row in rows.values():
                if row.state in PRESENT and row.location == "hot" and not (mdir / row.version).is_dir():
                    cat.set_state(model, row.version, "pruned")
                    actions.append(f"{model} {row.version}: directory gone, marked pruned")
            target = layout.link_target(model)
            pending = cat.get_meta(f"pending-activation:{model}")
            if pending is not None:
                intent = json.loads(pending)
                if target is not None and target == intent["version"] and (mdir / target).is_dir():
                    cat.apply_activation(model, target, intent["old"], intent["mark_old"])
                    actions.append(f"{model}: finished activation of {target}")
                else:
                    cat.del_meta(f"pending-activation:{model}")
                    actions.append(f"{model}: dropped unfinished activation of {intent['version']}")
            active = cat.in_state(model, "active")
            if target and (active is None or active.version != target):
                trow = cat.version(model, target, with_files=False)
                if trow is not None and trow.state in PRESENT and (mdir / target).is_dir():
                    for prev in cat.versions(model):
                        if prev.state == "previous":
                            cat.set_state(model, prev.version, "staged")
                    if active is not None:
                        cat.set_state(model, active.version, "previous")
                    cat.set_state(model, target, "active", activated=True)
                    actions.append(f"{model}: catalog aligned with current -> {target}")
            elif target is None and active is not None and (mdir / active.version).is_dir():
                atomic_symlink(active.version, layout.current(model))
                actions.append(f"{model}: current link restored -> {active.version}")
    for step in steps:
        actions.extend(step(layout, cat))
    from airlock.crypto.tree import sweep_workspaces
    from airlock.repo.encryption import sweep_plaintext_stages

    # plaintext of encrypted versions left on tmpfs by a killed update/rollback, or staged by a
    # killed install-bundle --encrypt
    actions.extend(f"removed plaintext workspace {p}" for p in sweep_workspaces())
    staged = sweep_plaintext_stages(layout.staged)
    actions.extend(f"removed staged plaintext {p}" for p in staged)
    if actions:
        audit.record(cat, layout.audit_log, "recover", None, None, None, "ok", {"actions": actions})
    return actions
