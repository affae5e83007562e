"""Where things live under ``<root>/model_repo`` and what names are valid."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from airlock import names
from airlock.errors import RepositoryError
from airlock.settings import DEFAULT_ROOT as DEFAULT_ROOT  # the one default root (re-exported)

CURRENT = "current"
STAGED = "staged"  # update_packages/staged/<bundle>: verified copies of bundles being installed
BUNDLES = "bundles"  # update_packages/bundles/<id>: kept signed manifests (the anti-downgrade anchors)
KEPT_DELTA_SUFFIX = ".aldelta"
# work names beside their final place; a killed write leaves them behind and ``recover`` removes them
STAGING_PREFIX = names.VERSION_STAGING_PREFIX  # a version being built beside <model>/<version>
TRASH_PREFIX = ".trash-"  # a pruned version between its rename and its removal
KEEP_PREFIX = ".keep-"  # a kept delta being copied into update_packages/<model>/
LEFTOVER_PREFIXES = (STAGING_PREFIX, TRASH_PREFIX, names.DELTA_STAGING_PREFIX, names.CHAIN_STAGING_PREFIX,
                     f".{CURRENT}.tmp-")  # the last: fsutil.atomic_symlink's temporary link
FILE_MODE = 0o444
DIR_MODE = 0o700
# modes of the repository's own paths (roles/model_repo sets the same); verify reports drift from them
ROOT_MODE = 0o755  # <root>, <root>/model_repo, update_packages/, <model>/
METADATA_MODE = 0o700
CATALOG_MODE = 0o600
KEPT_MODE = 0o444  # kept signed manifests and their signatures

_SEMVER = names.SEMVER
RESERVED_MODELS = names.RESERVED_MODELS


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
        m = _SEMVER.fullmatch(text) if names.is_version(text) else None
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
    if not names.is_model_name(name):
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
        if not names.is_bundle_id(bundle_id):  # defence in depth: the manifest parser refused it already
            raise RepositoryError(f"{bundle_id!r}: invalid bundle id", rule="bundle-id")
        return self.bundle_records / bundle_id

    @property
    def bundle_records(self) -> Path:
        return self.packages / BUNDLES

    @property
    def staged(self) -> Path:
        """Where bundles are staged (verified copies) unless the caller names another directory."""
        return self.packages / STAGED

    def staged_bundle(self, source: Path) -> Path:
        """The default staging directory of the bundle at ``source`` (named after its directory)."""
        return self.staged / Path(source).resolve().name

    def kept_delta(self, model: str, frm: str, to: str) -> Path:
        """The delta kept for rollback (``update_packages/<model>/<model>-<from>-<to>.aldelta``)."""
        return self.model_packages(model) / f"{model}-{frm}-{to}{KEPT_DELTA_SUFFIX}"

    def kept_deltas(self, model: str) -> list[Path]:
        pk = self.model_packages(model)
        return sorted(pk.glob(f"{model}-*{KEPT_DELTA_SUFFIX}")) if pk.is_dir() else []

    def link_target(self, model: str) -> str | None:
        """What ``<model>/current`` points at (a version name), None without the link."""
        link = self.current(model)
        return os.readlink(link) if link.is_symlink() else None

    def model_dirs(self) -> list[Path]:
        """The model directories present on disk (not metadata/, update_packages/ or dot entries)."""
        if not self.repo.exists():
            return []
        return [d for d in self.repo.iterdir() if d.is_dir() and not d.is_symlink()
                and d.name not in (self.metadata.name, self.packages.name) and not d.name.startswith(".")]

    def create_dirs(self) -> None:
        """Create the repository directories that do not exist yet, with their modes whatever the
        umask (existing ones are left alone: verify reports their drift)."""
        for path, mode in ((self.root, ROOT_MODE), (self.repo, ROOT_MODE), (self.packages, ROOT_MODE),
                           (self.metadata, METADATA_MODE)):
            if not path.exists():
                path.mkdir(parents=True, exist_ok=True, mode=mode)
                path.chmod(mode)
