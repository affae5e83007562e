"""``airlock model install-bundle``: the front of ``airlock.installer.install_bundle`` (space first,
then stage (resumable), then install); one result line per model and the resume statistics. Kept
apart from ``model.py`` for its size."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from airlock.cli.common import check_banner, console, emit_json, handle_errors, out, progress_bytes
from airlock.errors import human_bytes


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
                   as_json: bool, depot: Path | None = None) -> None:
    """Options in, ``airlock.installer.install_bundle`` (space, stage, install, clean up, audit a
    failure), output out. With ``depot``, ``bundle`` is a bundle id there (``Depot.entry``: a bundle
    not in the depot is refused before the repository is opened)."""
    from airlock import installer
    from airlock.bundle import Trust
    from airlock.depot import Depot

    show = not as_json and console.is_terminal

    def bar(label: str, total: int | None) -> Any:
        return progress_bytes(label, total, show)

    with handle_errors(as_json):
        if depot is not None:
            bundle = Path(Depot(depot).entry(str(bundle)).path)
        repo = repo_factory()
        t = Trust(fingerprints=trust, gnupghome=gnupghome, keyring=keyring)
        result = installer.install_bundle(bundle, repo, t, stage_dir=stage_dir, compatible=compatible,
                                          activate=activate, encrypt=encrypt, check=check, bar=bar)
        if check and not as_json:
            check_banner()
        _report(result, as_json)


def _report(result: Any, as_json: bool) -> None:
    m, plans, space, counters = result.manifest, result.plans, result.space, result.counters
    check, space_error = result.check, result.space_error
    if as_json:
        emit_json(result.as_dict())
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
