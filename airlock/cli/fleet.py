"""`airlock install|update|rollback|verify`: fleet operations over ansible-runner.

Progress per batch and per host comes from runner events; the final table has one row per host
(host, from, to, result, duration). Trust and any other variables reach Ansible through
``env/extravars`` (mode 0600), never through a command line."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from airlock.cli.common import JsonOpt, console, emit_json, handle_errors, out
from airlock.errors import FleetError

RESULT_STYLE = {"ok": "green", "changed": "yellow", "failed": "bold red", "failed (rolled back)": "bold red",
                "unreachable": "bold red", "not started": "dim"}


def _extravars(bundle: Path | None, trust: list[str], keyring: Path | None, root: Path | None,
               extra: list[str], extra_file: Path | None) -> dict[str, Any]:
    ev: dict[str, Any] = {}
    if extra_file is not None:
        try:
            ev.update(json.loads(extra_file.read_text()))
        except (OSError, ValueError) as exc:
            raise FleetError(f"{extra_file}: not a JSON object of variables: {exc}", path=str(extra_file),
                             rule="extravars") from exc
    for item in extra:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise FleetError(f"-e {item!r}: expected KEY=VALUE", rule="extravars")
        try:
            ev[key] = json.loads(value)
        except ValueError:
            ev[key] = value
    if bundle is not None:
        ev["airlock_bundle"] = str(bundle.resolve())
    if trust:
        ev["airlock_trust"] = trust
    if keyring is not None:
        ev["airlock_keyring"] = str(keyring.resolve())
    if root is not None:
        ev["airlock_root"] = str(root)
    return ev


class _Progress:
    """Prints a line per batch and per host outcome as the runner events arrive."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.batch = 0
        self.hosts_in_batch: list[str] = []

    def __call__(self, event: dict[str, Any]) -> None:
        if self.quiet:
            return
        kind = event.get("event")
        data = event.get("event_data") or {}
        if kind == "playbook_on_play_start":
            self.batch += 1
            self.hosts_in_batch = []
            console.print(f"[bold]batch {self.batch}[/] {escape(str(data.get('play', '')))}", highlight=False)
        elif kind in ("runner_on_ok", "runner_on_failed", "runner_on_unreachable"):
            host = str(data.get("host"))
            if host not in self.hosts_in_batch:
                self.hosts_in_batch.append(host)
                console.print(f"  {escape(host)}: started", highlight=False)
            res = data.get("res") or {}
            if kind == "runner_on_failed" and not data.get("ignore_errors"):
                console.print(f"  [red]{escape(host)}: failed[/] {escape(str(data.get('task')))}: "
                              f"{escape(str(res.get('msg', ''))[:200])}", highlight=False)
            elif kind == "runner_on_unreachable":
                msg = escape(str(res.get("msg", ""))[:200])
                console.print(f"  [red]{escape(host)}: unreachable[/] {msg}", highlight=False)
            elif res.get("changed"):
                console.print(f"  {escape(host)}: changed {escape(str(data.get('task')))}", highlight=False)


def _table(result: Any) -> Table:
    table = Table(title="Fleet summary")
    for col in ("host", "from", "to", "result", "duration"):
        table.add_column(col)
    for h in result.hosts:
        style = RESULT_STYLE.get(h.result, "")
        table.add_row(h.host, h.from_version or "-", h.to_version or "-",
                      f"[{style}]{escape(h.result)}[/]" if style else escape(h.result), f"{h.duration:.1f}s")
    return table


def _run(name: str, inventory: Path, bundle: Path | None, trust: list[str], keyring: Path | None,
         root: Path | None, limit: str | None, check: bool, diff: bool, extra: list[str],
         extra_file: Path | None, as_json: bool, runner_dir: Path | None) -> None:
    from airlock.fleet import run_playbook

    with handle_errors(as_json):
        if name in ("install", "update") and bundle is None:
            raise FleetError(f"airlock {name} needs --bundle DIR", rule="bundle")
        if bundle is not None and not bundle.is_dir():
            raise FleetError(f"{bundle}: no such bundle directory", path=str(bundle), rule="bundle")
        ev = _extravars(bundle, trust, keyring, root, extra, extra_file)
        result = run_playbook(name, inventory, ev, limit=limit, check=check, diff=diff or check,
                              on_event=_Progress(as_json), private_data_dir=runner_dir)
    if as_json:
        emit_json(result.as_dict())
    else:
        out.print(_table(result))
        for h in result.hosts:
            if h.message:
                out.print(f"{escape(h.host)}: {escape(h.failed_task or '')}: {escape(h.message)}",
                          highlight=False)
        out.print(f"batches: {result.batches}; status {result.status}, rc {result.rc}", highlight=False)
    if result.rc != 0:
        raise typer.Exit(FleetError.exit_code)


InvOpt = typer.Option(..., "--inventory", "-i", help="Ansible inventory (file or directory).")
BundleOpt = typer.Option(None, "--bundle", "-b", help="Bundle directory (path on the targets unless "
                         "-e airlock_bundle_copy=true copies it from here).")
TrustOpt = typer.Option([], "--trust", "-t", help="Pinned signer fingerprint; repeatable.")
KeyringOpt = typer.Option(None, "--keyring",
                          help="Public keyring with the trusted keys (path on the targets).")
RootOpt = typer.Option(None, "--root", help="Repository root on every target (default: the inventory's).")
LimitOpt = typer.Option(None, "--limit", "-l", help="Ansible host pattern to limit to.")
CheckOpt = typer.Option(False, "--check", help="Check mode: report what would change, change nothing.")
DiffOpt = typer.Option(False, "--diff", help="Show what changes (implied by --check).")
ExtraOpt = typer.Option([], "--extra", "-e", help="Extra variable KEY=VALUE (JSON values); repeatable.")
ExtraFileOpt = typer.Option(None, "--extra-file", help="JSON file of extra variables (for secrets).")
RunnerDirOpt = typer.Option(None, "--runner-dir", help="ansible-runner private data dir "
                            "(default ~/.cache/airlock/runner/<command>).")


COMMANDS = {
    "install": "Install a full bundle on every host of the inventory (playbooks/install.yml).",
    "update": "Rolling update from a delta bundle in serial batches (playbooks/update.yml).",
    "rollback": "Roll models back to the previous good version (playbooks/rollback.yml).",
    "verify": "Compliance check: drift of hashes, modes, versions, signatures; non-zero exit on drift.",
}


def _command(name: str, doc: str) -> Callable[..., None]:
    """One fleet command: the same options for every playbook, run through ``_run``."""

    def command(inventory: Path = InvOpt, bundle: Path = BundleOpt, trust: list[str] = TrustOpt,
                keyring: Path = KeyringOpt, root: Path = RootOpt, limit: str = LimitOpt,
                check: bool = CheckOpt, diff: bool = DiffOpt, extra: list[str] = ExtraOpt,
                extra_file: Path = ExtraFileOpt, as_json: bool = JsonOpt,
                runner_dir: Path = RunnerDirOpt) -> None:
        _run(name, inventory, bundle, trust, keyring, root, limit, check, diff, extra, extra_file,
             as_json, runner_dir)

    command.__doc__ = doc
    command.__name__ = f"{name}_cmd"
    return command


def register(app: typer.Typer) -> None:
    """Add the fleet commands to the root app."""
    for name, doc in COMMANDS.items():
        app.command(name)(_command(name, doc))
