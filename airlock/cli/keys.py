"""`airlock keys ...` commands: encryption at rest.

Key material never appears on the command line: keys are named (``PROVIDER:KEY_ID``), providers
are described in a config file, PINs and tokens come from files or environment variables that the
config names. Every command first disables core dumps and marks the process non-dumpable.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from airlock.cli.common import JsonOpt, emit_json, handle_errors, out, progress_bytes, root_option
from airlock.crypto.harden import harden_process

app = typer.Typer(no_args_is_help=True, help="Encryption at rest: key providers, encrypt, decrypt, rotate.")

ConfigOpt = typer.Option(None, "--config", "-c", envvar="AIRLOCK_KEYS_CONFIG",
                         help="Key provider config (YAML). Default: /etc/airlock/keys.yaml.")


@app.callback()
def _keys_root() -> None:
    """Encryption at rest: key providers, encrypt, decrypt, rotate."""
    harden_process()  # also done by the airlock root callback; kept for the keys app used alone


def _say(message: str) -> None:
    out.print(message, highlight=False, soft_wrap=True, markup=False)


def _registry(config: Path | None) -> Any:
    from airlock.crypto import ProviderRegistry

    return ProviderRegistry.load(config)


def _header_dict(path: Path, header: Any) -> dict[str, Any]:
    fixed = header.fixed
    return {"path": str(path), "provider": header.provider, "key_id": header.key_id,
            "key_generation": header.active.generation, "plaintext_size": fixed.plaintext_size,
            "chunk_size": fixed.chunk_size, "chunks": fixed.chunk_count, "format_version": fixed.version,
            "encrypted_size": fixed.encrypted_size,
            "bound_to": str(header.identity) if header.identity and header.identity.path else None}


def _need(path: Path) -> None:
    from airlock.errors import AirlockError

    if not path.exists():
        raise AirlockError(f"{path}: no such file or directory", path=str(path), rule="input")


def _sweep(dst: Path) -> None:
    """Leftovers of a killed encrypt/decrypt beside this output (``.airlock-tmp-*``,
    ``.crypto-staging-*`` of dead processes) are removed before writing."""
    from airlock.crypto.workspace import sweep_dead

    sweep_dead(dst.absolute().parent)


def _tree_report(root: Path, files: dict[str, Any], as_json: bool, what: str) -> None:
    if as_json:
        emit_json({"ok": True, "path": str(root),
                   "files": {rel: {"size": f.size, "sha256": f.sha256} for rel, f in files.items()}})
    else:
        total = sum(f.size for f in files.values())
        _say(f"{root}: {len(files)} file(s), {total} plaintext bytes {what}")


@app.command("providers")
def providers_cmd(config: Path = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """List the configured providers and check that each is reachable (exit 34 if one is not)."""
    with handle_errors(as_json):
        reg = _registry(config)
        statuses = []
        for name in reg.names():
            try:
                statuses.append(reg.get(name).check().as_dict())
            except Exception as exc:  # a misconfigured provider is reported, not fatal to the listing
                statuses.append({"name": name, "kind": "?", "available": False, "detail": str(exc),
                                 "keys": []})
        ok = all(s["available"] for s in statuses)
        if as_json:
            emit_json({"ok": ok, "providers": statuses})
        else:
            for s in statuses:
                state = "ok " if s["available"] else "DOWN"
                keys = f" keys: {', '.join(s['keys'])}" if s["keys"] else ""
                _say(f"{state} {s['name']} ({s['kind']}): {s['detail']}{keys}")
        if not ok:
            raise typer.Exit(34)


@app.command("generate")
def generate_cmd(key: str = typer.Argument(..., help="PROVIDER:KEY_ID of the new key-encryption key."),
                 config: Path = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """Create a new key-encryption key inside the provider (HSM token, Vault transit, key dir)."""
    from airlock.crypto import KeyRef

    with handle_errors(as_json):
        ref = KeyRef.parse(key)
        _registry(config).get(ref.provider).generate(ref.key_id)
        if as_json:
            emit_json({"ok": True, "key": str(ref)})
        else:
            _say(f"created key-encryption key {ref}")


@app.command("encrypt")
def encrypt_cmd(
    src: Path = typer.Option(..., "--in", "-i", help="Plaintext file, or a directory (a model version)."),
    dst: Path = typer.Option(..., "--out", "-o",
                             help="Encrypted file or new directory (appears only when complete)."),
    key: str = typer.Option(..., "--key", "-k", help="PROVIDER:KEY_ID that wraps the file's data key."),
    chunk_size: int = typer.Option(1 << 20, "--chunk-size", help="Plaintext bytes per chunk."),
    workers: int = typer.Option(2, "--workers", min=1, max=16,
                                help="Threads for chunk encryption (2 measured fastest)."),
    model: str = typer.Option(None, "--model", help="Bind each file to this model name and its path "
                              "relative to --in (a directory), or its file name (a file); a "
                              "directory's files are always bound to their relative paths."),
    config: Path = ConfigOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Encrypt a file (or every file of a directory, each under its own data key) wrapped by KEY."""
    from airlock.crypto import KeyRef, encrypt_file
    from airlock.crypto.format import FileIdentity
    from airlock.crypto.tree import encrypt_tree

    with handle_errors(as_json):
        _need(src)
        _sweep(dst)
        ref = KeyRef.parse(key)
        provider = _registry(config).get(ref.provider)
        if src.is_dir():
            files = encrypt_tree(src, dst, provider, ref.key_id, chunk_size=chunk_size, workers=workers,
                                 model=model or "")
            _tree_report(dst, files, as_json, f"encrypted under {ref}")
            return
        with progress_bytes("encrypting", src.stat().st_size, not as_json) as prog:
            header = encrypt_file(src, dst, provider, ref.key_id, chunk_size=chunk_size, workers=workers,
                                  progress=prog, identity=FileIdentity(model, src.name) if model else None)
        info = _header_dict(dst, header)
        if as_json:
            emit_json({"ok": True, **info})
        else:
            _say(f"{dst}: {info['plaintext_size']} bytes in {info['chunks']} chunks, key {ref}")


@app.command("decrypt")
def decrypt_cmd(
    src: Path = typer.Option(..., "--in", "-i", help="Encrypted file, or a directory of them."),
    dst: str = typer.Option(..., "--out", "-o",
                            help="Plaintext file or new directory (appears only when every chunk verified), "
                            "or - for stdout "
                            "(streamed: a later bad chunk aborts with exit 13 after earlier output)."),
    workers: int = typer.Option(1, "--workers", min=1, max=16,
                                help="Threads for chunk decryption (1 measured fastest)."),
    config: Path = ConfigOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Decrypt a file or directory; the provider and key come from each file's header. Plaintext
    belongs on tmpfs (/dev/shm, /run) or an encrypted volume."""
    from airlock.crypto import decrypt_file, decrypt_stream
    from airlock.crypto.tree import decrypt_tree
    from airlock.repo.encryption import file_context, tree_context, verify_file

    with handle_errors(as_json and dst != "-"):
        _need(src)
        if dst != "-":
            _sweep(Path(dst))
        reg = _registry(config)
        if src.is_dir():  # a repository version: bound to its model, checked against the catalog
            files = decrypt_tree(src, Path(dst), reg, workers=workers, **tree_context(src))
            _tree_report(Path(dst), files, as_json, "decrypted and authenticated")
            return
        ctx = file_context(src)  # a repository file: bound to its place, the catalog's plaintext
        if dst == "-":
            if ctx:
                verify_file(src, reg)  # checked in full before any byte reaches stdout
            with open(src, "rb") as f:
                decrypt_stream(f, sys.stdout.buffer, reg, workers=workers, path=str(src),
                               identity=ctx.get("identity"))
            sys.stdout.buffer.flush()
            return
        with progress_bytes("decrypting", src.stat().st_size, not as_json) as prog:
            header = decrypt_file(src, Path(dst), reg, workers=workers, progress=prog, **ctx)
        if as_json:
            emit_json({"ok": True, **_header_dict(src, header), "output": dst})
        else:
            _say(f"{dst}: {header.plaintext_size} bytes decrypted and authenticated")


@app.command("inspect")
def inspect_cmd(path: Path = typer.Argument(..., help="Encrypted file."), as_json: bool = JsonOpt) -> None:
    """Show an encrypted file's header (provider, key id, sizes); needs no key."""
    from airlock.crypto import read_encrypted_header

    with handle_errors(as_json):
        info = _header_dict(path, read_encrypted_header(path))
        if as_json:
            emit_json({"ok": True, **info})
        else:
            for k, v in info.items():
                _say(f"{k}: {v}")


@app.command("verify")
def verify_cmd(paths: list[Path] = typer.Argument(..., help="Encrypted files or directories."),
               config: Path = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """Authenticate every chunk of every encrypted file and print the plaintext sha256. Files of a
    repository must be bound to their place and match the catalog's plaintext hashes (exit 13)."""
    from airlock.crypto.rotate import encrypted_files
    from airlock.repo.encryption import verify_file

    with handle_errors(as_json):
        reg = _registry(config)
        results = []
        for root in paths:
            for path in encrypted_files(root):
                size, digest = verify_file(path, reg, root)
                results.append({"path": str(path), "size": size, "sha256": digest})
                if not as_json:
                    _say(f"{digest}  {path}")
        if as_json:
            emit_json({"ok": True, "files": results})


RotatePathsOpt = typer.Option(None, "--path", "-p", help="Encrypted file or directory tree (repeatable).")
RotateRootOpt = root_option(None, envvar=None, help="Airlock root (e.g. /srv/airlock): its whole model "
                             "repository (versions and kept deltas) under the repository lock, auditing "
                             "into its update_history.log; the catalog then records the new key.")
NewKeyOpt = typer.Option(..., "--new-key", "--new-key-id", "-k",
                         help="PROVIDER:KEY_ID to move every file to.")
AuditOpt = typer.Option(None, "--audit-log", envvar="AIRLOCK_KEYS_AUDIT",
                        help="Hash-chained audit log for key operations (default: the repository's with "
                        "--root, else /var/log/airlock/keys-audit.jsonl).")


@app.command("rotate")
def rotate_cmd(
    paths: list[Path] = RotatePathsOpt,
    root: Path = RotateRootOpt,
    new_key: str = NewKeyOpt,
    rewrap_latest: bool = typer.Option(False, "--rewrap-latest",
                                       help="Also re-wrap files already under NEW_KEY to the provider's "
                                       "newest key version (Vault transit rewrap); with --root, Vault "
                                       "then refuses older key versions (min_decryption_version)."),
    audit_log: Path = AuditOpt,
    config: Path = ConfigOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Re-wrap every data key under a new key-encryption key; data is not re-encrypted. Crash-safe and
    idempotent: re-run after an interruption to finish."""
    _move_keys(paths, root, new_key, audit_log, config, as_json, reencrypt=False, rewrap_latest=rewrap_latest)


@app.command("reencrypt")
def reencrypt_cmd(
    paths: list[Path] = RotatePathsOpt,
    root: Path = RotateRootOpt,
    new_key: str = NewKeyOpt,
    audit_log: Path = AuditOpt,
    config: Path = ConfigOpt,
    as_json: bool = JsonOpt,
) -> None:
    """For a compromised key-encryption key: re-encrypt every file under a FRESH data key wrapped by
    NEW_KEY (re-wrapping would keep data keys the old KEK's holder may have unwrapped). Plaintext
    stays in memory; each file is replaced atomically, hard links kept. Use a KEK never used
    before: a re-run skips files already under it. Then retire the old KEK (docs/security.md)."""
    _move_keys(paths, root, new_key, audit_log, config, as_json, reencrypt=True, rewrap_latest=False)


def _move_keys(paths: list[Path] | None, root: Path | None, new_key: str, audit_log: Path | None,
               config: Path | None, as_json: bool, *, reencrypt: bool, rewrap_latest: bool) -> None:
    from airlock.crypto import KeyAuditLog, KeyRef, rotate_tree
    from airlock.crypto.rotate import reencrypt_tree
    from airlock.errors import AirlockError

    with handle_errors(as_json):
        if not paths and root is None:
            raise AirlockError("nothing to rotate: give --path and/or --root", rule="input")
        ref = KeyRef.parse(new_key)
        reg = _registry(config)
        reg.get(ref.provider)
        for target in paths or []:
            _need(target)
        default_log = Path("/var/log/airlock/keys-audit.jsonl")
        if root is not None:
            from airlock.repo.layout import Layout

            default_log = Layout(root).audit_log
            if not Layout(root).repo.is_dir():
                raise AirlockError(f"{Layout(root).repo}: no model repository under this root",
                                   path=str(Layout(root).repo), rule="input")
        audit_path = audit_log or default_log
        audit_path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        audit = KeyAuditLog(audit_path)
        results = []
        extra: dict[str, Any] = {}
        for target in paths or []:
            if reencrypt:
                results.extend(reencrypt_tree(target, reg, ref, audit=audit))
            else:
                results.extend(rotate_tree(target, reg, ref, rewrap_latest=rewrap_latest, audit=audit))
        if root is not None:
            from airlock.repo.encryption import rotate_repository

            done = rotate_repository(root, reg, ref, reencrypt=reencrypt, rewrap_latest=rewrap_latest,
                                     audit=audit)
            results.extend(done.results)
            extra = {"catalog_versions": done.versions, "min_decryption_version": done.min_decryption_version,
                     "sealed_deltas": done.sealed_deltas or []}
        counts: dict[str, int] = {}
        for r in results:
            counts[r.action] = counts.get(r.action, 0) + 1
        if as_json:
            emit_json({"ok": True, "new_key": str(ref), "counts": counts, "audit_log": str(audit.path),
                       "files": [r.__dict__ for r in results], **extra})
        else:
            for r in results:
                _say(f"{r.action:>22}  {r.path}  {r.old} -> {r.new} (generation {r.generation})")
            _say(f"{len(results)} file(s): " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
                 + f"; audit: {audit.path}")
            if extra.get("catalog_versions"):
                _say(f"catalog now records {ref} for: {', '.join(extra['catalog_versions'])}")
            for sealed in extra.get("sealed_deltas") or []:
                _say(f"encrypted kept delta {sealed} (it was stored in plaintext)")
            if extra.get("min_decryption_version"):
                _say(f"{ref}: the provider now refuses key versions below {extra['min_decryption_version']}")
