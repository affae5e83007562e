"""The ``airlock`` command line: a thin layer over the engine."""

from __future__ import annotations

import signal
import sys

import typer

from airlock import __version__
from airlock.cli import (
    audit,
    backup,
    bundle,
    common,
    delta,
    depot,
    fleet,
    keys,
    metrics,
    model,
    preflight,
    receipt,
    report,
    serve,
    tier,
)
from airlock.errors import from_exception

app = typer.Typer(
    name="airlock",
    help="Signed bundles, tensor-aware model deltas and fleet updates for air-gapped LLM appliances.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: readable at 80 columns, no option names cut off
)
app.add_typer(bundle.app, name="bundle", help="Build, sign, verify, pack and stage bundles.")
app.add_typer(delta.app, name="delta", help="Make, apply and inspect tensor-aware model deltas.")
app.add_typer(model.app, name="model", help="The model repository on an appliance.")
app.add_typer(audit.app, name="audit", help="The hash-chained audit log.")
app.add_typer(keys.app, name="keys", help="Encryption at rest: key providers, rotation.")
app.add_typer(serve.app, name="serve", help="Triton serving: repository generation, reload, smoke test.")
app.add_typer(receipt.app, name="receipt", help="Signed site receipts: create at a site, verify them here.")
app.add_typer(tier.app, name="tier", help="Storage tiers: hot, warm (site share), cold; demote/promote.")
app.add_typer(backup.app, name="backup", help="Backups with restic: create, list, restore, check, drill.")
app.add_typer(depot.app, name="depot", help="The site depot: import a bundle once, appliances stage from it.")
fleet.register(app)
preflight.register(app)
metrics.register(app)
report.register(app)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"airlock {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the Airlock version and exit."),
) -> None:
    """Airlock installs and updates air-gapped LLM inference appliances."""
    from airlock.crypto.harden import harden_process

    harden_process()  # any command may unwrap a data key (model install/update/verify/rollback, keys)


def _sigterm(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM is handled like Ctrl-C: one line, exit 130, audited


def main() -> None:
    """Run the CLI. Usage errors exit 2 (typer); every other failure is one line (valid JSON with
    --json) with its documented exit code, never a traceback (airlock.cli.common.handle_errors);
    this is the last guard for whatever escapes a command's own handler."""
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        app()
    except (Exception, KeyboardInterrupt) as exc:
        try:
            common.fail(from_exception(exc), "--json" in sys.argv[1:])
        except typer.Exit as done:
            sys.exit(done.exit_code)
