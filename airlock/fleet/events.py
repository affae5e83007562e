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
    rolled_back: bool = False  # model_update's rollback ran and verified (model_update_outcome)
    plan: list[str] = field(default_factory=list)  # airlock_model's plan (diff text) per changed model
    seen_active: str | None = None  # from an airlock_model_info result, when no version changed
    drift: list[dict[str, Any]] = field(default_factory=list)  # airlock_model_info's drift items, whole
    warnings: list[str] = field(default_factory=list)  # what that check could not vouch for
    first: datetime | None = None
    last: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"host": self.host, "from": self.from_version, "to": self.to_version, "result": self.result,
                "duration": round(self.duration, 2), "changed": self.changed, "failed_task": self.failed_task,
                "message": self.message, "plan": self.plan, "drift": self.drift, "warnings": self.warnings}


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
        self.errors: list[list[str]] = []  # Ansible's own error output (not of a task), one block each
        self._in_error = False

    def _host(self, name: str) -> HostSummary:
        if name not in self.hosts:
            self.hosts[name] = HostSummary(name)
        return self.hosts[name]

    def handle(self, event: dict[str, Any]) -> None:
        kind = event.get("event", "")
        data = event.get("event_data") or {}
        self._error_output(kind, str(event.get("stdout") or ""))
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
        plans = res.get("plans") if isinstance(res, dict) else None
        if isinstance(plans, list) and str(data.get("task_action", "")).endswith("airlock_model"):
            hs.plan.extend(str(p.get("diff", "")) for p in plans if isinstance(p, dict) and p.get("changed"))
        facts = res.get("ansible_facts") if isinstance(res, dict) else None
        if isinstance(facts, dict) and "model_update_outcome" in facts:
            hs.rolled_back = facts["model_update_outcome"] == "rolled back"
        items = res.get("drift_items") if isinstance(res, dict) else None
        if isinstance(items, list) and str(data.get("task_action", "")).endswith("airlock_model_info"):
            hs.drift = [{"host": host, **d} for d in items if isinstance(d, dict)]
            hs.warnings = [str(w) for w in res.get("verify_warnings") or []]
        repo = res.get("airlock_repo") if isinstance(res, dict) else None
        if isinstance(repo, dict):
            active = [m.get("active") for m in (repo.get("models") or {}).values() if isinstance(m, dict)]
            if active:
                hs.seen_active = active[0]

    def _error_output(self, kind: str, text: str) -> None:
        """Errors Ansible prints itself (a playbook that does not load, a module it cannot resolve, a
        vault it cannot open) come as ``verbose`` lines from ``[ERROR]``/``ERROR!`` on."""
        if kind != "verbose":
            self._in_error = False
            return
        if text.startswith(("[ERROR]", "ERROR!")):
            self.errors.append([])
            self._in_error = True
        if self._in_error:
            self.errors[-1].append(text.rstrip())

    @property
    def error(self) -> str | None:
        """The first error block Ansible printed outside any task, blank lines trimmed."""
        if not self.errors:
            return None
        return "\n".join(self.errors[0]).strip() or None

    def _finish(self) -> None:
        for host, st in self.stats.items():
            hs = self._host(host)
            hs.changed = st.get("changed", 0)
            if st.get("dark"):
                hs.result = "unreachable"
            elif st.get("failures"):
                hs.result = "failed (rolled back)" if hs.rolled_back else "failed"
                hs.rescued = bool(st.get("rescued"))
            else:
                hs.result = "changed" if hs.changed else "ok"
            if hs.from_version is None and hs.to_version is None:
                hs.from_version = hs.to_version = hs.seen_active
            if hs.first and hs.last:
                hs.duration = (hs.last - hs.first).total_seconds()

    def summary(self) -> list[HostSummary]:
        return [self.hosts[h] for h in sorted(self.hosts)]
