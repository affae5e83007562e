"""`airlock receipt ...`: create (site side) and verify (release side) signed site receipts
(docs/receipts.md). Exit codes: 10 signature, 11 schema, 16 replayed or stale receipt."""

from __future__ import annotations

import socket
from pathlib import Path

import typer

from airlock.cli.common import JsonOpt, emit_json, handle_errors, out, root_option
from airlock.textsafe import safe

app = typer.Typer(no_args_is_help=True, help="Signed site receipts: what a site runs, for the next bundle.")


def _roots(roots: list[str]) -> dict[str, Path]:
    """``--root PATH`` (this host, named by its hostname) or ``--root NAME=PATH`` (repeatable)."""
    out_: dict[str, Path] = {}
    for r in roots:
        name, sep, path = r.partition("=")
        if not sep:
            if len(roots) > 1:
                raise typer.BadParameter("name each root when giving several: --root NAME=PATH",
                                         param_hint="--root")
            name, path = socket.gethostname().split(".")[0], r
        if name in out_:
            raise typer.BadParameter(f"host {name} given twice", param_hint="--root")
        out_[name] = Path(path)
    return out_


@app.command()
def create(
    output: Path = typer.Option(..., "--output", "-o", help="Receipt file to write (FILE and FILE.asc)."),
    site: str = typer.Option(..., "--site", help="Site id (letters, digits, '.', '_', '+', '-')."),
    signer: str = typer.Option(..., "--signer", help="Fingerprint of the site's signing key."),
    root: list[str] = root_option([], "Appliance root to report: PATH (this host) or NAME=PATH; "
                                  "repeatable.", envvar=None),
    from_json: Path | None = typer.Option(None, "--from-json", help="Host facts collected by "
                                          "playbooks/receipt.yml ({host: airlock_model_info result})."),
    compatible: str | None = typer.Option(None, "--compatible", help="Appliance profile (default: the "
                                          "recorded one, /etc/airlock/appliance.yaml)."),
    sequence: int | None = typer.Option(None, "--sequence", help="Receipt sequence (default: Unix time); "
                                        "must grow with every receipt of the site."),
    gnupghome: Path | None = typer.Option(None, "--gnupghome", help="GnuPG home with the site key."),
    passphrase_file: Path | None = typer.Option(None, "--passphrase-file", help="File holding the key "
                                                "passphrase (or $AIRLOCK_GPG_PASSPHRASE_FILE)."),
    as_json: bool = JsonOpt,
) -> None:
    """Write a signed receipt of the site's state (read-only on the repositories)."""
    from airlock.bundle.profile import recorded_profile
    from airlock.errors import ManifestError, RepositoryError
    from airlock.receipt.create import create_receipt, host_facts, hosts_from_json, write_receipt
    from airlock.repo import Repository

    if bool(root) == bool(from_json):
        raise typer.BadParameter("give --root (repeatable) or --from-json, not both", param_hint="--root")
    with handle_errors(as_json):
        if from_json is not None:
            hosts = hosts_from_json(from_json.read_bytes(), str(from_json))
        else:
            hosts = {}
            for name, path in _roots(root).items():
                if not path.is_dir():  # a typo must not report a host with nothing installed
                    raise RepositoryError(f"{path}: no such appliance root (host {name})", path=str(path),
                                          rule="repository-missing")
                repo = Repository(path)
                try:
                    hosts[name] = host_facts(repo)
                finally:
                    repo.close()
        profile = compatible
        if profile is None:
            rec = recorded_profile()
            if rec is None:
                raise ManifestError("no appliance profile recorded here: pass --compatible NAME",
                                    rule="receipt-schema")
            profile = rec.compatible
        created = create_receipt(hosts, site=site, compatible=profile, signer=signer, sequence=sequence,
                                 gnupghome=gnupghome, passphrase_file=passphrase_file)
        path, sig = write_receipt(created, output)
    r = created.receipt
    if as_json:
        emit_json({"ok": True, "path": str(path), "signature": str(sig), "site": r.site,
                   "sequence": r.sequence, "hosts": sorted(r.hosts), "bytes": len(created.data)})
    else:
        out.print(f"receipt {safe(path)}: site {safe(r.site)}, sequence {r.sequence}, "
                  f"{len(r.hosts)} host(s), {len(created.data)} bytes, signed by {safe(signer)}",
                  highlight=False)


@app.command()
def verify(
    receipt: Path = typer.Argument(..., help="Receipt file (its signature is RECEIPT.asc)."),
    trust: list[str] = typer.Option(..., "--trust", "-t", help="Pinned site key: FPR, or SITE=FPR to accept "
                                    "it only for that site; repeatable."),
    keyring: Path | None = typer.Option(None, "--keyring", help="Public keyring file with the site keys."),
    gnupghome: Path | None = typer.Option(None, "--gnupghome", help="GnuPG home with the site keys."),
    state: Path = typer.Option(..., "--state", help="Directory keeping each site's last accepted sequence."),
    as_json: bool = JsonOpt,
) -> None:
    """Check the site's signature, the schema and anti-replay; record the receipt as accepted."""
    from airlock.receipt.verify import verify_receipt

    with handle_errors(as_json):
        v = verify_receipt(receipt, trust, keyring=keyring, gnupghome=gnupghome, state_dir=state)
    if as_json:
        emit_json(v.as_dict())
        return
    r = v.receipt
    out.print(f"[green]OK[/] {safe(receipt)}: site {safe(r.site)} sequence {r.sequence} (previous "
              f"{v.previous_sequence}), {len(r.hosts)} host(s), signed by {v.signer.primary_fingerprint}",
              highlight=False)
