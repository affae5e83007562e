"""Runner events -> batches and per-host summary rows (host, from, to, result, duration).

With ``serial``, Ansible starts the play once per batch (``playbook_on_play_start``); the hosts that
report task results after it form the batch. Versions come from the ``models`` result of the
``airlock_model`` module (before/after active version per model)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

HOST_EVENTS = {"runner_on_ok": "ok", "runner_on_failed": "failed", "runner_on_unreachable": "unreachable",
               "runner_on_skipped": "skipped"}


@dataclass
class HostSummary:
    host: str
    from_version: str | None = None
    to_version: str | None = None
    result: str = "ok"  # ok | changed | failed | failed (rolled back) | unreachable | not started
    duration: float = 0.0
    changed: int = 0
    failed_task: str | None = None
    message: str | None = None
    rescued: bool = False
    seen_active: str | None = None  # from an airlock_model_info result, when no version changed
    first: datetime | None = None
    last: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"host": self.host, "from": self.from_version, "to": self.to_version, "result": self.result,
                "duration": round(self.duration, 2), "changed": self.changed, "failed_task": self.failed_task,
                "message": self.message}


@dataclass
class Batch:
    index: int
    hosts: list[str] = field(default_factory=list)


def _ts(event: dict[str, Any]) -> datetime | None:
    raw = event.get("created")
    try:
        return datetime.fromisoformat(raw) if isinstance(raw, str) else None
    except ValueError:
        return None


def _short(msg: Any) -> str:
    text = str(msg or "").strip().splitlines()
    return text[0][:300] if text else ""


class EventTracker:
    """Feed it every runner event (``handle``); read ``batches``, ``hosts`` and ``stats``."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.hosts: dict[str, HostSummary] = {}
        self.stats: dict[str, dict[str, int]] = {}
        self.play: str | None = None

    def _host(self, name: str) -> HostSummary:
        if name not in self.hosts:
            self.hosts[name] = HostSummary(name)
        return self.hosts[name]

    def handle(self, event: dict[str, Any]) -> None:
        kind = event.get("event", "")
        data = event.get("event_data") or {}
        if kind == "playbook_on_play_start":
            name = data.get("play") or data.get("name")
            self.play = name
            self.batches.append(Batch(len(self.batches) + 1))
            return
        if kind == "playbook_on_stats":
            for key in ("ok", "changed", "failures", "dark", "skipped", "rescued", "ignored", "processed"):
                for host, n in (data.get(key) or {}).items():
                    self.stats.setdefault(host, {})[key] = n
            self._finish()
            return
        if kind not in HOST_EVENTS and kind != "runner_item_on_ok":
            return
        host = data.get("host")
        if not host:
            return
        if self.batches and host not in self.batches[-1].hosts:
            self.batches[-1].hosts.append(host)
        hs = self._host(host)
        ts = _ts(event)
        if ts:
            hs.first = hs.first or ts
            hs.last = ts
        res = data.get("res") or {}
        if kind == "runner_on_failed" and not data.get("ignore_errors"):
            hs.failed_task = data.get("task")
            hs.message = _short(res.get("msg"))
        elif kind == "runner_on_unreachable":
            hs.result = "unreachable"
            hs.message = _short(res.get("msg"))
        models = res.get("models") if isinstance(res, dict) else None
        if isinstance(models, dict) and str(data.get("task_action", "")).endswith("airlock_model"):
            for info in models.values():
                if isinstance(info, dict):
                    if hs.from_version is None:
                        hs.from_version = info.get("from")
                    hs.to_version = info.get("to")
        repo = res.get("airlock_repo") if isinstance(res, dict) else None
        if isinstance(repo, dict):
            active = [m.get("active") for m in (repo.get("models") or {}).values() if isinstance(m, dict)]
            if active:
                hs.seen_active = active[0]

    def _finish(self) -> None:
        for host, st in self.stats.items():
            hs = self._host(host)
            hs.changed = st.get("changed", 0)
            if st.get("dark"):
                hs.result = "unreachable"
            elif st.get("failures"):
                hs.result = "failed (rolled back)" if st.get("rescued") else "failed"
                hs.rescued = bool(st.get("rescued"))
            else:
                hs.result = "changed" if hs.changed else "ok"
            if hs.from_version is None and hs.to_version is None:
                hs.from_version = hs.to_version = hs.seen_active
            if hs.first and hs.last:
                hs.duration = (hs.last - hs.first).total_seconds()

    def summary(self) -> list[HostSummary]:
        return [self.hosts[h] for h in sorted(self.hosts)]
