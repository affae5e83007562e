"""`airlock depot ...`: the site depot on the warm tier (docs/depot.md).

import: a bundle from the stick, verified once into the depot; appliances then stage from it
(`airlock bundle stage DEPOT/ID`, or the model_update role with model_update_depot).
Exit codes as `bundle verify` (10 signature .. 15 downgrade), 30 a different bundle under the same id,
31 no space on the depot, 32 another import holds the depot lock."""

from __future__ import annotations

from pathlib import Path

import typer

from airlock.cli.bundle import (
    CompatOpt,
    HomeOpt,
    IgnoreProfileOpt,
    KeyringOpt,
    ProgressOpt,
    TrustOpt,
    _profile,
    _show,
    _trust,
)
from airlock.cli.common import JsonOpt, emit_json, handle_errors, out, progress_bytes
from airlock.errors import human_bytes
from airlock.textsafe import safe

app = typer.Typer(no_args_is_help=True,
                  help="The site depot: import a bundle once, appliances stage from it.")

DepotOpt = typer.Option(..., "--depot", "-d", envvar="AIRLOCK_DEPOT",
                        help="The depot directory on the warm tier, e.g. /mnt/airlock-warm/depot "
                             "(or $AIRLOCK_DEPOT).")


@app.command("import")
def import_cmd(
    bundle: Path = typer.Argument(..., help="Bundle directory (e.g. on the USB stick) or packed .tar."),
    depot: Path = DepotOpt,
    trust: list[str] = TrustOpt,
    keyring: Path | None = KeyringOpt,
    gnupghome: Path | None = HomeOpt,
    compatible: str | None = CompatOpt,
    ignore_profile: bool = IgnoreProfileOpt,
    lock_timeout: float = typer.Option(0, "--lock-timeout", help="Seconds to wait for another import."),
    as_json: bool = JsonOpt,
    progress: bool = ProgressOpt,
) -> None:
    """Verify BUNDLE (signature, then every block and file hash while copied) into the depot as a
    staged bundle under its bundle id, its signature kept. An interrupted import resumes by block;
    the same bundle again changes nothing."""
    from airlock.bundle.locate import signed_manifest
    from airlock.depot import Depot

    with handle_errors(as_json):
        t = _trust(trust, keyring, gnupghome)
        profile = _profile(compatible, ignore_profile, as_json)
        total = signed_manifest(bundle, t).manifest.total_bytes if _show(progress, as_json) else None
        with progress_bytes("importing", total, _show(progress, as_json)) as tick:
            result = Depot(depot).import_bundle(bundle, t, compatible=profile, progress=tick,
                                                lock_timeout=lock_timeout)
    if as_json:
        emit_json(result.as_dict())
        return
    e = result.entry
    if not result.imported:
        out.print(f"{safe(e.bundle_id)} is already in the depot {safe(depot)} (imported "
                  f"{safe(e.imported_at)}); nothing changed", highlight=False)
        return
    resumed = f", {human_bytes(result.bytes_reused)} resumed" if result.bytes_reused else ""
    out.print(f"[green]imported[/] {safe(e.bundle_id)} ({safe(e.kind)}, sequence {e.sequence}) into "
              f"{safe(e.path)}: {e.files} files, {human_bytes(e.bytes)} verified{resumed}, signed by "
              f"{safe(e.signer)}", highlight=False)


@app.command("list")
def list_cmd(
    depot: Path = DepotOpt,
    as_json: bool = JsonOpt,
) -> None:
    """The bundles in the depot (ready, or an import in progress). Reads only."""
    from airlock.depot import Depot

    with handle_errors(as_json):
        entries = Depot(depot).entries()
    if as_json:
        emit_json({"ok": True, "depot": str(depot), "bundles": [e.as_dict() for e in entries]})
        return
    if not entries:
        out.print(f"no bundles in {safe(depot)}", highlight=False)
    for e in entries:
        models = ", ".join(f"{m.get('name')} {m.get('version')}" for m in e.models)
        out.print(f"{safe(e.bundle_id)}  {e.state}  {safe(e.kind)}  seq {e.sequence}  "
                  f"{human_bytes(e.bytes)}  {safe(models)}  {safe(e.imported_at)}", highlight=False)


@app.command()
def status(
    depot: Path = DepotOpt,
    bundle_id: list[str] = typer.Option([], "--bundle", "-b", help="Only this bundle id; repeatable."),
    verify: bool = typer.Option(False, "--verify", help="Re-check every ready bundle read-only: "
                                "signature, every block and file hash (needs --trust)."),
    trust: list[str] = typer.Option([], "--trust", "-t", help="Pinned signer fingerprint (with --verify)."),
    keyring: Path | None = KeyringOpt,
    gnupghome: Path | None = HomeOpt,
    as_json: bool = JsonOpt,
    progress: bool = ProgressOpt,
) -> None:
    """Where the depot lives (filesystem, free space) and its bundles; with --verify every ready
    bundle is re-hashed (exit code of the first failure). Changes nothing."""
    from airlock.depot import Depot

    if verify and not trust:
        raise typer.BadParameter("--verify needs --trust FPR", param_hint="--verify")
    with handle_errors(as_json):
        d = Depot(depot)
        entries = [d.entry(b) for b in bundle_id] if bundle_id else d.entries()
        usage = d.usage()
        if verify:
            t = _trust(trust, keyring, gnupghome)
            ready = [e for e in entries if e.state == "ready"]
            total = sum(e.bytes for e in ready)
            with progress_bytes("verifying", total, _show(progress, as_json)) as tick:
                for e in ready:
                    d.verify(e, t, progress=tick)
    failed = [e for e in entries if e.verified is False]
    if as_json:
        emit_json({"ok": not failed, **usage, "bundles": [e.as_dict() for e in entries]})
    else:
        out.print(f"depot {safe(depot)} on {safe(usage['filesystem'] or '?')}: "
                  f"{human_bytes(usage['free_bytes'])} free of {human_bytes(usage['total_bytes'])}; "
                  f"{len(entries)} bundle(s)", highlight=False)
        for e in entries:
            check = {True: "  verified", False: "  FAILED: " + str((e.error or {}).get("message")),
                     None: ""}[e.verified]
            out.print(f"  {safe(e.bundle_id)}  {e.state}  {human_bytes(e.bytes)}{safe(check)}",
                      highlight=False)
    if failed:
        code = int(str((failed[0].error or {}).get("exit_code", 13)))
        raise typer.Exit(code)


@app.command()
def remove(
    bundle_id: str = typer.Argument(..., help="The bundle id (as `airlock depot list` shows it)."),
    depot: Path = DepotOpt,
    lock_timeout: float = typer.Option(0, "--lock-timeout", help="Seconds to wait for an import."),
    as_json: bool = JsonOpt,
) -> None:
    """Remove a bundle (or a stalled import) from the depot; to repair one, remove and import it again."""
    from airlock.depot import Depot

    with handle_errors(as_json):
        gone = Depot(depot).remove(bundle_id, lock_timeout=lock_timeout)
    if as_json:
        emit_json({"ok": True, "changed": True, **gone.as_dict()})
    else:
        out.print(f"removed {safe(gone.bundle_id)} ({gone.state}) from {safe(depot)}", highlight=False)
