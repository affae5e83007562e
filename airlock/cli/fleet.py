"""`airlock install|update|rollback|verify`: fleet operations over ansible-runner.

Progress per batch and per host comes from runner events; the final table has one row per host
(host, from, to, result, duration). Trust and any other variables reach Ansible through
``env/extravars`` (mode 0600), never through a command line."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from airlock.cli.common import JsonOpt, check_banner, console, emit_json, handle_errors, out, root_option
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


CANARY_WAIT_TASK = "Wait for the decision after the canary batch"  # playbooks/update.yml


class _Progress:
    """Prints a line per batch and per host outcome as the runner events arrive; with
    ``canary_answer`` (``--confirm-canary``), asks whether to go on when update.yml waits for that
    decision after the canary batch, and writes the answer where the play reads it."""

    def __init__(self, quiet: bool, canary_answer: Path | None = None) -> None:
        self.quiet = quiet
        self.batch = 0
        self.hosts_in_batch: list[str] = []
        self.canary_answer = canary_answer

    def _ask_canary(self) -> None:
        assert self.canary_answer is not None
        try:
            go = typer.confirm("Canary batch updated and healthy. Go on with the remaining hosts?",
                               default=False, err=True)
        except (typer.Abort, EOFError, KeyboardInterrupt):  # no answer: stop, never go on by default
            go = False
        self.canary_answer.write_text("yes\n" if go else "no\n")

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        data = event.get("event_data") or {}
        if (self.canary_answer is not None and kind == "playbook_on_task_start"
                and data.get("task") == CANARY_WAIT_TASK and not self.canary_answer.exists()):
            self._ask_canary()
        if self.quiet:
            return
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
    title = "Fleet summary (CHECK MODE: planned, nothing changed)" if result.check else "Fleet summary"
    table = Table(title=title)
    for col in ("host", "from", "to", "result", "duration"):
        table.add_column(col)
    for h in result.hosts:
        style = RESULT_STYLE.get(h.result, "")
        table.add_row(h.host, h.from_version or "-", h.to_version or "-",
                      f"[{style}]{escape(h.result)}[/]" if style else escape(h.result), f"{h.duration:.1f}s")
    return table


def _report(result: Any) -> None:
    """The human report: the table, each host's plan (check mode) and failure, Ansible's own error."""
    out.print(_table(result))
    if result.check:
        for h in result.hosts:
            plan = "".join(h.plan).rstrip()
            out.print(f"[bold]plan for {escape(h.host)}[/]: " + ("no change" if not plan else ""),
                      highlight=False)
            for line in plan.splitlines():
                out.print("  " + escape(line), highlight=False)
    for h in result.hosts:
        if h.message and h.result != "not started":
            out.print(f"{escape(h.host)}: {escape(h.failed_task or '')}: {escape(h.message)}",
                      highlight=False)
    _drift_report(result.hosts)
    if result.error:
        waiting = ", ".join(escape(h.host) for h in result.hosts if h.result == "not started")
        out.print(f"[bold red]Ansible failed before these hosts started:[/] {waiting}", highlight=False)
        out.print(escape(result.error), highlight=False)
    out.print(f"batches: {result.batches}; status {result.status}, rc {result.rc}", highlight=False)
    if result.check:
        check_banner()


def _drift_report(hosts: list[Any]) -> None:
    """Warnings (signatures not checked) loudly, then the drift grouped by host, every item whole."""
    from airlock.repo.verify import drift_text

    for w in sorted({w for h in hosts for w in h.warnings}):
        console.print(f"[bold yellow]WARNING:[/] {escape(w)}", highlight=False)
    for h in hosts:
        if h.drift:
            out.print(f"[bold red]drift on {escape(h.host)}[/] ({len(h.drift)} item(s)):", highlight=False)
            for d in h.drift:
                out.print("  " + escape(drift_text({**d, "host": None})), highlight=False, soft_wrap=True)


@dataclass(frozen=True)
class FleetArgs:
    """Everything a fleet command was given (one place for the eight commands' options)."""

    inventory: Path
    bundle: Path | None = None
    trust: list[str] = field(default_factory=list)
    keyring: Path | None = None
    root: Path | None = None
    limit: str | None = None
    check: bool = False
    diff: bool = False
    extra: list[str] = field(default_factory=list)
    extra_file: Path | None = None
    as_json: bool = False
    runner_dir: Path | None = None
    tags: list[str] = field(default_factory=list)
    skip_tags: list[str] = field(default_factory=list)
    vault_password_file: Path | None = None
    ask_vault_pass: bool = False
    to: str | None = None
    canary_pause: int = 0
    confirm_canary: bool = False


def _split(values: list[str]) -> list[str]:
    return [t.strip() for v in values for t in v.split(",") if t.strip()]


def _run(name: str, a: FleetArgs) -> None:
    from airlock.fleet import Vault, run_playbook

    with handle_errors(a.as_json):
        if name in ("install", "update") and a.bundle is None:
            raise FleetError(f"airlock {name} needs --bundle DIR", rule="bundle")
        if a.bundle is not None and not a.bundle.is_dir():
            raise FleetError(f"{a.bundle}: no such bundle directory", path=str(a.bundle), rule="bundle")
        if a.to is not None and name != "rollback":
            raise FleetError(f"--to is for airlock rollback, not airlock {name}", rule="usage")
        if (a.canary_pause or a.confirm_canary) and name != "update":
            raise FleetError(f"--canary-pause/--confirm-canary are for airlock update, not airlock {name}",
                             rule="usage")
        if a.vault_password_file is not None and a.ask_vault_pass:
            raise FleetError("give --vault-password-file or --ask-vault-pass, not both", rule="vault")
        ev = _extravars(a.bundle, a.trust, a.keyring, a.root, a.extra, a.extra_file)
        if a.to is not None:
            ev["airlock_rollback_to"] = a.to
        if a.canary_pause:
            ev["airlock_update_canary_pause_seconds"] = a.canary_pause
        password = typer.prompt("Vault password", hide_input=True, err=True) if a.ask_vault_pass else None
        vault = Vault(a.vault_password_file, password)
        if a.check and not a.as_json:
            check_banner()
        with tempfile.TemporaryDirectory(prefix="airlock-canary-") as tmp:
            # Under ansible-runner a pause prompt would wait on a pty nobody reads: the CLI always
            # takes the decision itself (also when the inventory sets airlock_update_canary_confirm).
            answer = Path(tmp) / "answer" if name == "update" else None
            if answer is not None:
                ev["airlock_update_canary_answer_file"] = str(answer)
            if a.confirm_canary:
                ev["airlock_update_canary_confirm"] = True
            result = run_playbook(name, a.inventory, ev, limit=a.limit, check=a.check, diff=a.diff or a.check,
                                  on_event=_Progress(a.as_json, answer), private_data_dir=a.runner_dir,
                                  tags=_split(a.tags), skip_tags=_split(a.skip_tags), vault=vault)
    if a.as_json:
        emit_json({**result.as_dict(), "drift": [d for h in result.hosts for d in h.drift],
                   "warnings": sorted({w for h in result.hosts for w in h.warnings})})
    else:
        _report(result)
    if result.rc != 0:
        raise typer.Exit(FleetError.exit_code)


InvOpt = typer.Option(..., "--inventory", "-i", help="Ansible inventory (file or directory).")
BundleOpt = typer.Option(None, "--bundle", "-b", help="Bundle directory (path on the targets unless "
                         "-e airlock_bundle_copy=true copies it from here).")
TrustOpt = typer.Option([], "--trust", "-t", help="Pinned signer fingerprint; repeatable.")
KeyringOpt = typer.Option(None, "--keyring",
                          help="Public keyring with the trusted keys (path on the targets).")
RootOpt = root_option(None, "Repository root on every target (default: the inventory's).", envvar=None)
LimitOpt = typer.Option(None, "--limit", "-l", help="Ansible host pattern to limit to.")
CheckOpt = typer.Option(False, "--check", help="Check mode: report what would change, change nothing.")
DiffOpt = typer.Option(False, "--diff", help="Show what changes (implied by --check).")
ExtraOpt = typer.Option([], "--extra", "-e", help="Extra variable KEY=VALUE (JSON values); repeatable.")
ExtraFileOpt = typer.Option(None, "--extra-file", help="JSON file of extra variables (for secrets).")
RunnerDirOpt = typer.Option(None, "--runner-dir", help="ansible-runner private data dir "
                            "(default ~/.cache/airlock/runner/<command>).")
TagsOpt = typer.Option([], "--tags", help="Only run tasks and roles with these tags (comma list; "
                       "repeatable).")
SkipTagsOpt = typer.Option([], "--skip-tags", help="Skip tasks and roles with these tags (comma list; "
                           "repeatable).")
VaultFileOpt = typer.Option(None, "--vault-password-file", help="File holding the password of vaulted "
                            "inventory variables.")
AskVaultOpt = typer.Option(False, "--ask-vault-pass", help="Ask for the vault password (given to Ansible's "
                           "prompt, never written to disk).")
ToOpt = typer.Option(None, "--to", help="rollback: the version to roll back to (default: the previous good "
                     "version; a host already there is unchanged).")
CanaryPauseOpt = typer.Option(0, "--canary-pause", min=0, help="update: seconds to wait after the canary "
                              "batch before the next batch (Ctrl-C then A aborts).")
ConfirmCanaryOpt = typer.Option(False, "--confirm-canary", help="update: after the canary batch, ask whether "
                                "to go on (anything but yes stops the rollout).")


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
                runner_dir: Path = RunnerDirOpt, tags: list[str] = TagsOpt,
                skip_tags: list[str] = SkipTagsOpt,
                vault_password_file: Path = VaultFileOpt, ask_vault_pass: bool = AskVaultOpt,
                to: str = ToOpt, canary_pause: int = CanaryPauseOpt,
                confirm_canary: bool = ConfirmCanaryOpt) -> None:
        _run(name, FleetArgs(inventory, bundle, trust, keyring, root, limit, check, diff, extra, extra_file,
                             as_json, runner_dir, tags, skip_tags, vault_password_file, ask_vault_pass, to,
                             canary_pause, confirm_canary))

    command.__doc__ = doc
    command.__name__ = f"{name}_cmd"
    return command


def register(app: typer.Typer) -> None:
    """Add the fleet commands to the root app."""
    for name, doc in COMMANDS.items():
        app.command(name)(_command(name, doc))
