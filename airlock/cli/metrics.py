"""``airlock metrics``: Airlock's state for node_exporter's textfile collector (read-only on the root)."""

from __future__ import annotations

from pathlib import Path

import typer

from airlock.cli.common import JsonOpt, RootOpt, emit_json, handle_errors, out
from airlock.cli.model import GnupgOpt, KeyringOpt, KeysOpt, LockOpt, VerifyTrustOpt, _repo

TextfileOpt = typer.Option(Path("/var/lib/prometheus/node-exporter"), "--textfile-dir",
                           envvar="AIRLOCK_TEXTFILE_DIR",
                           help="node_exporter's --collector.textfile.directory (outside the root).")


def _tiers(specs: list[str]) -> dict[str, Path]:
    tiers: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise typer.BadParameter(f"{spec!r}: expected NAME=PATH (e.g. warm=/mnt/cephfs)",
                                     param_hint="--tier")
        tiers[name] = Path(path)
    return tiers


def metrics(root: Path = RootOpt, textfile_dir: Path = TextfileOpt,
            verify: bool = typer.Option(False, "--verify", help="Run the read-only verify first and export "
                                        "its result (the scheduled check); else the last kept result is "
                                        "reused."),
            tier: list[str] = typer.Option([], "--tier", metavar="NAME=PATH",
                                           help="Another tier's path (warm, cold) for its disk usage; "
                                           "repeatable."),
            tls_cert: list[Path] = typer.Option([], "--tls-cert", help="A TLS certificate Airlock manages: "
                                                "its expiry is exported; repeatable."),
            trust: list[str] = VerifyTrustOpt, keyring: Path = KeyringOpt, gnupghome: Path = GnupgOpt,
            lock_timeout: float = LockOpt, keys_config: Path = KeysOpt, as_json: bool = JsonOpt) -> None:
    """Write <textfile-dir>/airlock.prom atomically: active versions, versions per state, last verify
    time and result, drift by rule, audit chain, last result of each operation, disk per tier, key
    rotation, certificate expiry. Writes nothing under --root. With --verify, exit 13 when the verify
    found drift (the metrics are written first)."""
    from airlock.bundle import Trust
    from airlock.errors import IntegrityError
    from airlock.monitoring.metrics import run_verify, write_metrics

    with handle_errors(as_json):
        tiers = _tiers(tier)
        repo = _repo(root, lock_timeout, keys_config=keys_config)
        summary = None
        if verify:
            t = Trust(fingerprints=trust, gnupghome=gnupghome, keyring=keyring) if trust else None
            _report, summary = run_verify(repo, t)
        path = write_metrics(repo, textfile_dir, summary, tiers=tiers, tls_certs=tls_cert)
        if as_json:
            verified = None if summary is None else {"ok": summary.ok, "drift": summary.drift_by_rule}
            emit_json({"ok": summary.ok if summary else True, "path": str(path), "verify": verified})
        else:
            out.print(f"wrote {path}", highlight=False, soft_wrap=True, markup=False)
        if summary is not None and not summary.ok:
            if as_json:
                raise typer.Exit(IntegrityError.exit_code)
            raise IntegrityError(f"{root}: drift found ({sum(summary.drift_by_rule.values())} item(s): "
                                 f"{', '.join(sorted(summary.drift_by_rule))}); metrics written to {path}",
                                 path=str(root), rule="verify-drift")


def register(app: typer.Typer) -> None:
    app.command("metrics")(metrics)
