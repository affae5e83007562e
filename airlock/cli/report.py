"""``airlock report``: the fleet report (self-contained HTML + signed JSON twin) from verify reports."""

from __future__ import annotations

from pathlib import Path

import typer

from airlock.cli.common import JsonOpt, emit_json, handle_errors, out


def report(inputs: list[str] = typer.Argument(..., metavar="[HOST=]VERIFY_JSON...",
                                              help="`airlock verify --json` (the fleet) and/or "
                                              "HOST=`airlock model verify --json` (one host's compliance)."),
           out_dir: Path = typer.Option(Path("."), "--out", "-o",
                                        help="Directory for fleet-report.html/.json."),
           signer: str = typer.Option(None, "--sign", metavar="FPR", help="Site key fingerprint: the JSON "
                                      "twin gets a detached armoured signature (fleet-report.json.asc)."),
           gnupghome: Path = typer.Option(None, "--gnupghome", help="GnuPG home holding the site key."),
           passphrase_file: Path = typer.Option(None, "--passphrase-file",
                                                envvar="AIRLOCK_GPG_PASSPHRASE_FILE",
                                                help="File holding the key passphrase."),
           as_json: bool = JsonOpt) -> None:
    """Render the fleet's state (hosts x models, active and previous versions, drift, last update,
    audit heads, signature status, a chart of versions across the fleet) into one self-contained
    HTML page, with a JSON twin signed through gpg for compliance archives."""
    from airlock.monitoring.report import load_hosts, write_report

    with handle_errors(as_json):
        files = write_report(load_hosts(inputs), out_dir, signer=signer, gnupghome=gnupghome,
                             passphrase_file=passphrase_file)
        paths = {"html": str(files.html), "json": str(files.json),
                 "signature": str(files.signature) if files.signature else None}
        if as_json:
            emit_json({"ok": True, **paths})
        else:
            out.print(f"report: {files.html}\ntwin:   {files.json}" +
                      (f"\nsigned: {files.signature}" if files.signature else " (unsigned: no --sign)"),
                      highlight=False, soft_wrap=True, markup=False)


def register(app: typer.Typer) -> None:
    app.command("report")(report)
