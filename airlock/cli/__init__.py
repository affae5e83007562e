"""The ``airlock`` command line: a thin layer over the engine."""

from __future__ import annotations

import typer

from airlock import __version__
from airlock.cli import audit, bundle, delta, fleet, keys, model, preflight, serve

app = typer.Typer(
    name="airlock",
    help="Signed bundles, tensor-aware model deltas and fleet updates for air-gapped LLM appliances.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)
app.add_typer(bundle.app, name="bundle", help="Build, sign, verify, pack and stage bundles.")
app.add_typer(delta.app, name="delta", help="Make, apply and inspect tensor-aware model deltas.")
app.add_typer(model.app, name="model", help="The model repository on an appliance.")
app.add_typer(audit.app, name="audit", help="The hash-chained audit log.")
app.add_typer(keys.app, name="keys", help="Encryption at rest: key providers, rotation.")
app.add_typer(serve.app, name="serve", help="Triton serving: repository generation, reload, smoke test.")
fleet.register(app)
preflight.register(app)


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


def main() -> None:
    app()
