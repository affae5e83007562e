"""Bring a (re)started Triton back to serving each model's verified ``current`` version.

Triton runs in explicit model-control mode and loads nothing by itself, so after a crash, a restart
or a reboot it serves nothing until told. ``restore`` is the start hook (``airlock serve restore``,
run by the ``supervise`` loop in ``airlock.serving.server`` after every start, or by systemd's
``ExecStartPost``). Per model with a ``current`` link:

1. Re-hash the version against the catalog and the kept signed manifests
   (``Repository.verify``); an encrypted version is refused like a tampered one.
2. Good: make the Triton entry serve exactly that version (``config.pbtxt`` with the stored
   serving settings), load it, wait READY, and for the python backend run a liveness inference.
3. Not good: audit the failure (``serve-restore``, result ``failed``, with the drift) and fall
   back to the previous good version: those the Triton entry served before, then the other
   installed versions, newest first, each verified the same way. ``current`` is not moved: the
   repository stays as the operator left it; the report and the audit log say what is served.

Leftover reload candidates (``<model>__candidate``, a reload killed mid-way) are removed first.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airlock.errors import AirlockError, IntegrityError, RepositoryError
from airlock.serving.client import TritonClient
from airlock.serving.errors import ServingError
from airlock.serving.settings import SettingsStore
from airlock.serving.triton_repo import CANDIDATE_SUFFIX, TritonModel, airlock_models, model_lock

ACTION = "serve-restore"


@dataclass
class ModelRestore:
    model: str
    current: str
    served: str | None = None
    triton_version: int | None = None
    refused: dict[str, str] = field(default_factory=dict)  # version -> why it was not served
    error: str | None = None

    @property
    def status(self) -> str:
        if self.served is None:
            return "failed"
        return "current" if self.served == self.current else "fallback"


@dataclass
class RestoreReport:
    models: dict[str, ModelRestore] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(m.status == "current" for m in self.models.values())

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "seconds": round(self.seconds, 3), "models": {
            name: {"status": m.status, "current": m.current, "served": m.served,
                   "triton_version": m.triton_version, "refused": m.refused, "error": m.error}
            for name, m in self.models.items()}}


def wait_live(client: TritonClient, timeout: float, poll_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not client.live():
        if time.monotonic() > deadline:
            raise ServingError(f"Triton at {client.url} not live after {timeout:g}s", path=client.url,
                               rule="triton-down")
        time.sleep(poll_s)


def _drop_candidates(client: TritonClient, triton_root: Path) -> None:
    for d in sorted(triton_root.glob(f"*{CANDIDATE_SUFFIX}")) if triton_root.is_dir() else []:
        with contextlib.suppress(ServingError):
            if client.loaded_versions(d.name):
                client.unload(d.name, timeout=60)
        shutil.rmtree(d, ignore_errors=True)


def _fallbacks(entry: TritonModel, model_dir: Path, current: str) -> list[str]:
    """The previous good candidates: what the Triton entry served, then installed versions, newest first."""
    from airlock.repo.layout import version_key

    before = [entry.versions()[n].airlock_version for n in entry.served() if n in entry.versions()]
    installed = sorted((p.name for p in model_dir.iterdir() if p.is_dir() and not p.is_symlink()
                        and not p.name.startswith(".")), key=version_key, reverse=True)
    out: list[str] = []
    for v in [*reversed(before), *installed]:
        if v != current and v not in out:
            out.append(v)
    return out


def restore(client: TritonClient, triton_root: Path, airlock_root: Path, *, models: list[str] | None = None,
            wait_live_s: float = 120.0, load_timeout: float = 300.0) -> RestoreReport:
    """Serve each model's verified ``current`` version (else the previous good one) on a started Triton."""
    from airlock.repo import Repository

    t0 = time.monotonic()
    wait_live(client, wait_live_s)
    _drop_candidates(client, triton_root)
    report = RestoreReport()
    active = airlock_models(airlock_root)
    store = SettingsStore(airlock_root)
    repo = Repository(airlock_root, lock_timeout=60)
    try:
        for name in models if models is not None else list(active):
            if name not in active:
                raise RepositoryError(f"{airlock_root / 'model_repo' / name}: no current version",
                                      path=str(airlock_root / "model_repo" / name))
            current, _ = active[name]
            row = report.models[name] = ModelRestore(name, current)
            entry = TritonModel(triton_root / name, store.load(name))
            model_dir = airlock_root / "model_repo" / name
            with model_lock(triton_root, name, wait=True):
                for version in [current, *_fallbacks(entry, model_dir, current)]:
                    why = _serve(repo, client, entry, name, version, model_dir / version, load_timeout)
                    if why is None:
                        row.served, row.triton_version = version, entry.number_of(version)
                        break
                    row.refused[version] = why
                    with contextlib.suppress(AirlockError, OSError):
                        repo.record_failure(ACTION, name, IntegrityError(
                            f"{name} {version} not served after a Triton start: {why}"))
            if row.served is None:
                row.error = f"no version of {name} verifies and loads; {name} is not served"
    finally:
        repo.close()
    report.seconds = time.monotonic() - t0
    return report


def _serve(repo: Any, client: TritonClient, entry: TritonModel, name: str, version: str, path: Path,
           load_timeout: float) -> str | None:
    """Verify, point the entry at ``version`` alone, load, check; None when it serves, else why not."""
    from airlock.serving.reload import smoke_test
    try:
        report = repo.verify(name, version)
        if not report["ok"]:
            first = report["drift"][0] if report["drift"] else {}
            return (f"hashes do not verify ({len(report['drift'])} problem(s); first: "
                    f"{first.get('rule')} {first.get('path')})")
        number = entry.ensure_version(version, path)
        if entry.write_config([number]) or not client.model_ready(name, number):
            client.load(name)
        client.wait_ready(name, number, timeout=load_timeout)
    except ServingError as exc:
        if exc.rule in ("triton-down", "triton-timeout"):
            raise
        return str(exc)
    except AirlockError as exc:
        return str(exc)
    if entry.options.gate in ("infer", "stream"):  # vllm / tensorrtllm: readiness (no record here)
        result = smoke_test(client, name, number, None, gate=entry.options.gate)
        if not result.ok:
            return f"liveness inference failed: {result.detail}"
    return None
