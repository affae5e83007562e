"""`airlock bundle ...` commands: build (from a spec or a plan), plan, verify, stage, pack, unpack, inspect.

Exit codes (docs/bundle-format.md): 0 ok, 10 signature, 11 manifest, 12 unsafe path,
13 integrity, 14 incompatible, 15 downgrade."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from airlock.cli.common import JsonOpt, console, emit_json, handle_errors, out, progress_bytes
from airlock.errors import human_bytes
from airlock.textsafe import safe

if TYPE_CHECKING:
    from airlock.bundle.signing import Trust

app = typer.Typer(no_args_is_help=True, help="Build, sign, verify, pack and stage bundles.")

TrustOpt = typer.Option(..., "--trust", "-t", help="Pinned signer: the full 40-hex fingerprint of the "
                        "release key's primary key (no short IDs); repeatable.")
KeyringOpt = typer.Option(None, "--keyring", help="Public keyring file with the trusted keys (imported into "
                          "a throwaway GNUPGHOME; your keyring is never modified).")
HomeOpt = typer.Option(None, "--gnupghome", help="GnuPG home holding the keys (default: $GNUPGHOME).")
CompatOpt = typer.Option(None, "--compatible", help="The profile the bundle must match (default: this "
                         "appliance's recorded profile, /etc/airlock/appliance.yaml; must agree with it).")
IgnoreProfileOpt = typer.Option(False, "--ignore-profile", help="Do not check the bundle's profile "
                                "(an explicit override, said on stderr).")
SeqOpt = typer.Option(None, "--installed-sequence", help="Installed bundle sequence (anti-downgrade).")
ProgressOpt = typer.Option(True, "--progress/--no-progress", help="Show progress bars on a terminal.")


def _trust(fprs: list[str], keyring: Path | None, gnupghome: Path | None) -> Trust:
    from airlock.bundle.signing import Trust

    return Trust(fingerprints=fprs, gnupghome=gnupghome, keyring=keyring)


def _profile(compatible: str | None, ignore: bool, as_json: bool) -> str | None:
    """What the bundle's profile is checked against: ``--ignore-profile`` skips it (said on stderr)."""
    from airlock.bundle.profile import ANY_PROFILE

    if not ignore:
        return compatible
    if compatible is not None:
        raise typer.BadParameter("give --compatible or --ignore-profile, not both",
                                 param_hint="--ignore-profile")
    console.print("WARNING: --ignore-profile: the bundle's appliance profile is NOT checked",
                  style="bold yellow", highlight=False, markup=False)
    return ANY_PROFILE


def _show(progress: bool, as_json: bool) -> bool:
    return progress and not as_json and console.is_terminal


def _bundle_total(bundle: Path, trust: Trust) -> int:
    """Bytes a progress bar will count (the signed manifest is checked here too; cheap)."""
    from airlock.bundle.locate import signed_manifest

    return signed_manifest(bundle, trust).manifest.total_bytes


def _pack_total(bundle: Path, trust: Trust | None) -> int | None:
    """Bytes pack will write: from the signed manifest, or (no --trust) the unverified one, which only
    sizes the progress bar (pack reads every payload through the manifest either way)."""
    if trust is not None:
        return _bundle_total(bundle, trust)
    from airlock.bundle.manifest import MANIFEST_NAME, MAX_MANIFEST_BYTES, parse_manifest
    from airlock.bundle.safeio import read_limited
    from airlock.errors import AirlockError, ManifestError

    try:
        return parse_manifest(read_limited(bundle, MANIFEST_NAME, MAX_MANIFEST_BYTES, ManifestError,
                                           "manifest-size")).total_bytes
    except AirlockError:
        return None  # pack itself says what is wrong


def _spec_total(spec: Path) -> int | None:
    from airlock.bundle.spec import load_spec

    return load_spec(spec).payload_bytes()


def _size(value: str | None) -> int | None:
    from airlock.bundle.spec import parse_size

    if value is None:
        return None
    try:
        return parse_size(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


@app.command()
def build(
    spec: Path | None = typer.Argument(None, help="Bundle spec (YAML), e.g. bundle/demo-full.yml."),
    output: Path = typer.Option(..., "--output", "-o", help="Bundle directory to create (must not exist); "
                                "with --plan, the directory receiving one bundle per planned name."),
    plan: Path | None = typer.Option(None, "--plan", help="Build the bundles of a plan made by `airlock "
                                     "bundle plan` instead of SPEC."),
    signer: str = typer.Option(..., "--signer", help="Fingerprint of the signing key."),
    gnupghome: Path | None = HomeOpt,
    passphrase_file: Path | None = typer.Option(
        None, "--passphrase-file", help="File holding the key passphrase (or $AIRLOCK_GPG_PASSPHRASE_FILE)."),
    split_size: str | None = typer.Option(None, "--split-size", help="Split payloads above this size "
                                          "(default 4GiB-1MiB, for FAT32), e.g. 2GiB."),
    block_size: str | None = typer.Option(None, "--block-size", help="Block hash size (default 64MiB; "
                                           "16MiB with --compress)."),
    compress: bool | None = typer.Option(None, "--compress/--no-compress", help="Store full models' files "
                                         "compressed (lossless, per dtype; default: the spec's 'compress')."),
    as_json: bool = JsonOpt,
    progress: bool = ProgressOpt,
) -> None:
    """Copy the payloads named by SPEC while hashing, write MANIFEST.json and sign it."""
    from airlock.bundle import build_bundle

    if (spec is None) == (plan is None):
        raise typer.BadParameter("give a SPEC or --plan PLAN (one of them)", param_hint="SPEC")
    if plan is not None:
        _build_plan(plan, output, signer, gnupghome, passphrase_file, _size(split_size), _size(block_size),
                    as_json)
        return
    assert spec is not None
    with handle_errors(as_json):
        total = _spec_total(spec) if _show(progress, as_json) else None
    with handle_errors(as_json), progress_bytes("building", total, _show(progress, as_json)) as tick:
        m = build_bundle(spec, output, signer=signer, gnupghome=gnupghome, passphrase_file=passphrase_file,
                         progress=tick, split_size=_size(split_size), block_size=_size(block_size),
                         compress=compress)
    if as_json:
        emit_json({"ok": True, "path": str(output), "bundle_id": m.bundle_id, "kind": m.kind,
                   "sequence": m.sequence, "files": len(m.files), "bytes": m.total_bytes})
    else:
        out.print(f"built {safe(output)}: {safe(m.bundle_id)} ({m.kind}, sequence {m.sequence}), "
                  f"{len(m.files)} files, {human_bytes(m.total_bytes)}, signed by {safe(signer)}",
                  highlight=False)


def _build_plan(plan: Path, output: Path, signer: str, gnupghome: Path | None, passphrase_file: Path | None,
                split_size: int | None, block_size: int | None, as_json: bool) -> None:
    from airlock.receipt.plan import build_from_plan

    with handle_errors(as_json):
        built = build_from_plan(plan, output, signer=signer, gnupghome=gnupghome,
                                passphrase_file=passphrase_file, split_size=split_size, block_size=block_size)
    if as_json:
        emit_json({"ok": True, "bundles": built})
        return
    for b in built:
        out.print(f"built {safe(b['path'])}: {safe(b['bundle_id'])} for {safe(', '.join(b['sites']))}, "
                  f"{human_bytes(b['bytes'])}", highlight=False)


@app.command("plan")
def plan_cmd(
    receipts: Path = typer.Option(..., "--receipts", help="Directory of verified receipts (FILE, FILE.asc)."),
    target: list[str] = typer.Option(..., "--target", help="MODEL=VERSION for every host; repeatable."),
    release: Path = typer.Option(..., "--release", help="Release repository root (every released bundle "
                                 "installed into it: full versions, kept deltas, kept manifests)."),
    trust: list[str] = typer.Option(..., "--trust", "-t", help="Pinned site key: FPR or SITE=FPR."),
    keyring: Path | None = KeyringOpt,
    gnupghome: Path | None = HomeOpt,
    state: Path = typer.Option(..., "--state", help="The anti-replay state of `airlock receipt verify`: "
                               "each receipt must be the last one accepted from its site."),
    layout: str = typer.Option("auto", "--layout", help="auto (one shared bundle when every site needs the "
                               "same), per-site or shared."),
    output: Path = typer.Option(..., "--output", "-o", help="Plan file to write (JSON)."),
    payloads: Path | None = typer.Option(None, "--payloads", help="The release's other payloads: a "
                                         "directory with wheelhouse/, debs/, images/; a file goes to a site "
                                         "when a host lacks it (that path, that sha256)."),
    as_json: bool = JsonOpt,
) -> None:
    """Per site, the minimal content that brings every host in its receipt to the target versions."""
    from airlock.errors import ManifestError
    from airlock.receipt.plan import make_plan, write_plan
    from airlock.receipt.verify import verify_receipt

    with handle_errors(as_json):
        targets: dict[str, str] = {}
        for t in target:
            model, sep, version = t.partition("=")
            if not sep:
                raise ManifestError(f"--target {t!r}: expected MODEL=VERSION", rule="plan")
            targets[model] = version
        files = sorted(p for p in receipts.iterdir() if p.is_file() and not p.name.endswith(".asc")
                       and not p.name.startswith("."))
        verified = [verify_receipt(p, trust, keyring=keyring, gnupghome=gnupghome, state_dir=state,
                                   latest_only=True) for p in files]
        doc = make_plan(verified, release, targets, layout=layout, payloads=payloads)
        write_plan(doc, output)
    if as_json:
        emit_json(doc)
        return
    for site, p in doc["sites"].items():
        full, every = human_bytes(p["bytes_full_models"]), human_bytes(p["bytes_every_delta"])
        out.print(f"{safe(site)}: {human_bytes(p['bytes'])} (full models {full}, every delta {every}), "
                  f"bundle sequence {p['bundle_sequence']}", highlight=False)
    out.print(f"layout {doc['layout']}: {len(doc['bundles'])} bundle(s); plan written to {safe(output)}",
              highlight=False)


@app.command()
def verify(
    bundle: Path = typer.Argument(..., help="Bundle directory, or a tar made by `airlock bundle pack`."),
    trust: list[str] = TrustOpt,
    keyring: Path | None = KeyringOpt,
    gnupghome: Path | None = HomeOpt,
    compatible: str | None = CompatOpt,
    ignore_profile: bool = IgnoreProfileOpt,
    installed_sequence: int | None = SeqOpt,
    as_json: bool = JsonOpt,
    progress: bool = ProgressOpt,
) -> None:
    """Check the signature, then every payload's size, sha256 and block hashes. Fails closed.

    A packed bundle (tar file) is verified in one streaming pass without writing anything."""
    from airlock.bundle import verify_archive, verify_bundle
    from airlock.bundle.locate import bundle_kind

    with handle_errors(as_json):
        t = _trust(trust, keyring, gnupghome)
        packed = bundle_kind(bundle) == "archive"
        total: int | None
        if packed:
            total = bundle.stat().st_size
        else:
            total = _bundle_total(bundle, t) if _show(progress, as_json) else None
        with progress_bytes("verifying", total, _show(progress, as_json)) as tick:
            check = verify_archive if packed else verify_bundle
            report = check(bundle, t, compatible=_profile(compatible, ignore_profile, as_json),
                           installed_sequence=installed_sequence, progress=tick)
    if as_json:
        emit_json(report.as_dict())
        return
    m = report.manifest
    out.print(f"[green]OK[/] {safe(bundle)}: {safe(m.bundle_id)} ({m.kind}, sequence {m.sequence}) signed by "
              f"{report.signer.primary_fingerprint}; {report.files_checked} files, "
              f"{human_bytes(report.bytes_checked)} verified", highlight=False)
    for extra in report.extra_files:
        out.print(f"[yellow]extra[/] {safe(extra)} (not in the manifest; ignored, not read)", highlight=False)


@app.command()
def stage(
    bundle: Path = typer.Argument(..., help="Bundle directory (e.g. on the USB stick) or packed .tar."),
    to: Path = typer.Option(..., "--to", help="Staging directory (created; an interrupted stage resumes)."),
    trust: list[str] = TrustOpt,
    keyring: Path | None = KeyringOpt,
    gnupghome: Path | None = HomeOpt,
    compatible: str | None = CompatOpt,
    ignore_profile: bool = IgnoreProfileOpt,
    installed_sequence: int | None = SeqOpt,
    as_json: bool = JsonOpt,
    progress: bool = ProgressOpt,
) -> None:
    """Copy the manifest (verified over the staged bytes), then every payload while hashing. A packed
    .tar is streamed once (signature first, parts reassembled)."""
    from airlock.bundle import stage_bundle
    from airlock.bundle.locate import bundle_kind
    from airlock.bundle.pack import stage_archive

    with handle_errors(as_json):
        t = _trust(trust, keyring, gnupghome)
        total = _bundle_total(bundle, t) if _show(progress, as_json) else None
        how = stage_archive if bundle_kind(bundle) == "archive" else stage_bundle
        with progress_bytes("staging", total, _show(progress, as_json)) as tick:
            staged = how(bundle, to, t, compatible=_profile(compatible, ignore_profile, as_json),
                         installed_sequence=installed_sequence, progress=tick)
    if as_json:
        emit_json(staged.as_dict())
        return
    c = staged.counters
    out.print(f"[green]staged[/] {safe(staged.manifest.bundle_id)} into {safe(to)}: "
              f"{human_bytes(c.bytes_copied)} copied, {human_bytes(c.bytes_reused)} reused "
              f"({c.blocks_copied} blocks copied, {c.blocks_reused} reused)", highlight=False)


@app.command()
def pack(
    bundle: Path = typer.Argument(..., help="Bundle directory."),
    output: Path = typer.Option(..., "--output", "-o", help="Tar file to write."),
    trust: list[str] = typer.Option([], "--trust", "-t", help="Check the signature first (repeatable)."),
    keyring: Path | None = KeyringOpt,
    gnupghome: Path | None = HomeOpt,
    as_json: bool = JsonOpt,
    progress: bool = ProgressOpt,
) -> None:
    """Pack a bundle into one POSIX tar: manifest and signature first, then payloads."""
    from airlock.bundle import pack_bundle

    with handle_errors(as_json):
        t = _trust(trust, keyring, gnupghome) if trust else None
        total = _pack_total(bundle, t) if _show(progress, as_json) else None
    with handle_errors(as_json), progress_bytes("packing", total, _show(progress, as_json)) as tick:
        m = pack_bundle(bundle, output, t, progress=tick)
    if as_json:
        emit_json({"ok": True, "path": str(output), "bundle_id": m.bundle_id, "files": len(m.files)})
    else:
        out.print(f"packed {safe(m.bundle_id)} into {safe(output)}", highlight=False)


@app.command()
def unpack(
    archive: Path = typer.Argument(..., help="Tar file made by `airlock bundle pack`."),
    output: Path = typer.Option(..., "--output", "-o", help="Bundle directory to create (must not exist)."),
    trust: list[str] = TrustOpt,
    keyring: Path | None = KeyringOpt,
    gnupghome: Path | None = HomeOpt,
    compatible: str | None = CompatOpt,
    ignore_profile: bool = IgnoreProfileOpt,
    installed_sequence: int | None = SeqOpt,
    as_json: bool = JsonOpt,
    progress: bool = ProgressOpt,
) -> None:
    """Verify the signature, then write only manifest-named regular files, hashing them."""
    from airlock.bundle import unpack_bundle

    with handle_errors(as_json):
        t = _trust(trust, keyring, gnupghome)
        total = archive.stat().st_size if archive.is_file() else None
        with progress_bytes("unpacking", total, _show(progress, as_json)) as tick:
            report = unpack_bundle(archive, output, t,
                                   compatible=_profile(compatible, ignore_profile, as_json),
                                   installed_sequence=installed_sequence, progress=tick)
    if as_json:
        emit_json(report.as_dict())
    else:
        out.print(f"[green]unpacked[/] {safe(report.manifest.bundle_id)} into {safe(output)}: "
                  f"{report.members} members, {report.bytes} bytes", highlight=False)


@app.command()
def inspect(
    bundle: Path = typer.Argument(..., help="Bundle directory or packed .tar."),
    trust: list[str] = TrustOpt,
    keyring: Path | None = KeyringOpt,
    gnupghome: Path | None = HomeOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Show the signed manifest (signature checked; payloads not hashed)."""
    from airlock.bundle.locate import signed_manifest
    from airlock.bundle.manifest import to_dict

    with handle_errors(as_json):
        signed = signed_manifest(bundle, _trust(trust, keyring, gnupghome))
    m = signed.manifest
    if as_json:
        emit_json({"signer": signed.signer.primary_fingerprint, "manifest": to_dict(m)})
        return
    rollback = " (signed rollback)" if m.rollback else ""
    out.print(f"{safe(m.bundle_id)}: kind {safe(m.kind)}, compatible {safe(m.compatible)}, "
              f"sequence {m.sequence}{rollback}, created {safe(m.created)}, "
              f"airlock {safe(m.builder_version)}", highlight=False)
    out.print(f"signed by {signed.signer.primary_fingerprint}", highlight=False)
    for me in m.models:
        src = f" from {safe(me.from_version)}" if me.from_version else ""
        out.print(f"  model {safe(me.name)} {safe(me.version)} ({safe(me.kind)}{src}): {safe(me.path)}",
                  highlight=False)
    for rel, e in m.files.items():
        parts = f" in {len(e.parts)} parts" if e.parts else ""
        if e.coding is not None:
            ratio = e.coding.size / max(e.size, 1)
            parts += f", stored {e.coding.codec} {e.coding.size} bytes ({ratio:.2f}x)"
        out.print(f"  {e.size:>14}  {e.sha256[:16]}  {safe(rel)}{parts}", highlight=False)


@app.command()
def profile(
    set_to: str | None = typer.Option(None, "--set", help="Record NAME as this appliance's profile."),
    as_json: bool = JsonOpt,
) -> None:
    """Show (or with --set, record) this appliance's profile: the bundles' `compatible` that verify,
    stage, unpack, install-bundle and preflight accept by default."""
    from airlock.bundle.profile import recorded_profile, system_file, write_profile

    with handle_errors(as_json):
        if set_to is not None:
            write_profile(set_to)
        rec = recorded_profile()
    if as_json:
        emit_json({"ok": True, "compatible": rec.compatible if rec else None, "file": str(system_file())})
    elif rec is None:
        out.print(f"no appliance profile recorded ({safe(system_file())}); bundles are not checked against "
                  "one: set it with --set NAME", highlight=False)
    else:
        out.print(f"{safe(rec.compatible)} ({safe(rec.source)})", highlight=False)
