"""Plans: what an operation would change, computed without writing anything (Ansible check mode
and ``--diff`` show them; ``Repository.execute`` carries them out)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class FileAction:
    relpath: str
    size: int
    sha256: str
    how: str  # "copy" | "link" | "delta"
    source: str | None = None  # the file hard-linked from ("<version>/<relpath>")


@dataclass
class Plan:
    action: str  # install | update | activate | rollback | prune
    model: str
    version: str | None
    changed: bool
    before: dict[str, Any]
    after: dict[str, Any]
    files: list[FileAction] = field(default_factory=list)
    bytes_needed: int = 0
    bytes_linked: int = 0
    bytes_free: int | None = None
    remove: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    args: dict[str, Any] = field(default_factory=dict)  # what execute() needs to redo it under the lock

    @property
    def diff(self) -> str:
        """Human-readable before/after (Ansible --diff)."""
        lines = [f"{self.action} {self.model}" + (f" {self.version}" if self.version else "")
                 + ("" if self.changed else " (no change)")]
        for key in sorted(set(self.before) | set(self.after)):
            b, a = self.before.get(key), self.after.get(key)
            lines.append(f"  {key}: {b}" if b == a else f"  {key}: {b} -> {a}")
        copies = [f for f in self.files if f.how != "link"]
        links = [f for f in self.files if f.how == "link"]
        for f in copies:
            lines.append(f"  + {f.relpath} ({f.size} bytes, {f.how})")
        for f in links:
            lines.append(f"  = {f.relpath} ({f.size} bytes, hard link to {f.source})")
        for r in self.remove:
            lines.append(f"  - {r}")
        if self.files or self.bytes_needed:
            lines.append(f"  bytes needed: {self.bytes_needed}, hard-linked: {self.bytes_linked}"
                         + (f", free: {self.bytes_free}" if self.bytes_free is not None else ""))
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines) + "\n"

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.action, "model": self.model, "version": self.version, "changed": self.changed,
            "before": self.before, "after": self.after,
            "files": [{"path": f.relpath, "size": f.size, "sha256": f.sha256, "how": f.how,
                       "source": f.source} for f in self.files],
            "bytes_needed": self.bytes_needed, "bytes_linked": self.bytes_linked,
            "bytes_free": self.bytes_free, "remove": self.remove, "notes": self.notes, "diff": self.diff,
        }


