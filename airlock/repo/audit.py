"""Append-only, hash-chained audit log: one JSON object per line, each carrying ``prev``, the sha256
of the previous line's bytes (``GENESIS`` for the first). Editing, deleting or reordering a record
breaks the chain. The head (seq, hash) is kept outside the log twice: in the catalog and, for a fleet,
on the control node (``anchor``, playbooks/verify.yml), so a truncated or replaced log is detected
even when the catalog was edited too. Reading the log never writes to it."""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import socket
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airlock.errors import AuditError
from airlock.faults import fault_point
from airlock.fsutil import fsync_dir

if TYPE_CHECKING:
    from airlock.repo.catalog import Catalog

GENESIS = "0" * 64
AUDIT_MODE = 0o640  # the log's mode (verify reports drift from it)


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


@dataclass
class AuditHead:
    seq: int
    hash: str

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "hash": self.hash}


@dataclass
class AuditProblem:
    rule: str  # audit-chain | audit-head (the catalog's head) | audit-anchor (the control node's)
    message: str


@dataclass
class AuditReport:
    path: str
    ok: bool
    records: int
    head: AuditHead
    findings: list[AuditProblem] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        return [f.message for f in self.findings]

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "ok": self.ok, "records": self.records,
                "head": {"seq": self.head.seq, "hash": self.head.hash}, "problems": self.problems,
                "rules": [f.rule for f in self.findings]}


def _iter_lines(path: Path) -> Iterator[bytes]:
    """Non-empty lines, streamed (the log grows for the appliance's lifetime)."""
    if not path.exists():
        return
    with open(path, "rb") as fh:
        for raw in fh:
            line = raw.rstrip(b"\n")
            if line:
                yield line


def scan(path: Path, expected_head: AuditHead | None = None, anchor: AuditHead | None = None
         ) -> AuditReport:
    """Walk the chain; every problem is reported (the first one is the tampering point).
    ``expected_head``: the head the catalog recorded; ``anchor``: the head the control node saw on
    its last run. The log must still hold each of them, byte for byte."""
    problems: list[AuditProblem] = []
    heads = {src: h for src, h in (("catalog", expected_head), ("control node", anchor)) if h is not None}
    at_head: dict[str, str] = {}
    prev, seq = GENESIS, 0
    for i, raw in enumerate(_iter_lines(path), start=1):
        try:
            rec = json.loads(raw)
            if not isinstance(rec, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            problems.append(AuditProblem("audit-chain", f"line {i}: not a JSON record ({exc})"))
            prev, seq = line_hash(raw), seq + 1
            continue
        if rec.get("prev") != prev:
            problems.append(AuditProblem("audit-chain", f"line {i} (seq {rec.get('seq')}): prev hash does "
                                         f"not match line {i - 1} (a record was edited, deleted or "
                                         "reordered)"))
        if rec.get("seq") != seq + 1:
            problems.append(AuditProblem("audit-chain",
                                         f"line {i}: seq {rec.get('seq')}, expected {seq + 1}"))
        prev, seq = line_hash(raw), seq + 1
        for src, h in heads.items():
            if seq == h.seq:
                at_head[src] = prev
    for src, h in heads.items():
        rule = "audit-head" if src == "catalog" else "audit-anchor"
        if h.seq > seq:
            problems.append(AuditProblem(rule, f"log ends at seq {seq} but the {src} recorded seq {h.seq}: "
                                         "records were removed from the end (or the log was replaced)"))
        elif h.seq and at_head.get(src) != h.hash:
            problems.append(AuditProblem(rule, f"record seq {h.seq} differs from the head the {src} recorded "
                                         "(the log was rewritten or replaced)"))
    return AuditReport(str(path), not problems, seq, AuditHead(seq, prev), problems)


def parse_head(raw: Any) -> AuditHead | None:
    """``{"seq": N, "hash": H}`` or ``"N:H"`` (as the catalog keeps it) -> AuditHead; None when empty."""
    if not raw:
        return None
    try:
        if isinstance(raw, str):
            seq, h = raw.split(":", 1)
        else:
            seq, h = raw["seq"], raw["hash"]
        head = AuditHead(int(seq), str(h))
    except (ValueError, KeyError, TypeError) as exc:
        raise AuditError(f"{raw!r}: not an audit head (seq and sha256)", rule="audit-head") from exc
    if head.seq < 0 or len(head.hash) != 64:
        raise AuditError(f"{raw!r}: not an audit head (seq and sha256)", rule="audit-head")
    return head


def verify(path: Path, expected_head: AuditHead | None = None, anchor: AuditHead | None = None
           ) -> AuditReport:
    report = scan(path, expected_head, anchor)
    if not report.ok:
        raise AuditError(f"{path}: audit chain broken: {report.problems[0]}", path=str(path),
                         rule="audit-chain")
    return report


def tail_head(path: Path) -> AuditHead:
    """(seq, hash) of the last line, read from the end; does not validate the chain."""
    if not path.exists() or path.stat().st_size == 0:
        return AuditHead(0, GENESIS)
    with open(path, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        back = min(size, 64 * 1024)
        fh.seek(size - back)
        chunk = fh.read(back)
    lines = [ln for ln in chunk.split(b"\n") if ln]
    last = lines[-1]
    try:
        seq = int(json.loads(last)["seq"])
    except (ValueError, KeyError, TypeError) as exc:
        raise AuditError(f"{path}: last audit record is unreadable ({exc})", path=str(path),
                         rule="audit-chain") from exc
    return AuditHead(seq, line_hash(last))


def append(path: Path, action: str, *, model: str | None = None, from_version: str | None = None,
           to_version: str | None = None, result: str = "ok", details: dict[str, Any] | None = None,
           duration: float | None = None) -> AuditHead:
    """Append one record (caller holds the repository lock) and fsync it; returns the new head.
    ``duration``: the operation's wall time in seconds (``duration_s``; exported by airlock metrics)."""
    head = tail_head(path)
    rec = {
        "seq": head.seq + 1, "prev": head.hash,
        "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "actor": actor(), "pid": os.getpid(), "action": action, "model": model,
        "from": from_version, "to": to_version, "result": result, "details": details or {},
    }
    if duration is not None:
        rec["duration_s"] = round(duration, 3)
    line = json.dumps(rec, sort_keys=True, separators=(",", ":"), default=str).encode()
    new = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, AUDIT_MODE)
    try:
        if new:
            os.fchmod(fd, AUDIT_MODE)  # whatever the umask
        os.write(fd, line + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    if new:
        fsync_dir(path.parent)
    fault_point("repo.audit.after-append")
    return AuditHead(head.seq + 1, line_hash(line))


def record(cat: Catalog, log: Path, action: str, model: str | None, frm: str | None, to: str | None,
           result: str, details: dict[str, Any], *, duration: float | None = None) -> AuditHead:
    """Record one operation (the caller holds the repository lock): its history row in the catalog,
    its line in the log, then the log's new head in the catalog."""
    with cat.transaction():
        cat.record_history(actor(), action, model, frm, to, result, details)
    head = append(log, action, model=model, from_version=frm, to_version=to, result=result,
                  details=details, duration=duration)
    with cat.transaction():
        cat.set_meta("audit_head", f"{head.seq}:{head.hash}")
    return head


def records(path: Path, tail: int = 0) -> list[dict[str, Any]]:
    """Parsed records (the last ``tail`` ones when non-zero; unreadable lines are skipped)."""
    out: deque[dict[str, Any]] = deque(maxlen=tail or None)
    for raw in _iter_lines(path):
        try:
            rec = json.loads(raw)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return list(out)
