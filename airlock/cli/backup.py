"""`airlock backup ...` commands: encrypted, deduplicated backups of an appliance with restic
(docs/backup.md). The restic password comes from a private file or a key provider, never from the
command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from airlock.cli.common import JsonOpt, RootOpt, console, emit_json, handle_errors, out, progress_bytes
from airlock.errors import human_bytes

app = typer.Typer(no_args_is_help=True, help="Backups with restic: create, list, restore, check, drill.")

RepoOpt = typer.Option(..., "--repo", "-r", envvar="AIRLOCK_BACKUP_REPO",
                       help="restic repository: a local path, s3:http(s)://HOST/BUCKET (Ceph RGW) or "
                       "rest:URL.")
PasswordFileOpt = typer.Option(None, "--password-file", envvar="AIRLOCK_BACKUP_PASSWORD_FILE",
                               help="File holding the restic password (mode 0600, owned by you or root).")
WrappedOpt = typer.Option(None, "--password-wrapped", envvar="AIRLOCK_BACKUP_PASSWORD_WRAPPED",
                          help="Restic password wrapped by a key provider (airlock backup password).")
KeysOpt = typer.Option(None, "--keys-config", envvar="AIRLOCK_KEYS_CONFIG",
                       help="Key provider config (default /etc/airlock/keys.yaml): backed up (never the "
                       "keys it names), opens --password-wrapped, decrypts encrypted versions on verify.")
S3Opt = typer.Option(None, "--s3-credentials", envvar="AIRLOCK_BACKUP_S3_CREDENTIALS",
                     help="File (mode 0600) with access_key_id= and secret_access_key= lines for s3: repos.")
LockOpt = typer.Option(None, "--lock-timeout", help="Seconds to wait for the repository lock (default 30).")


def _restic(repo: str, password_file: Path | None, wrapped: Path | None, keys_config: Path | None,
            s3: Path | None) -> Any:
    from airlock.backup import PasswordSource, Restic

    remote = "://" in repo or repo.startswith(("s3:", "rest:", "sftp:"))
    return Restic(repo if remote else str(Path(repo).absolute()),
                  PasswordSource(password_file, wrapped, keys_config), s3)


def _keys_default(keys_config: Path | None) -> Path | None:
    from airlock.crypto.providers import default_config_path

    return keys_config or (default_config_path() if default_config_path().exists() else None)


def _say(msg: str) -> None:
    console.print(msg, highlight=False, soft_wrap=True, markup=False)


@app.command("create")
def create_cmd(root: Path = RootOpt, repo: str = RepoOpt, password_file: Path = PasswordFileOpt,
               password_wrapped: Path = WrappedOpt, keys_config: Path = KeysOpt, s3_credentials: Path = S3Opt,
               keep_last: int = typer.Option(0, "--keep-last", min=0, help="Retention: keep the last N."),
               keep_daily: int = typer.Option(0, "--keep-daily", min=0, help="Retention: one a day, N days."),
               keep_weekly: int = typer.Option(0, "--keep-weekly", min=0, help="Retention: one per week."),
               keep_monthly: int = typer.Option(0, "--keep-monthly", min=0, help="Retention: one per month."),
               check_subset: str = typer.Option(None, "--check-read-data-subset", metavar="N%|n/t",
                                                help="After the backup, restic check also reads this share "
                                                "of the pack data (default: structure only)."),
               lock_timeout: float = LockOpt, as_json: bool = JsonOpt) -> None:
    """Back up ROOT: a consistent catalog copy (SQLite online backup), the audit log, the kept signed
    manifests and deltas, the model versions (only referenced when on the warm tier) and the key
    provider config (never key material), under the repository's shared lock. Initialises the
    restic repository on first use, applies the retention policy (forget --prune), then runs
    restic check. Audited."""
    from airlock.backup import Retention, create

    with handle_errors(as_json):
        restic = _restic(repo, password_file, password_wrapped, keys_config, s3_credentials)
        with progress_bytes("backup", None, not as_json) as prog:
            done = [0]

            def advance(now: int, _total: int) -> None:
                prog(max(0, now - done[0]))
                done[0] = max(done[0], now)

            res = create(root, restic, keys_config=_keys_default(keys_config),
                         retention=Retention(keep_last, keep_daily, keep_weekly, keep_monthly),
                         check_subset=check_subset, lock_timeout=lock_timeout, progress=advance)
        if as_json:
            emit_json(res.as_dict())
            return
        _say(f"snapshot {res.snapshot} in {res.repo}: {res.files} files, {human_bytes(res.bytes_processed)} "
             f"read, {human_bytes(res.bytes_added)} added, {res.seconds:.1f}s; restic check ok")
        if res.forgotten:
            _say(f"retention: forgot {len(res.forgotten)} snapshot(s): {', '.join(res.forgotten)}")


@app.command("list")
def list_cmd(repo: str = RepoOpt, password_file: Path = PasswordFileOpt, password_wrapped: Path = WrappedOpt,
             keys_config: Path = KeysOpt, s3_credentials: Path = S3Opt,
             host: str = typer.Option(None, "--host", help="Only this host's snapshots."),
             as_json: bool = JsonOpt) -> None:
    """Airlock snapshots in the backup repository, oldest first."""
    from airlock.backup import snapshots

    with handle_errors(as_json):
        snaps = snapshots(_restic(repo, password_file, password_wrapped, keys_config, s3_credentials), host)
        if as_json:
            emit_json({"ok": True, "snapshots": snaps})
            return
        for s in snaps:
            out.print(f"{s.get('short_id')} {s.get('time', '')[:19]} {s.get('hostname')} "
                      f"{' '.join(s.get('paths', []))}", highlight=False, soft_wrap=True, markup=False)


@app.command("check")
def check_cmd(repo: str = RepoOpt, password_file: Path = PasswordFileOpt, password_wrapped: Path = WrappedOpt,
              keys_config: Path = KeysOpt, s3_credentials: Path = S3Opt,
              read_data: bool = typer.Option(True, "--read-data/--no-read-data",
                                             help="Read and decrypt every pack (finds a changed byte)."),
              subset: str = typer.Option(None, "--read-data-subset", metavar="N%|n/t",
                                         help="Read only this share of the packs."),
              as_json: bool = JsonOpt) -> None:
    """restic check of the backup repository: exit 13 when it is damaged or was tampered with."""
    from airlock.backup import check

    with handle_errors(as_json):
        res = check(_restic(repo, password_file, password_wrapped, keys_config, s3_credentials),
                    read_data=read_data and not subset, read_data_subset=subset)
        if as_json:
            emit_json(res)
        else:
            _say(f"{res['repo']}: no errors found" + (" (all data read)" if read_data and not subset else ""))


@app.command("restore")
def restore_cmd(root: Path = typer.Option(..., "--root", help="Empty (or new) directory to restore into."),
                repo: str = RepoOpt, password_file: Path = PasswordFileOpt,
                password_wrapped: Path = WrappedOpt,
                keys_config: Path = KeysOpt, s3_credentials: Path = S3Opt,
                snapshot: str = typer.Option("latest", "--snapshot", help="Snapshot id (default: latest)."),
                host: str = typer.Option(None, "--host", help="Latest snapshot of this host."),
                keys_config_out: Path = typer.Option(None, "--keys-config-out",
                                                     help="Also write the backed-up key provider config "
                                                     "here."),
                verify: bool = typer.Option(True, "--verify/--no-verify",
                                            help="Verify the audit chain and every file before the root "
                                            "appears (as airlock audit verify and model verify)."),
                trust: list[str] = typer.Option([], "--trust", "-t", help="Pinned signer: re-check the kept "
                                                "manifests' signatures too."),
                keyring: Path = typer.Option(None, "--keyring", help="Public keyring with the trusted keys."),
                lock_timeout: float = LockOpt, as_json: bool = JsonOpt) -> None:
    """Restore a snapshot into an EMPTY root (a non-empty one is refused, exit 30). restic decrypts and
    checks every blob (a tampered pack is refused, exit 13); the restored repository is verified
    and the restore audited before the root appears; a failure leaves ROOT as it was."""
    from airlock.backup import restore
    from airlock.bundle import Trust

    with handle_errors(as_json):
        t = Trust(fingerprints=trust, keyring=keyring) if trust else None
        res = restore(_restic(repo, password_file, password_wrapped, keys_config, s3_credentials), root,
                      snapshot=snapshot, host=host, verify=verify, keys_config_out=keys_config_out,
                      verify_keys=keys_config, trust=t, lock_timeout=lock_timeout,
                      say=(lambda _m: None) if as_json else _say)
        if as_json:
            emit_json(res.as_dict())
            return
        active = ", ".join(f"{m} {v}" for m, v in sorted(res.manifest["active"].items()))
        _say(f"restored snapshot {res.snapshot[:8]} into {res.root}: {human_bytes(res.bytes)} in "
             f"{res.seconds:.1f}s; active: {active or 'none'}; "
             + ("verified" if res.verified else "NOT verified"))


@app.command("drill")
def drill_cmd(root: Path = RootOpt, repo: str = RepoOpt, password_file: Path = PasswordFileOpt,
              password_wrapped: Path = WrappedOpt, keys_config: Path = KeysOpt, s3_credentials: Path = S3Opt,
              scratch: Path = typer.Option(..., "--scratch", help="Empty scratch root to restore onto."),
              keep: bool = typer.Option(False, "--keep-scratch", help="Keep the restored scratch root."),
              report_file: Path = typer.Option(None, "--report", help="Also write the JSON report here."),
              trust: list[str] = typer.Option([], "--trust", "-t", help="Pinned signer fingerprint."),
              keyring: Path = typer.Option(None, "--keyring", help="Public keyring with the trusted keys."),
              lock_timeout: float = LockOpt, as_json: bool = JsonOpt) -> None:
    """Restore drill: restore the latest backup onto SCRATCH, verify it (audit chain, every file
    against the signed manifests), compare active versions and every file hash with the live ROOT;
    the result is recorded in ROOT's audit log. Exit 13 when the drill fails."""
    import json

    from airlock.backup import drill
    from airlock.bundle import Trust
    from airlock.errors import IntegrityError

    with handle_errors(as_json):
        t = Trust(fingerprints=trust, keyring=keyring) if trust else None
        restic = _restic(repo, password_file, password_wrapped, keys_config, s3_credentials)
        rep = drill(root, restic, scratch, keep=keep, keys_config=keys_config, trust=t,
                    lock_timeout=lock_timeout, say=(lambda _m: None) if as_json else _say)
        if report_file is not None:
            report_file.write_text(json.dumps(rep, indent=2, sort_keys=True) + "\n")
        if as_json:
            emit_json(rep)
        elif rep["ok"]:
            c = rep["compare"]
            _say(f"restore drill ok: snapshot {rep['snapshot'][:8]}, {c['files_compared']} files identical, "
                 f"active versions identical, audit chain intact ({rep['seconds']:.1f}s)")
        if not rep["ok"]:
            if as_json:
                raise typer.Exit(IntegrityError.exit_code)
            why = rep.get("error", {}).get("message") or _drill_why(rep["compare"])
            raise IntegrityError(f"restore drill failed: {why}", path=str(root), rule="restore-drill")


def _drill_why(c: dict[str, Any]) -> str:
    if c["files_differ"] or c["missing_on_live"]:
        return (f"{len(c['files_differ'])} file(s) differ, {len(c['missing_on_live'])} missing on the "
                "live host")
    if not c["active_same"] or not c["links_same"]:
        return f"active versions differ (live {c['active_live']}, restored {c['active_restored']})"
    return "the restored audit chain is not a prefix of the live one"


@app.command("password")
def password_cmd(out_file: Path = typer.Option(..., "--out", help="Where to write the wrapped password "
                                               "(created 0600, never overwritten)."),
                 key: str = typer.Option(..., "--key", metavar="PROVIDER:KEY_ID",
                                         help="Key-encryption key that wraps the password (HSM, Vault)."),
                 keys_config: Path = KeysOpt, as_json: bool = JsonOpt) -> None:
    """Make a new random restic password wrapped by a key provider; use it with --password-wrapped."""
    from airlock.backup import make_wrapped

    with handle_errors(as_json):
        res = make_wrapped(out_file, key, keys_config)
        if as_json:
            emit_json({"ok": True, **res})
        else:
            _say(f"wrote {res['path']} (restic password wrapped by {res['key']})")
