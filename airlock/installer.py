"""Installing a signed bundle: the one entry point (shaped like RAUC's ``do_install_bundle``) behind
``airlock model install-bundle`` and the Ansible modules ``airlock_bundle`` (stage) and
``airlock_model`` (install). The fronts only turn options into arguments and results into output.

    source: a bundle directory, a packed .tar, or a completed stage (open_staged)
      -> signed manifest (signature over the exact bytes, then parse) -> policy (profile, downgrade)
      -> plans (reads only; check mode stops here) -> this very bundle already installed: done
      -> space preflight -> stage (hashed while copied; resumes) or reopen a completed stage
      -> Repository.install_from_bundle (under the lock) -> the staged copy is removed

Each payload byte is read twice per install (docs/architecture.md, "Install path"): once from the
source while staging (hashed against the signed manifest), once by the install (copied into the
version with its hash checked, or a delta applied).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from airlock.errors import AirlockError, IntegrityError, MediaGoneError, from_exception
from airlock.hashing import no_progress

if TYPE_CHECKING:
    from airlock.bundle.manifest import Manifest
    from airlock.bundle.signing import SignerInfo, Trust
    from airlock.bundle.stage import StageCounters, StagedBundle
    from airlock.bundle.verify import SignedManifest
    from airlock.repo.plan import Plan
    from airlock.repo.repository import Repository
    from airlock.repo.space import BundleSpace

Progress = Callable[[int], None]
Bar = Callable[[str, "int | None"], AbstractContextManager[Progress]]
Kind = Literal["staged", "dir", "archive"]
RESUMABLE = ("interrupted", MediaGoneError.rule)  # a re-run resumes the stage from where it stopped


@contextlib.contextmanager
def no_bar(_label: str, _total: int | None) -> Iterator[Progress]:
    yield no_progress


@dataclass
class InstallResult:
    manifest: Manifest
    signer: SignerInfo
    plans: list[Plan]
    space: BundleSpace
    stage: Path
    counters: StageCounters | None = None  # None: nothing was staged (check mode, already installed)
    check: bool = False
    already_installed: bool = False  # this bundle's manifest is kept and nothing changes: nothing staged
    space_error: AirlockError | None = None  # check mode: the refusal a real run would meet

    @property
    def changed(self) -> bool:
        return any(p.changed for p in self.plans)

    def as_dict(self) -> dict[str, Any]:
        m = self.manifest
        doc: dict[str, Any] = {"ok": self.space_error is None, "check_mode": self.check,
                               "bundle_id": m.bundle_id, "sequence": m.sequence,
                               "space": self.space.as_dict(), "plans": [p.as_dict() for p in self.plans]}
        if self.counters is not None:
            doc["stage"] = asdict(self.counters)
        if self.space_error is not None:
            doc.update(self.space_error.as_dict())
        return doc


@dataclass
class StageResult:
    """``stage_for_install``: the bundle staged (or a completed stage reused), or nothing to stage
    because this very bundle is already installed."""

    signed: SignedManifest
    stage: Path
    staged: StagedBundle | None
    already_installed: bool = False
    reused: bool = False  # a completed stage of the same manifest was there already

    @property
    def manifest(self) -> Manifest:
        return self.signed.manifest


def locate(source: Path, repo: Repository, *, stage_dir: Path | None = None,
           stage: Path | None = None) -> tuple[Kind, Path]:
    """What ``source`` is and where it is staged: ``stage`` (the staging directory itself), else a
    directory named after the bundle in ``stage_dir`` or in the repository's staging area. The
    source is ``staged`` (reopened, not copied) only when it *is* that staging directory; anything
    else (a bundle as built, a packed ``archive``, a site depot entry) is staged from."""
    from airlock.bundle.locate import bundle_kind
    from airlock.bundle.stage import STAGING_MARKER

    source = Path(source)
    if stage is None:
        stage = (Path(stage_dir) / source.resolve().name if stage_dir is not None
                 else repo.layout.staged_bundle(source))
    if (source.is_dir() and not source.is_symlink() and source.resolve() == Path(stage).resolve()
            and (source / STAGING_MARKER).is_file()):
        return "staged", Path(stage)
    return bundle_kind(source), Path(stage)


@dataclass
class _Run:
    repo: Repository | None  # None in check mode: nothing is recorded
    stage: Path | None = None
    staging: bool = False  # the stage directory is written by this run
    installing: bool = False  # the repository records its own failures from here on
    encrypt: bool = False  # the stage holds plaintext of a version to be stored encrypted


def _on_failure(run: _Run, err: AirlockError) -> None:
    """Audit a failure before the install phase (the repository records its own), and remove the
    staged copy unless a re-run can resume from it (interrupted, stick pulled); plaintext staged for
    an encrypted install is never kept."""
    from airlock.fsutil import rmtree_writable

    if run.repo is not None and not run.installing:
        with contextlib.suppress(Exception):
            run.repo.record_failure("install-bundle", None, err)
    resumable = err.rule in RESUMABLE and not run.encrypt
    if run.staging and run.stage is not None and not resumable and run.stage.exists():
        rmtree_writable(run.stage)
    if run.encrypt and run.stage is not None and not run.stage.exists():
        from airlock.repo.encryption import clear_plaintext_stage

        clear_plaintext_stage(run.stage)


def _signed_source(source: Path, kind: Kind, trust: Trust, compatible: str | None) -> tuple[
        SignedManifest, StagedBundle | None]:
    from airlock.bundle.locate import signed_manifest
    from airlock.bundle.stage import open_staged

    if kind == "staged":
        staged = open_staged(source, trust, compatible=compatible)
        return staged.signed, staged
    return signed_manifest(source, trust), None


def _already_installed(repo: Repository, signed: SignedManifest, plans: list[Plan] | None) -> bool:
    """This very bundle (its manifest bytes are kept) installed, and nothing would change."""
    from airlock.bundle.manifest import MANIFEST_NAME

    if plans is None or any(p.changed for p in plans):
        return False
    try:
        kept = (repo.layout.bundle_record(signed.manifest.bundle_id) / MANIFEST_NAME).read_bytes()
    except OSError:
        return False
    return kept == signed.data


def _open_or_stage(source: Path, kind: Kind, stage: Path, trust: Trust, compatible: str | None,
                   installed_sequence: int | None, bar: Bar, run: _Run, signed: SignedManifest
                   ) -> tuple[StagedBundle, bool]:
    """A completed stage of these very manifest bytes is reopened (nothing copied or hashed again);
    one that changed since is started over; anything else is staged (an interrupted stage resumes).
    Returns the staged bundle and whether it was reused."""
    from airlock.bundle.pack import stage_archive
    from airlock.bundle.stage import COMPLETE_MARKER, open_staged, stage_bundle
    from airlock.fsutil import rmtree_writable

    if (stage / COMPLETE_MARKER).is_file():
        try:
            reopened = open_staged(stage, trust, compatible=compatible)
            if reopened.signed.data == signed.data:
                return reopened, True
        except IntegrityError as exc:
            if exc.rule != "staging-changed":
                raise
            rmtree_writable(stage)  # ours (open_staged checked owner, mode and marker): start over
    run.staging = True
    m = signed.manifest
    with bar(f"staging {m.bundle_id}", m.total_bytes) as tick:
        how = stage_archive if kind == "archive" else stage_bundle
        return how(source, stage, trust, compatible=compatible, installed_sequence=installed_sequence,
                   progress=tick), False


def stage_for_install(source: Path, repo: Repository, trust: Trust, *, stage: Path | None = None,
                      compatible: str | None = None, bar: Bar = no_bar) -> StageResult:
    """The stage step on its own (Ansible's ``airlock_bundle``): signature and policy first, then the
    space the stage needs; a bundle already installed is not staged again (a re-run changes
    nothing). ``stage``: the staging directory itself (the module's ``dest``)."""
    source = Path(source)
    kind, stage = locate(source, repo, stage=stage)
    run = _Run(repo=repo, stage=stage)
    try:
        from airlock.bundle.verify import check_policy
        from airlock.repo.space import bundle_space

        repo.check_owner()
        signed, reopened = _signed_source(source, kind, trust, compatible)
        installed = repo.installed_sequence()
        check_policy(signed.manifest, compatible=compatible, installed_sequence=installed)
        if reopened is not None:
            return StageResult(signed, stage, reopened, reused=True)
        plans = (repo.plan_bundle(signed.manifest, source) if kind == "dir" else None)
        if _already_installed(repo, signed, plans):
            return StageResult(signed, stage, None, already_installed=True)
        bundle_space(repo, signed.manifest, stage).check(repo.layout.repo)
        staged, reused = _open_or_stage(source, kind, stage, trust, compatible, installed, bar, run, signed)
        return StageResult(signed, stage, staged, reused=reused)
    except (Exception, KeyboardInterrupt) as exc:
        _on_failure(run, from_exception(exc))
        raise


def install_bundle(source: Path, repo: Repository, trust: Trust, *, stage_dir: Path | None = None,
                   stage: Path | None = None, compatible: str | None = None, activate: bool = True,
                   encrypt: str | None = None, check: bool = False, bar: Bar = no_bar) -> InstallResult:
    """Install every model of the bundle at ``source`` into ``repo`` (see the module docstring).
    ``stage_dir``: the parent directory to stage in (default the repository's staging area);
    ``stage``: the staging directory itself (a completed one is reopened, not copied again).
    ``check``: plan only, write nothing (a space shortfall is reported in the result, not raised).
    Failures raise the AirlockError of the first refusal, audited, the stage removed unless a
    re-run resumes it."""
    source = Path(source)
    run = _Run(repo=None if check else repo)
    try:
        kind, where = locate(source, repo, stage_dir=stage_dir, stage=stage)
        return _install(source, kind, where, repo, trust, compatible, activate, encrypt, check, bar, run)
    except (Exception, KeyboardInterrupt) as exc:
        if not check:
            _on_failure(run, from_exception(exc))
        raise


def _install(source: Path, kind: Kind, stage: Path, repo: Repository, trust: Trust, compatible: str | None,
             activate: bool, encrypt: str | None, check: bool, bar: Bar, run: _Run) -> InstallResult:
    from airlock.bundle.stage import STAGING_MARKER
    from airlock.bundle.verify import check_policy
    from airlock.fsutil import rmtree_writable
    from airlock.repo.space import bundle_space

    repo.check_owner()  # cheap checks first: owner/group, signature, policy, space
    signed, staged = _signed_source(source, kind, trust, compatible)
    m = signed.manifest
    installed = repo.installed_sequence()
    check_policy(m, compatible=compatible, installed_sequence=installed)
    # a packed bundle's payloads cannot be opened in place: outside check mode it is planned once staged
    plan_root = stage if kind == "staged" else source
    plans = (repo.plan_bundle(m, plan_root, activate=activate, encrypt=encrypt)
             if check or kind != "archive" else None)
    space = bundle_space(repo, m, stage, encrypt=encrypt)
    result = InstallResult(m, signed.signer, plans or [], space, stage, check=check)
    if check:
        try:
            space.check(repo.layout.repo)
        except AirlockError as exc:
            result.space_error = exc
        return result
    if _already_installed(repo, signed, plans):
        if kind == "staged" or (stage / STAGING_MARKER).is_file():
            rmtree_writable(stage)  # a leftover stage of an installed bundle
        result.already_installed = True
        return result
    space.check(repo.layout.repo)
    run.stage = stage
    if encrypt is not None:  # the KEK must work before any plaintext is staged (issue 21)
        from airlock.repo.encryption import check_usable, mark_plaintext_stage, resolve

        check_usable(resolve(encrypt, repo.keys, "install-bundle --encrypt"))
        mark_plaintext_stage(stage)  # a kill -9 from here on: recover() removes the staged plaintext
        run.encrypt = True
    if staged is None:
        staged, _reused = _open_or_stage(source, kind, stage, trust, compatible, installed, bar, run, signed)
    run.installing = True
    with bar("installing", (space.install_bytes + space.linked_bytes) or None) as tick:
        result.plans = repo.install_from_bundle(staged, activate=activate, encrypt=encrypt, progress=tick)
    result.counters = staged.counters
    # installed: the staged copy is no longer needed (manifest, signature and deltas were kept)
    rmtree_writable(stage)
    if encrypt is not None:
        from airlock.repo.encryption import clear_plaintext_stage

        clear_plaintext_stage(stage)
    return result
