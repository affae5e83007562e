"""`airlock model ...` commands: the model repository on an appliance (a thin layer over
``airlock.repo.Repository``)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from airlock.cli.common import (
    JsonOpt,
    LockOpt,
    RootOpt,
    check_banner,
    emit_json,
    handle_errors,
    out,
    progress_bytes,
)
from airlock.errors import AirlockError, IntegrityError
from airlock.textsafe import visible

app = typer.Typer(no_args_is_help=True, help="The model repository on an appliance.")

CheckOpt = typer.Option(False, "--check", "--dry-run", help="Only show what would change (writes nothing).")
TorchOpt = typer.Option(False, "--torch-check", help="Also open the shards with safetensors' torch API.")
OwnerOpt = typer.Option(None, "--owner", help="Owner of installed version files (applied when run as root).")
GroupOpt = typer.Option(None, "--group", help="Group of installed version files (applied when run as root).")
EncryptOpt = typer.Option(None, "--encrypt", metavar="PROVIDER:KEY_ID",
                          help="Store the version encrypted at rest under this key (docs/security.md).")
KeysOpt = typer.Option(None, "--keys-config", envvar="AIRLOCK_KEYS_CONFIG",
                       help="Key provider config for encrypted versions (default /etc/airlock/keys.yaml, "
                       "env AIRLOCK_KEYS_CONFIG); PINs and tokens live in files it names, never here.")


def _repo(root: Path, lock_timeout: float | None = None, owner: str | None = None, group: str | None = None,
          torch: bool = False, keys_config: Path | None = None, need_keys: bool = False) -> Any:
    """The repository; key providers are loaded when a config is named, when encryption is asked
    for, or when the default config exists (encrypted versions need it for update/verify/rollback)."""
    from airlock.crypto.providers import load_registry
    from airlock.repo import Repository

    return Repository(root, owner=owner, group=group, lock_timeout=lock_timeout, check_torch=torch,
                      keys=load_registry(keys_config, required=need_keys))


def _planned(repo: Any, action: str, model: str, check: bool, make: Callable[[], Any]) -> Any:
    """Make a plan; outside check mode a refusal is recorded in the audit log like any failure."""
    try:
        return make()
    except AirlockError as exc:
        if not check:
            with contextlib.suppress(AirlockError):
                repo.record_failure(action, model, exc)
        raise


def _say(message: str) -> None:
    out.print(visible(message, lines=True), highlight=False, soft_wrap=True, markup=False)


def _report(plan: Any, as_json: bool, check: bool) -> None:
    if as_json:
        emit_json({"ok": True, "check_mode": check, **plan.as_dict()})
    else:
        if check:
            check_banner()
        out.print(visible(plan.diff, lines=True), highlight=False, soft_wrap=True, markup=False, end="")


def _total(plan: Any) -> int:
    return sum(f.size for f in plan.files if f.how != "link") or 1


@app.command("install")
def install_cmd(
    model: str = typer.Argument(..., help="Model name."),
    version: str = typer.Argument(..., help="SemVer version, e.g. 1.0.0."),
    src_dir: Path = typer.Argument(..., help="Directory with the model files (HF layout)."),
    description: str = typer.Option("", "--description", help="Free text kept in the catalog."),
    dependency: list[str] = typer.Option([], "--dependency", help="NAME=VERSION (e.g. torch=2.13); "
                                       "repeatable."),
    no_activate: bool = typer.Option(False, "--no-activate", help="Install without switching current."),
    torch: bool = TorchOpt, encrypt: str = EncryptOpt, keys_config: Path = KeysOpt,
    check: bool = CheckOpt, root: Path = RootOpt, lock_timeout: float = LockOpt, owner: str = OwnerOpt,
    group: str = GroupOpt, as_json: bool = JsonOpt,
) -> None:
    """Install a full version from a directory (staged, hash-checked, sealed read-only, renamed in);
    with --encrypt every file is stored encrypted, the plaintext hashed while encrypting."""
    from airlock.repo.plan import Provenance

    with handle_errors(as_json):
        deps = dict(d.split("=", 1) for d in dependency if "=" in d)
        repo = _repo(root, lock_timeout, owner, group, torch, keys_config, encrypt is not None)
        plan = _planned(repo, "install", model, check, lambda: repo.plan_install(
            model, version, src_dir, activate=not no_activate,
            provenance=Provenance(description=description, dependencies=deps), encrypt=encrypt))
        if not check:
            with progress_bytes(f"installing {model} {version}", _total(plan), not as_json) as prog:
                plan = repo.execute(plan, progress=prog)
        _report(plan, as_json, check)


@app.command("update")
def update_cmd(
    model: str = typer.Argument(..., help="Model name."),
    delta: Path = typer.Argument(..., help="A .aldelta file from the installed version to the new one."),
    no_activate: bool = typer.Option(False, "--no-activate", help="Install without switching current."),
    torch: bool = TorchOpt, encrypt: str = EncryptOpt, keys_config: Path = KeysOpt,
    check: bool = CheckOpt, root: Path = RootOpt, lock_timeout: float = LockOpt, owner: str = OwnerOpt,
    group: str = GroupOpt, as_json: bool = JsonOpt,
) -> None:
    """Apply a delta to the installed source version; unchanged files are hard links. An encrypted
    source version gives an encrypted result (same key unless --encrypt names another)."""
    with handle_errors(as_json):
        repo = _repo(root, lock_timeout, owner, group, torch, keys_config, encrypt is not None)
        plan = _planned(repo, "update", model, check,
                        lambda: repo.plan_update(model, delta, activate=not no_activate, encrypt=encrypt))
        if not check:
            with progress_bytes(f"updating {model} to {plan.version}", _total(plan), not as_json) as prog:
                plan = repo.execute(plan, progress=prog)
        _report(plan, as_json, check)


@app.command("install-bundle")
def install_bundle_cmd(
    bundle: Path = typer.Argument(..., help="Bundle directory (e.g. on the USB stick) or packed .tar; with "
                                  "--depot, the bundle id in the depot."),
    trust: list[str] = typer.Option(..., "--trust", "-t", help="Pinned signer: the full 40-hex fingerprint "
                                    "of the primary key; repeatable."),
    keyring: Path = typer.Option(None, "--keyring", help="Public keyring file with the trusted keys."),
    gnupghome: Path = typer.Option(None, "--gnupghome", help="GnuPG home holding the keys."),
    compatible: str = typer.Option(None, "--compatible", help="The profile the bundle must match (default: "
                                   "this appliance's recorded profile; must agree with it)."),
    ignore_profile: bool = typer.Option(False, "--ignore-profile", help="Do not check the bundle's profile "
                                        "(an explicit override, written to the audit log)."),
    no_activate: bool = typer.Option(False, "--no-activate", help="Install without switching current."),
    stage_dir: Path = typer.Option(None, "--stage-dir", help="Stage the bundle here (e.g. another disk) "
                                   "instead of ROOT/update_packages/staged/."),
    depot: Path = typer.Option(None, "--depot", help="Stage from this site depot (docs/depot.md): BUNDLE is "
                               "then the bundle id in it, as `airlock depot list` shows it."),
    encrypt: str = EncryptOpt, keys_config: Path = KeysOpt, check: bool = CheckOpt,
    root: Path = RootOpt, lock_timeout: float = LockOpt, owner: str = OwnerOpt, group: str = GroupOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Check space, stage a signed bundle (verified while copying; an interrupted stage resumes),
    then install its models. Staged copies of failed installs are removed, unless the failure can
    resume (interrupted, stick pulled)."""
    from airlock.bundle.profile import ANY_PROFILE
    from airlock.cli.install_bundle import install_bundle

    if ignore_profile and compatible is not None:
        raise typer.BadParameter("give --compatible or --ignore-profile, not both",
                                 param_hint="--ignore-profile")

    def repo_factory() -> Any:
        repo = _repo(root, lock_timeout, owner, group, keys_config=keys_config, need_keys=encrypt is not None)
        if ignore_profile and not check:  # the override is on the record before anything is staged
            with repo._mutating(recover=False):
                repo.audit_record("profile-override", None, None, None, "ok",
                                  {"bundle": str(bundle), "reason": "--ignore-profile"})
        return repo

    install_bundle(bundle, trust=trust, keyring=keyring, gnupghome=gnupghome,
                   compatible=ANY_PROFILE if ignore_profile else compatible, activate=not no_activate,
                   stage_dir=stage_dir, encrypt=encrypt, keys_config=keys_config, check=check,
                   repo_factory=repo_factory, as_json=as_json, depot=depot)


@app.command("activate")
def activate_cmd(
    model: str = typer.Argument(...), version: str = typer.Argument(...),
    check: bool = CheckOpt, root: Path = RootOpt, lock_timeout: float = LockOpt, as_json: bool = JsonOpt,
) -> None:
    """Point current at an installed version (atomic symlink swap)."""
    with handle_errors(as_json):
        repo = _repo(root, lock_timeout)
        plan = _planned(repo, "activate", model, check, lambda: repo.plan_activate(model, version))
        _report(plan if check else repo.execute(plan), as_json, check)


@app.command("rollback")
def rollback_cmd(
    model: str = typer.Argument(...),
    to: str = typer.Option(None, "--to", help="Version to go back to (default: the previous good one)."),
    keys_config: Path = KeysOpt,
    check: bool = CheckOpt, root: Path = RootOpt, lock_timeout: float = LockOpt, as_json: bool = JsonOpt,
) -> None:
    """Back to the previous good version; rebuilt from the kept reverse deltas if it was pruned."""
    with handle_errors(as_json):
        repo = _repo(root, lock_timeout, keys_config=keys_config)
        plan = _planned(repo, "rollback", model, check, lambda: repo.plan_rollback(model, to))
        if not check:
            with progress_bytes(f"rolling {model} back to {plan.version}", _total(plan), not as_json) as prog:
                plan = repo.execute(plan, progress=prog)
        _report(plan, as_json, check)


@app.command("prune")
def prune_cmd(
    model: str = typer.Argument(...),
    keep: int = typer.Option(2, "--keep", min=1, help="Versions to keep (never the active or previous)."),
    check: bool = CheckOpt, root: Path = RootOpt, lock_timeout: float = LockOpt, as_json: bool = JsonOpt,
) -> None:
    """Remove old versions beyond --keep (their catalog records and kept deltas stay)."""
    with handle_errors(as_json):
        repo = _repo(root, lock_timeout)
        plan = _planned(repo, "prune", model, check, lambda: repo.plan_prune(model, keep))
        _report(plan if check else repo.execute(plan), as_json, check)


@app.command("list")
def list_cmd(root: Path = RootOpt, as_json: bool = JsonOpt) -> None:
    """Models with their active, previous and other versions."""
    with handle_errors(as_json):
        models = _repo(root).list_models()
        if as_json:
            emit_json({"ok": True, "models": models})
            return
        for m in models:
            others = ", ".join(f"{v['version']} ({v['state']}"
                               f"{'' if v['location'] == 'hot' else ', ' + v['location']})"
                               for v in m["versions"])
            _say(f"{m['model']}: active {m['active']}, previous {m['previous']}; {others}")


@app.command("show")
def show_cmd(model: str = typer.Argument(...), version: str = typer.Argument(None), root: Path = RootOpt,
             as_json: bool = JsonOpt) -> None:
    """Catalog record of a model, or of one version (with per-file hashes)."""
    with handle_errors(as_json):
        info = _repo(root).show(model, version)
        if as_json:
            emit_json({"ok": True, **info})
            return
        for k, v in info.items():
            if k == "versions":
                for row in v:
                    _say(f"  {row['version']}: {row['state']}, created {row['created']}, activated "
                         f"{row['activated']}, {row['description']}")
            elif k == "files":
                for rel, f in v.items():
                    _say(f"  {rel}: {f['size']} bytes sha256 {f['sha256']}")
            else:
                _say(f"{k}: {v}")


@app.command("history")
def history_cmd(model: str = typer.Argument(None),
                limit: int = typer.Option(50, "--limit", help="Newest records shown."),
                root: Path = RootOpt, as_json: bool = JsonOpt) -> None:
    """Install, update, activate, rollback, prune and verify history (who, what, when)."""
    with handle_errors(as_json):
        rows = _repo(root).history(model, limit)
        if as_json:
            emit_json({"ok": True, "history": rows})
            return
        for r in rows:
            _say(f"{r['time']} {r['actor']} {r['action']} {r['model'] or ''} {r['from_version'] or ''} -> "
                 f"{r['to_version'] or ''} {r['result']}")


VerifyTrustOpt = typer.Option([], "--trust", "-t", help="Pinned signer fingerprint: the kept signed "
                              "manifests' signatures are checked again; repeatable.")
KeyringOpt = typer.Option(None, "--keyring", help="Public keyring file with the trusted keys.")
GnupgOpt = typer.Option(None, "--gnupghome", help="GnuPG home holding the keys.")


@app.command("verify")
def verify_cmd(model: str = typer.Argument(None, help="Model (default: the whole repository: every model, "
                                           "repository modes, sequence, audit chain, history)."),
               version: str = typer.Argument(None), root: Path = RootOpt,
               trust: list[str] = VerifyTrustOpt, keyring: Path = KeyringOpt, gnupghome: Path = GnupgOpt,
               lock_timeout: float = LockOpt, owner: str = OwnerOpt, group: str = GroupOpt,
               keys_config: Path = KeysOpt, as_json: bool = JsonOpt) -> None:
    """Read-only compliance check (writes nothing, not even an audit record): every file re-hashed
    (two workers) against the kept signed manifests and the catalog, provenance, modes, owner, extra,
    missing and stray files, the current link; without MODEL also repository modes, sequence, audit
    chain and history. Without --trust the signatures are NOT checked (said loudly). Exit 13 on drift."""
    from airlock.bundle import Trust

    with handle_errors(as_json):
        t = Trust(fingerprints=trust, gnupghome=gnupghome, keyring=keyring) if trust else None
        repo = _repo(root, lock_timeout, owner, group, keys_config=keys_config)
        if model is None:
            report = repo.compliance(trust=t)
            per_model = list(report["models"].values())
        else:
            with progress_bytes(f"verifying {model}", None, not as_json) as prog:  # bytes re-hashed, rate
                report = repo.verify(model, version, trust=t, progress=prog)
            per_model = [report]
        if not report["signatures_checked"]:
            report.setdefault("warnings", []).insert(
                0, "signatures NOT checked: no --trust given, the kept manifests were used as found")
        if as_json:
            emit_json(report)
        else:
            _verify_human(per_model, report)
        if not report["ok"]:
            if as_json:
                raise typer.Exit(IntegrityError.exit_code)  # the report above is the JSON answer
            first = report["drift"][0]
            raise IntegrityError(f"{model or root}: drift found ({len(report['drift'])} item(s), first: "
                                 f"{first['path']}: {first['rule']})", path=str(root), rule="verify-drift")


def _verify_human(per_model: list[dict[str, Any]], report: dict[str, Any]) -> None:
    from airlock.cli.common import console

    for w in dict.fromkeys(report.get("warnings", [])):
        console.print(f"WARNING: {w}", style="bold yellow", highlight=False, soft_wrap=True, markup=False)
    for rep in per_model:
        for v in rep["versions"]:
            status = "ok" if v["ok"] else "DRIFT"
            enc = f", encrypted ({v['key_ref']})" if v.get("encrypted") else ""
            signed = f", signed manifest {v['manifest']}" if v.get("manifest") else ", no signed manifest"
            where = f", {v['location']} tier at {v['path']}" if v.get("location", "hot") != "hot" else ""
            _say(f"{v['model']} {v['version']} ({v['state']}{where}): {status}, {v['files']} files"
                 f"{enc}{signed}")
        link = rep["current"]
        _say(f"{rep['model']}: current -> {link['target']} "
             f"({'ok' if link['ok'] else 'expected ' + str(link['expected'])})")
    for d in report["drift"]:
        who = " ".join(x for x in (d["model"], d["version"]) if x)
        _say(f"DRIFT {d['rule']}: {d['path']}" + (f" [{who}]" if who else "")
             + ("" if d["expected"] is None and d["found"] is None
                else f" (expected {d['expected']}, found {d['found']})"))
