"""The model repository on an appliance: staging, atomic activation, catalog, rollback, audit."""

from airlock.repo.audit import AuditHead, AuditReport
from airlock.repo.catalog import Catalog, VersionRow
from airlock.repo.layout import DEFAULT_ROOT, Layout, SemVer
from airlock.repo.loadable import LoadReport, check_loadable
from airlock.repo.plan import (
    ActivatePlan,
    FileAction,
    InstallPlan,
    Plan,
    Provenance,
    PrunePlan,
    RollbackPlan,
    UpdatePlan,
)
from airlock.repo.repository import Repository

__all__ = ["DEFAULT_ROOT", "ActivatePlan", "AuditHead", "AuditReport", "Catalog", "FileAction", "InstallPlan",
           "Layout", "LoadReport", "Plan", "Provenance", "PrunePlan", "Repository", "RollbackPlan", "SemVer",
           "UpdatePlan", "VersionRow", "check_loadable"]
