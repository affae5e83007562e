"""``RepoSession``: one open repository (layout, catalog handle, key providers, owner) and the
plumbing every operation shares: the writers' lock with crash recovery on first entry, the readers'
shared lock over a read-only catalog, the audit record of each result or failure.

Planning (``airlock.repo.planning``) reads through it; transactions (``airlock.repo.transactions``)
write through it; ``Repository`` is the facade the fronts use.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import pwd
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airlock.errors import AirlockError, DiskSpaceError, RepositoryError
from airlock.repo import audit
from airlock.repo.catalog import PRESENT, Catalog, VersionRow
from airlock.repo.encryption import Encryption, resolve
from airlock.repo.layout import DEFAULT_ROOT, Layout
from airlock.repo.lock import repo_lock
from airlock.repo.recover import RecoveryStep, recover

if TYPE_CHECKING:
    from airlock.crypto import KeyRef, ProviderRegistry


class RepoSession:
    def __init__(self, root: Path | None = None, *, owner: str | None = None, group: str | None = None,
                 lock_timeout: float | None = None, check_torch: bool = False,
                 keys: ProviderRegistry | None = None) -> None:
        self.layout = Layout(Path(root) if root is not None else DEFAULT_ROOT)
        self.keys = keys  # key providers for encrypted versions (docs/security.md); per call too
        self.owner, self.group = owner, group
        self.lock_timeout = lock_timeout  # None: airlock.settings.lock_timeout()
        self.check_torch = check_torch
        self._depth = 0
        self._catalog: Catalog | None = None

    @property
    def root(self) -> Path:
        return self.layout.root

    def ids(self) -> tuple[int | None, int | None]:
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

    _ids = ids

    def check_owner(self) -> None:
        """Refuse an unknown --owner/--group now, before staging or copying (exit 30)."""
        self.ids()

    def catalog(self) -> Catalog:
        if self._catalog is None:
            self.layout.metadata.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._catalog = Catalog(self.layout.catalog)
        return self._catalog

    def has_catalog(self) -> bool:
        return self.layout.catalog.exists()

    def require_catalog(self) -> Catalog:
        if not self.has_catalog():
            raise RepositoryError(f"{self.layout.repo}: no model repository here (nothing installed yet)",
                                  path=str(self.layout.repo), rule="repository-missing")
        return self.catalog()

    def close(self) -> None:
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None

    def encryption(self, ref: KeyRef | str | None, keys: ProviderRegistry | None,
                   what: str) -> Encryption | None:
        """The key ref resolved against ``keys`` (else this session's providers); None: plaintext."""
        return resolve(ref, keys or self.keys, what)

    _enc = encryption

    def present(self, row: VersionRow | None) -> bool:
        """A version whose directory is on disk (not pruned)."""
        return bool(row and row.state in PRESENT and self.layout.version_dir(row.model, row.version).is_dir())

    _present = present

    def link_target(self, model: str) -> str | None:
        return self.layout.link_target(model)

    # ------------------------------------------------------------------------------------ writers
    @contextlib.contextmanager
    def mutating(self, recover: bool = True) -> Iterator[Catalog]:
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

    _mutating = mutating

    def recovery_steps(self) -> tuple[RecoveryStep, ...]:
        """Recovery of the packages built on this session (``Repository``: the storage tiers)."""
        return ()

    def recover(self) -> list[str]:
        """Bring disk and catalog back to a consistent state after a crash (the caller holds the
        lock); see ``airlock.repo.recover``."""
        return recover(self.layout, self.catalog(), self.recovery_steps())

    def recover_now(self) -> list[str]:
        """Crash recovery on its own, under the lock (what every mutating operation starts with): so
        a rollback after a killed apply plans from the recovered state and leaves no leftovers, even
        when the version it goes back to is still the active one."""
        with self.mutating(recover=False):
            return self.recover()

    def audit_record(self, action: str, model: str | None, frm: str | None, to: str | None, result: str,
                     details: dict[str, Any], *, started: float | None = None) -> None:
        """``started``: ``time.monotonic()`` when the operation began (the record's ``duration_s``)."""
        audit.record(self.catalog(), self.layout.audit_log, action, model, frm, to, result, details,
                     duration=None if started is None else time.monotonic() - started)

    @contextlib.contextmanager
    def recording_failure(self, action: str, model: str, frm: str | None, to: str | None) -> Iterator[None]:
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

    _recording_failure = recording_failure

    def record_failure(self, action: str, model: str | None, exc: BaseException) -> None:
        """Record an operation refused before it started (e.g. a plan the CLI could not make), or
        one stopped on its way (``interrupted`` for Ctrl-C)."""
        if not self.has_catalog():
            return  # no repository: nothing to protect, nowhere to record
        result = "interrupted" if getattr(exc, "rule", None) == "interrupted" else "failed"
        with self.mutating(recover=False):
            self.audit_record(action, model, None, None, result,
                              {"error": type(exc).__name__, "message": str(exc)})

    # ------------------------------------------------------------------------------------ readers
    @contextlib.contextmanager
    def reading(self) -> Iterator[Catalog]:
        """Verify's view: the catalog opened read-only (no migration, no journal), the reader's shared
        lock (writers wait, nothing is created or written), no recovery: drift is reported as found."""
        if not self.has_catalog():
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

    _reading = reading

    def _unreadable(self, exc: Exception) -> RepositoryError:
        return RepositoryError(f"{self.layout.catalog}: the catalog cannot be read read-only ({exc}); if a "
                               "write was interrupted, the next mutating command recovers it",
                               path=str(self.layout.catalog), rule="catalog-read")

    def audit_head(self) -> audit.AuditHead | None:
        raw = self.catalog().get_meta("audit_head") if self.has_catalog() else None
        return audit.parse_head(raw)
