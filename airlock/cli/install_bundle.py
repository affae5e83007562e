"""``airlock model install-bundle``: space first, then stage (resumable), then install; one result
line per model and the resume statistics. Kept apart from ``model.py`` for its size."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from airlock.cli.common import check_banner, console, emit_json, handle_errors, out, progress_bytes
from airlock.errors import AirlockError, MediaGoneError, human_bytes

RESUMABLE = ("interrupted", MediaGoneError.rule)


@dataclass
class _State:
    repo: Any = None
    stage: Path | None = None
    staging: bool = False  # stage directory written by this run
    installing: bool = False  # the repository records its own failures from here on
    encrypt: bool = False  # the stage holds plaintext of a version to be stored encrypted


def _on_error(state: _State) -> Callable[[AirlockError], None]:
    """Audit a failure of the staging phase (the repository records the install phase itself), and
    remove the staged copy unless a re-run can resume from it (interrupted, stick pulled)."""
    from airlock.fsutil import rmtree_writable

    def hook(err: AirlockError) -> None:
        if state.repo is not None and not state.installing:
            state.repo.record_failure("install-bundle", None, err)
        resumable = err.rule in RESUMABLE and not state.encrypt  # never keep plaintext of --encrypt
        if state.staging and state.stage is not None and not resumable and state.stage.exists():
            rmtree_writable(state.stage)
        if state.encrypt and state.stage is not None and not state.stage.exists():
            from airlock.repo.encryption import clear_plaintext_stage

            clear_plaintext_stage(state.stage)
    return hook


def _result_lines(plans: list[Any]) -> list[str]:
    lines = []
    for p in plans:
        active = " (active)" if p.after.get("active") == p.version else ""
        if not p.changed:
            lines.append(f"{p.model} {p.version} already installed{active}")
        elif p.action == "update":
            lines.append(f"updated {p.model} {p.before.get('active')} -> {p.version}{active}")
        else:
            lines.append(f"installed {p.model} {p.version}{active}")
    return lines


def install_bundle(bundle: Path, *, trust: list[str], keyring: Path | None, gnupghome: Path | None,
                   compatible: str | None, activate: bool, stage_dir: Path | None, encrypt: str | None,
                   keys_config: Path | None, check: bool, repo_factory: Callable[[], Any],
                   as_json: bool) -> None:
    from airlock.bundle import Trust, stage_bundle
    from airlock.bundle.locate import bundle_kind, signed_manifest
    from airlock.bundle.pack import stage_archive
    from airlock.bundle.verify import check_policy
    from airlock.fsutil import rmtree_writable
    from airlock.repo.space import bundle_space

    state = _State()
    show = not as_json and console.is_terminal
    with handle_errors(as_json, on_error=_on_error(state)):
        repo = repo_factory()
        state.repo = None if check else repo  # check mode records nothing
        t = Trust(fingerprints=trust, gnupghome=gnupghome, keyring=keyring)
        stage = state.stage = (stage_dir or repo.layout.packages / "staged") / bundle.resolve().name
        repo.check_owner()  # cheap checks first: owner/group, signature, policy, space
        packed = bundle_kind(bundle) == "archive"
        signed = signed_manifest(bundle, t)
        m = signed.manifest
        check_policy(m, compatible=compatible, installed_sequence=repo.installed_sequence())
        space = bundle_space(repo, m, stage)
        if check:
            plans = repo.plan_bundle(m, bundle, activate=activate, encrypt=encrypt)
            if not as_json:
                check_banner()
            try:
                space.check(repo.layout.repo)
                space_error = None
            except AirlockError as exc:
                space_error = exc
            _report(m, plans, space, None, as_json, check=True, space_error=space_error)
            return
        space.check(repo.layout.repo)
        if encrypt is not None:  # the KEK must work before any plaintext is staged (issue 21)
            from airlock.repo.encryption import check_usable, mark_plaintext_stage, resolve

            check_usable(resolve(encrypt, repo.keys, "install-bundle --encrypt"))
            mark_plaintext_stage(stage)  # a kill -9 from here on: recover() removes the staged plaintext
            state.encrypt = True
        state.staging = True
        with progress_bytes(f"staging {m.bundle_id}", m.total_bytes, show) as tick:
            how = stage_archive if packed else stage_bundle
            staged = how(bundle, stage, t, compatible=compatible,
                         installed_sequence=repo.installed_sequence(), progress=tick)
        state.installing = True
        total = space.install_bytes + space.linked_bytes
        with progress_bytes("installing", total or None, show) as tick:
            plans = repo.install_from_bundle(staged, activate=activate, encrypt=encrypt, progress=tick)
        # installed: the staged copy is no longer needed (manifest, signature and deltas were kept)
        rmtree_writable(stage)
        if encrypt is not None:
            from airlock.repo.encryption import clear_plaintext_stage

            clear_plaintext_stage(stage)
        _report(m, plans, space, staged.counters, as_json, check=False)


def _report(m: Any, plans: list[Any], space: Any, counters: Any, as_json: bool, *, check: bool,
            space_error: AirlockError | None = None) -> None:
    from dataclasses import asdict

    if as_json:
        doc: dict[str, Any] = {"ok": space_error is None, "check_mode": check, "bundle_id": m.bundle_id,
                               "sequence": m.sequence, "space": space.as_dict(),
                               "plans": [p.as_dict() for p in plans]}
        if counters is not None:
            doc["stage"] = asdict(counters)
        if space_error is not None:
            doc.update(space_error.as_dict())
        emit_json(doc)
    else:
        for p in plans:
            out.print(p.diff, highlight=False, soft_wrap=True, markup=False, end="")
        if counters is not None:
            c = counters
            resumed = (f", resumed: {human_bytes(c.bytes_reused)} already staged ({c.blocks_reused} blocks "
                       f"reused, {c.blocks_copied} copied)" if c.bytes_reused else "")
            out.print(f"staged {m.bundle_id}: {human_bytes(c.bytes_copied)} copied{resumed}",
                      highlight=False, markup=False)
        if check:
            note = f"; {space_error}" if space_error is not None else ""
            out.print(f"would stage {human_bytes(space.stage_bytes)} and write "
                      f"{human_bytes(space.install_bytes)}{note}", highlight=False, markup=False,
                      soft_wrap=True)
        else:
            for line in _result_lines(plans):
                out.print(line, highlight=False, markup=False)
    if space_error is not None:
        if as_json:  # the document above is the answer
            raise typer.Exit(space_error.exit_code)
        raise space_error
