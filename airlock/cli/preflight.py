"""``airlock preflight`` and ``airlock repo build-apt|verify-apt|wheels``: provisioning a host offline."""

from __future__ import annotations

from pathlib import Path

import typer

from airlock.cli.common import JsonOpt, RootOpt, emit_json, handle_errors, out
from airlock.errors import CompatibilityError
from airlock.textsafe import safe

repo_app = typer.Typer(help="Offline package repositories: signed apt repository, wheelhouse.",
                       no_args_is_help=True)

_STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red"}


def preflight(
    bundle: Path | None = typer.Option(None, "--bundle", help="Size disk/GPU needs from this bundle's "
                                       "signed manifest (needs --trust, as `bundle verify`)."),
    trust: list[str] = typer.Option([], "--trust", "-t", help="Pinned signer: full 40-hex fingerprint; "
                                    "repeatable."),
    keyring: Path | None = typer.Option(None, "--keyring", help="Public keyring file with the trusted keys."),
    gnupghome: Path | None = typer.Option(None, "--gnupghome", help="GnuPG home holding the keys."),
    root: Path = RootOpt,
    tier: list[str] = typer.Option([], "--tier", help="Extra tier NAME=PATH to report (repeatable)."),
    min_ram_gib: float = typer.Option(4.0, "--min-ram-gib", help="Least RAM the host must have, in GiB."),
    gpu_required: bool = typer.Option(False, "--gpu-required", help="Fail, not warn, without a GPU."),
    allow_fail: list[str] = typer.Option([], "--allow-fail", help="Accept this failing check (repeatable): "
                                         "os, kernel, cpu, ram, disk:hot (disk:TIER), gpu, time, mac."),
    as_json: bool = JsonOpt,
) -> None:
    """Check this host against what the bundle needs; exit 14 on a failure not allowed."""
    from airlock.bundle.signing import Trust
    from airlock.provision.preflight import Requirements, run_preflight
    from airlock.provision.requirements import requirements_from_bundle

    if bundle is not None and not trust:
        raise typer.BadParameter("--bundle needs --trust FPR (and --keyring or --gnupghome): only a "
                                 "signature-verified manifest is read", param_hint="--trust")
    with handle_errors(as_json):
        tiers = dict(t.split("=", 1) for t in tier if "=" in t)
        base = Requirements(min_ram_bytes=int(min_ram_gib * (1 << 30)), gpu_required=gpu_required,
                            tiers={"hot": (str(root), 0)})
        t = Trust(trust, gnupghome=gnupghome, keyring=keyring)
        req = (requirements_from_bundle(bundle, t, root=str(root), tiers=tiers, base=base) if bundle
               else base)
        if not bundle:
            for name, where in tiers.items():
                req.tiers.setdefault(name, (where, 0))
        report = run_preflight(req, allow_fail=set(allow_fail))
        failure = None if report.ok else CompatibilityError(
            f"preflight failed: {', '.join(c.name for c in report.failed)} (override with --allow-fail NAME)",
            rule="preflight")
        if as_json:  # one JSON document: the report, plus the error when it failed
            emit_json({**report.as_dict(), **(failure.as_dict() if failure else {}), "ok": report.ok})
            if failure:
                raise typer.Exit(failure.exit_code)
        else:
            for c in report.checks:
                style = _STYLE[c.status]
                note = " (allowed)" if c.allowed else ""
                out.print(f"[{style}]{c.status.upper():4}[/] {safe(c.name):12} {safe(c.message)}{note}",
                          highlight=False)
        if failure:
            raise failure


@repo_app.command("fetch-debs")
def fetch_debs(
    package: list[str] = typer.Argument(..., help="Packages the appliance needs."),
    out_dir: Path = typer.Option(..., "-o", "--out", help="Directory for the .deb files."),
    exclude: list[str] = typer.Option([], "--exclude", help="Already on the target image (repeatable)."),
    as_json: bool = JsonOpt,
) -> None:
    """Download PACKAGEs and their dependency closure as apt resolves it here (connected side)."""
    from airlock.provision.aptrepo import download_closure

    with handle_errors(as_json):
        got = download_closure(package, out_dir, exclude=set(exclude))
        if as_json:
            emit_json({"ok": True, "debs": [p.name for p in got]})
        else:
            out.print(f"{len(got)} packages in {out_dir}")


@repo_app.command("build-apt")
def build_apt(
    debs_dir: Path = typer.Argument(..., help="Directory of .deb files (e.g. from 'apt-get download')."),
    out_dir: Path = typer.Option(..., "-o", "--out", help="New repository directory (must not exist)."),
    signer: str = typer.Option(..., "--signer", help="Fingerprint of the bundle signing key."),
    gnupghome: Path | None = typer.Option(None, "--gnupghome", help="GnuPG home with the key."),
    passphrase_file: Path | None = typer.Option(None, "--passphrase-file", help="Key passphrase file."),
    as_json: bool = JsonOpt,
) -> None:
    """Build a signed flat apt repository from every .deb in DEBS_DIR."""
    from airlock.provision.aptrepo import build_apt_repo

    with handle_errors(as_json):
        debs = sorted(Path(debs_dir).glob("*.deb"))
        repo = build_apt_repo(debs, out_dir, signer=signer, gnupghome=gnupghome,
                              passphrase_file=passphrase_file)
        if as_json:
            emit_json({"ok": True, "root": str(repo.root), "signer": repo.signer,
                       "packages": [f"{p.name}={p.version}" for p in repo.packages]})
        else:
            out.print(f"{len(repo.packages)} packages in {repo.root}, signed by {repo.signer}")
            out.print(repo.source_line(), highlight=False)


@repo_app.command("verify-apt")
def verify_apt(
    repo_dir: Path = typer.Argument(...),
    fingerprint: list[str] = typer.Option(..., "--fingerprint", help="Pinned signer fingerprint."),
    keyring: Path | None = typer.Option(None, "--keyring", help="Public keyring file."),
    as_json: bool = JsonOpt,
) -> None:
    """Check Release signatures and every index and .deb hash, as apt will."""
    from airlock.provision.aptrepo import verify_apt_repo

    with handle_errors(as_json):
        pkgs = verify_apt_repo(repo_dir, fingerprints=fingerprint, keyring=keyring)
        if as_json:
            emit_json({"ok": True, "packages": [f"{p.name}={p.version}" for p in pkgs]})
        else:
            out.print(f"OK: {len(pkgs)} packages verified in {repo_dir}")


@repo_app.command("wheels")
def wheels(
    requirement: list[str] = typer.Argument(..., help="Requirement specifiers, e.g. 'numpy==2.1.*'."),
    out_dir: Path = typer.Option(..., "-o", "--out", help="Wheelhouse directory."),
    offline: bool = typer.Option(False, "--offline", help="No index: only the pip cache / find-links."),
    as_json: bool = JsonOpt,
) -> None:
    """Download wheels (with dependencies) into a wheelhouse directory."""
    from airlock.provision.wheelhouse import build_wheelhouse

    with handle_errors(as_json):
        got = build_wheelhouse(requirement, out_dir, offline=offline)
        if as_json:
            emit_json({"ok": True, "wheels": [p.name for p in got]})
        else:
            out.print(f"{len(got)} wheels in {out_dir}")


def register(app: typer.Typer) -> None:
    """Add ``airlock preflight`` and the ``airlock repo`` group to the root app."""
    app.command("preflight")(preflight)
    app.add_typer(repo_app, name="repo", help="Offline apt repository and wheelhouse.")
