"""Backups of an appliance with restic (encrypted, deduplicated, verifiable): docs/backup.md."""

from airlock.backup.engine import Retention, check, compare, create, drill, restore, snapshots
from airlock.backup.password import PasswordSource, make_wrapped
from airlock.backup.restic import Restic

__all__ = ["PasswordSource", "Restic", "Retention", "check", "compare", "create", "drill", "make_wrapped",
           "restore", "snapshots"]
