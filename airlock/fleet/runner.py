"""``run_playbook``: one Airlock playbook through ansible-runner.

The private data dir holds ``env/extravars`` (mode 0600: trust lists, keyring paths and any secret
go there, never onto a command line), ``env/envvars`` and the artifacts of the last runs
(``rotate_artifacts``). Progress comes from runner events, so the caller sees batches and hosts as
they happen."""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airlock import settings
from airlock.errors import FleetError
from airlock.fleet.events import Batch, EventTracker, HostSummary

PLAYBOOKS = ("install", "update", "rollback", "verify")
CONTENT_ENV = settings.ANSIBLE_DIR_ENV
RUNNER_DIR_ENV = settings.RUNNER_DIR_ENV


def collections_paths(content: Path) -> list[str]:
    """Where Ansible must look for ``airlock.appliance``: a checkout carries ``.collections/`` (one symlink
    back to itself); a collection installed from the built tarball sits at
    ``<dir>/ansible_collections/airlock/appliance``, so ``<dir>`` is the collections path. Without this the
    installed collection's own ``ansible.cfg`` (``collections_path = .collections``) resolves nothing."""
    paths = []
    if content.parent.parent.name == "ansible_collections":
        paths.append(str(content.parents[2]))
    if (content / ".collections").is_dir():
        paths.append(str(content / ".collections"))
    return paths


def content_dir() -> Path:
    """Where playbooks/, roles/, plugins/ and ansible.cfg are: $AIRLOCK_ANSIBLE_DIR, else this checkout."""
    root = settings.ansible_dir() or Path(__file__).resolve().parents[2]
    if not (root / "playbooks").is_dir() or not (root / "ansible.cfg").is_file():
        raise FleetError(f"{root}: no Airlock Ansible content (playbooks/, ansible.cfg); set {CONTENT_ENV}",
                         path=str(root), rule="ansible-content")
    return root


@dataclass
class FleetResult:
    rc: int
    status: str
    hosts: list[HostSummary]
    batches: list[list[str]]
    stats: dict[str, dict[str, int]]
    artifacts: Path | None = None
    events: list[dict[str, Any]] = field(default_factory=list, repr=False)
    error: str | None = None  # what Ansible printed when it failed outside any task (hosts not started)
    check: bool = False

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def host(self, name: str) -> HostSummary:
        for h in self.hosts:
            if h.host == name:
                return h
        raise KeyError(name)

    def as_dict(self) -> dict[str, Any]:
        return {"rc": self.rc, "status": self.status, "ok": self.ok, "check": self.check,
                "batches": self.batches, "hosts": [h.as_dict() for h in self.hosts], "stats": self.stats,
                "error": self.error, "artifacts": str(self.artifacts) if self.artifacts else None}


def _write_private(path: Path, text: str) -> None:
    """Create or replace ``path`` with mode 0600 from the start (no window with wider permissions)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def prepare_private_data_dir(pdd: Path, extravars: dict[str, Any], envvars: dict[str, str],
                             cmdline: str) -> Path:
    """Write this run's env/ files. Every one is rewritten (or removed): ansible-runner persists a
    ``cmdline`` it was given, and a stale ``--check`` from an earlier run must not leak into this one."""
    pdd.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(pdd, 0o700)
    _write_private(pdd / "env" / "extravars", json.dumps(extravars, indent=2, sort_keys=True))
    _write_private(pdd / "env" / "envvars", json.dumps(envvars, indent=2, sort_keys=True))
    stale = pdd / "env" / "cmdline"
    if cmdline:
        _write_private(stale, cmdline)
    elif stale.exists():
        stale.unlink()
    (pdd / "env" / "passwords").unlink(missing_ok=True)  # answers to prompts are never kept on disk
    return pdd


def target_hosts(inventory: Path, pattern: str, limit: str | None) -> list[str]:
    """The hosts a playbook run will target (so hosts a stopped rollout never reached get a row)."""
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader

    try:
        inv = InventoryManager(loader=DataLoader(), sources=[str(inventory)])
        if limit:
            inv.subset(limit)
        return [h.name for h in inv.get_hosts(pattern)]  # inventory order: the order of serial's batches
    except Exception:  # the summary is best effort; the run itself reports real errors
        return []


def _in_order(hosts: list[str], order: list[str]) -> list[str]:
    """A batch's hosts in inventory order (runner events arrive in whatever order the forks finish)."""
    rank = {h: i for i, h in enumerate(order)}
    return sorted(hosts, key=lambda h: (rank.get(h, len(rank)), h))


@dataclass(frozen=True)
class Vault:
    """How Ansible opens vaulted variables: a password file (path), or a password asked for by the
    CLI and given to Ansible's prompt (``--ask-vault-pass``) through runner's pexpect, in memory only."""

    password_file: Path | None = None
    password: str | None = None

    def cmdline(self) -> list[str]:
        if self.password_file is not None:
            if not self.password_file.is_file():
                raise FleetError(f"{self.password_file}: no such vault password file",
                                 path=str(self.password_file), rule="vault")
            return ["--vault-password-file", str(self.password_file.resolve())]
        return ["--ask-vault-pass"] if self.password is not None else []

    def prompts(self) -> dict[str, str] | None:
        return {r"(?i)vault password[^:\n]*:\s*$": self.password} if self.password is not None else None


def run_playbook(name: str, inventory: Path, extravars: dict[str, Any], *, limit: str | None = None,
                 check: bool = False, diff: bool = False,
                 on_event: Callable[[dict[str, Any]], None] | None = None,
                 private_data_dir: Path | None = None, rotate_artifacts: int = 5, verbosity: int = 0,
                 envvars: dict[str, str] | None = None, timeout: int | None = None,
                 tags: list[str] | None = None, skip_tags: list[str] | None = None,
                 vault: Vault | None = None) -> FleetResult:
    """Run ``playbooks/<name>.yml`` against ``inventory``; ``on_event`` sees every runner event."""
    import ansible_runner

    if name not in PLAYBOOKS:
        raise FleetError(f"unknown playbook {name!r} (one of {', '.join(PLAYBOOKS)})", rule="playbook")
    content = content_dir()
    inventory = Path(inventory).resolve()
    if not inventory.exists():
        raise FleetError(f"{inventory}: no such inventory", path=str(inventory), rule="inventory")
    pdd = Path(private_data_dir or settings.runner_dir()
               or Path.home() / ".cache" / "airlock" / "runner" / name)
    bindir = str(Path(sys.executable).parent)
    env = {"ANSIBLE_CONFIG": str(content / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_FORCE_COLOR": "0", "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
           "PYTHONPATH": os.pathsep.join(p for p in (str(content), os.environ.get("PYTHONPATH", "")) if p),
           **({"ANSIBLE_COLLECTIONS_PATH": os.pathsep.join(cp)}
              if (cp := collections_paths(content)) else {}),
           **(envvars or {})}
    vault = vault or Vault()
    cmdline = " ".join(shlex.quote(x) for x in (["--check"] if check else []) + (["--diff"] if diff else [])
                       + vault.cmdline())
    prepare_private_data_dir(pdd, extravars, env, cmdline)
    tracker = EventTracker()
    events: list[dict[str, Any]] = []

    def handler(event: dict[str, Any]) -> bool:
        tracker.handle(event)
        events.append(event)
        if on_event is not None:
            on_event(event)
        return True

    try:
        r = ansible_runner.run(
            private_data_dir=str(pdd), project_dir=str(content),
            playbook=str(content / "playbooks" / f"{name}.yml"),
            inventory=str(inventory), limit=limit, cmdline=cmdline or None, event_handler=handler,
            tags=",".join(tags) if tags else None, skip_tags=",".join(skip_tags) if skip_tags else None,
            passwords=vault.prompts(),
            rotate_artifacts=rotate_artifacts, quiet=True, verbosity=verbosity or None, timeout=timeout,
            envvars=env)
    finally:  # runner persists given prompt answers in env/passwords: the vault password must not stay
        (pdd / "env" / "passwords").unlink(missing_ok=True)
    seen = {h.host for h in tracker.summary()}
    pattern = str(extravars.get("airlock_hosts", "appliances"))
    error = tracker.error
    targets = target_hosts(inventory, pattern, limit)
    for host in targets:
        if host not in seen:  # never reached: the rollout stopped earlier, or Ansible itself failed
            tracker.hosts[host] = HostSummary(host, result="not started",
                                              message=error.splitlines()[0] if error else None)
    return FleetResult(rc=int(r.rc if r.rc is not None else 1), status=str(r.status), hosts=tracker.summary(),
                       batches=[_in_order(b.hosts, targets) for b in tracker.batches if b.hosts],
                       stats=tracker.stats,
                       artifacts=Path(r.config.artifact_dir) if getattr(r, "config", None) else None,
                       events=events, error=error, check=check)


__all__ = ["Batch", "FleetResult", "HostSummary", "Vault", "run_playbook"]
