"""`airlock tier ...` commands: storage tiers of the model repository (a thin layer over
``airlock.repo.tier``; docs/tiers.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from airlock.cli.common import JsonOpt, RootOpt, check_banner, emit_json, handle_errors, out
from airlock.cli.model import KeysOpt
from airlock.textsafe import visible

app = typer.Typer(no_args_is_help=True, help="Storage tiers: hot (the repository), warm (site share), cold.")


def _repo(root: Path, keys_config: Path | None = None) -> Any:
    from airlock.crypto.providers import load_registry
    from airlock.repo import Repository

    return Repository(root, keys=load_registry(keys_config))


def _say(message: str) -> None:
    out.print(visible(message, lines=True), highlight=False, soft_wrap=True, markup=False)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _moved(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json({"ok": True, **result})
        return
    if not result["changed"]:
        _say(f"{result['model']} {result['version']}: already in the {result['to']} tier ({result['path']})")
        return
    _say(f"{result['model']} {result['version']}: {result['from']} -> {result['to']} ({result['path']}), "
         f"{result['files']} files, {_size(result['bytes'])} copied, {result['linked']} linked, verified "
         f"against {result['verified_against']}, {result['seconds']} s")


@app.command("status")
def status_cmd(root: Path = RootOpt, model: str = typer.Option(None, "--model", help="Only this model."),
               verify: bool = typer.Option(False, "--verify", help="Also re-hash every warm/cold copy "
                                           "against the signed hashes (exit 13 on a difference)."),
               keys_config: Path = KeysOpt, as_json: bool = JsonOpt) -> None:
    """Each kept version's tier and path, each tier's directory and free space, the policy. Read-only."""
    from airlock.repo import tier

    with handle_errors(as_json):
        repo = _repo(root, keys_config)
        report = tier.status(repo, model, verify=verify, keys=repo.keys)
        if as_json:
            emit_json(report)
            if not report["ok"]:
                raise typer.Exit(13)
            return
        for name, t in report["tiers"].items():
            if not t["configured"]:
                _say(f"{name}: not configured")
                continue
            free = f", {_size(t['free'])} free of {_size(t['total'])}" if "free" in t else ", NOT AVAILABLE"
            _say(f"{name}: {t['path']}: {t['versions']} versions, {_size(t['bytes'])}{free}")
        pol = report["policy"]
        _say(f"policy: keep {pol['keep_hot'] or 'any number of'} hot per model"
             + (f", versions use at most {pol['hot_share']:.0%} of the hot file system" if pol["hot_share"]
                else ""))
        for v in report["versions"]:
            _say(f"  {v['model']} {v['version']} ({v['state']}): {v['location']}, {_size(v['bytes'])}"
                 + ("" if v["available"] else " (directory not available)")
                 + (f": {'; '.join(v['problems'])}" if v.get("problems") else
                    ", verified" if "problems" in v else ""))
        if not report["ok"]:
            raise typer.Exit(13)


@app.command("configure")
def configure_cmd(
    root: Path = RootOpt,
    warm: Path = typer.Option(None, "--warm", help="Directory of the warm tier (e.g. this appliance's "
                              "directory on the CephFS mount); must exist."),
    cold: Path = typer.Option(None, "--cold", help="Directory of the cold tier (archive, offline media)."),
    unset: list[str] = typer.Option([], "--unset", metavar="TIER", help="Unset the warm or cold tier "
                                    "(refused while it holds versions). Repeatable."),
    keep_hot: int = typer.Option(None, "--keep-hot", help="Policy: hot versions kept per model (active and "
                                 "previous always stay hot); apply demotes the others to warm."),
    hot_share: float = typer.Option(None, "--hot-share", help="Policy: versions use at most this share "
                                    "(0-1] of the hot file system; apply demotes the oldest to warm."),
    clear_policy: bool = typer.Option(False, "--clear-policy", help="Remove the policy."),
    check: bool = typer.Option(False, "--check", "--dry-run", help="Only show what would change."),
    as_json: bool = JsonOpt,
) -> None:
    """Configure the tiers of this repository (stored in its catalog) and the hot-tier policy. With a
    warm tier configured, model prune demotes to it instead of deleting."""
    from airlock.repo import tier

    with handle_errors(as_json):
        dirs: dict[str, Path | None] = {t: None for t in unset}
        if warm is not None:
            dirs["warm"] = warm
        if cold is not None:
            dirs["cold"] = cold
        result = tier.configure(_repo(root), dirs=dirs, keep_hot=keep_hot, hot_share=hot_share,
                                clear_policy=clear_policy, check=check)
        if as_json:
            emit_json({"ok": True, **result})
            return
        if check:
            check_banner()
        for name, d in result.get("tiers", {}).items():
            _say(f"{name}: {d or 'not configured'}")
        verb = "would change" if check else "changed"
        _say(f"{verb}: {result['set']}" if result["changed"] else "unchanged")


@app.command("demote")
def demote_cmd(model: str = typer.Argument(...), version: str = typer.Argument(...),
               to: str = typer.Option("warm", "--to", help="warm or cold."), root: Path = RootOpt,
               keys_config: Path = KeysOpt, as_json: bool = JsonOpt) -> None:
    """Move a kept version (not the active one) to the warm or cold tier: copied, every file checked
    against the signed hashes, then removed from its old place. Crash-safe, audited."""
    from airlock.repo import tier

    with handle_errors(as_json):
        _moved(tier.demote(_repo(root, keys_config), model, version, to).as_dict(), as_json)


@app.command("promote")
def promote_cmd(model: str = typer.Argument(...), version: str = typer.Argument(...), root: Path = RootOpt,
                keys_config: Path = KeysOpt, as_json: bool = JsonOpt) -> None:
    """Bring a version back to the hot tier (model activate and rollback do this by themselves)."""
    from airlock.repo import tier

    with handle_errors(as_json):
        _moved(tier.promote(_repo(root, keys_config), model, version).as_dict(), as_json)


@app.command("apply")
def apply_cmd(root: Path = RootOpt, check: bool = typer.Option(False, "--check", "--dry-run",
                                                               help="Only show what would move."),
              keep_hot: int = typer.Option(None, "--keep-hot", help="Use this keep-hot instead."),
              hot_share: float = typer.Option(None, "--hot-share", help="Use this hot-share instead."),
              keys_config: Path = KeysOpt, as_json: bool = JsonOpt) -> None:
    """Apply the configured policy (or the one given): demote to the warm tier what keep-hot /
    hot-share ask for."""
    from airlock.repo import tier

    with handle_errors(as_json):
        pol = tier.Policy(keep_hot, hot_share) if keep_hot is not None or hot_share is not None else None
        result = tier.apply_policy(_repo(root, keys_config), check=check, pol=pol)
        if as_json:
            emit_json(result)
            return
        if check:
            check_banner()
        if not result["demote"]:
            _say("policy holds: nothing to demote")
        for d in result["demote"]:
            _say(f"{d['model']} {d['version']}: {'would be demoted' if check else 'demoted'} to warm")
