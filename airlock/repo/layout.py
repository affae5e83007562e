"""Where things live under ``<root>/model_repo`` and what names are valid."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from airlock.errors import RepositoryError

DEFAULT_ROOT = Path("/srv/airlock")
STAGING_PREFIX = ".staging-"
TRASH_PREFIX = ".trash-"
CURRENT = "current"
FILE_MODE = 0o444
DIR_MODE = 0o700

_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
RESERVED_MODELS = frozenset({"update_packages", "metadata", CURRENT})


@dataclass(frozen=True)
class SemVer:
    """A strict SemVer 2.0.0 version; ordering follows the spec's precedence (build ignored)."""

    major: int
    minor: int
    patch: int
    pre: tuple[tuple[int, int | str], ...]
    text: str

    @classmethod
    def parse(cls, text: str) -> SemVer:
        m = _SEMVER.match(text) if isinstance(text, str) else None
        if not m:
            raise RepositoryError(f"{text!r}: not a SemVer version (MAJOR.MINOR.PATCH[-pre][+build])",
                                  rule="semver")
        pre: tuple[tuple[int, int | str], ...] = ()
        if m.group(4):
            # numeric identifiers sort before alphanumeric ones: key (0, n) < (1, s)
            pre = tuple((0, int(p)) if p.isdigit() else (1, p) for p in m.group(4).split("."))
        return cls(int(m.group(1)), int(m.group(2)), int(m.group(3)), pre, text)

    def key(self) -> tuple[int, int, int, int, tuple[tuple[int, int | str], ...]]:
        # a release (no pre-release) sorts after all of its pre-releases
        return (self.major, self.minor, self.patch, 0 if self.pre else 1, self.pre)


def version_key(text: str) -> tuple[int, int, int, int, tuple[tuple[int, int | str], ...]]:
    return SemVer.parse(text).key()


def check_model_name(name: str) -> str:
    if not isinstance(name, str) or not _MODEL.match(name) or name in RESERVED_MODELS or name.startswith("."):
        raise RepositoryError(f"{name!r}: invalid model name (letters, digits, '.', '_', '-'; not reserved)",
                              rule="model-name")
    return name


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def repo(self) -> Path:
        return self.root / "model_repo"

    @property
    def metadata(self) -> Path:
        return self.repo / "metadata"

    @property
    def catalog(self) -> Path:
        return self.metadata / "model_catalog.db"

    @property
    def lock(self) -> Path:
        return self.metadata / ".lock"

    @property
    def audit_log(self) -> Path:
        return self.repo / "update_history.log"

    @property
    def packages(self) -> Path:
        return self.repo / "update_packages"

    def model_dir(self, model: str) -> Path:
        return self.repo / check_model_name(model)

    def version_dir(self, model: str, version: str) -> Path:
        SemVer.parse(version)
        return self.model_dir(model) / version

    def current(self, model: str) -> Path:
        return self.model_dir(model) / CURRENT

    def model_packages(self, model: str) -> Path:
        """Kept delta files of one model (the reverse deltas rollback-after-prune needs)."""
        return self.packages / check_model_name(model)

    def bundle_record(self, bundle_id: str) -> Path:
        return self.packages / "bundles" / bundle_id
