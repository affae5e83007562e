"""Append-only, hash-chained audit log: one JSON object per line, each carrying ``prev``, the sha256
of the previous line's bytes (``GENESIS`` for the first). Editing, deleting or reordering a record
breaks the chain; the catalog keeps the head (seq, hash) so a truncated tail is detected too."""

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
from typing import Any

from airlock.errors import AuditError
from airlock.faults import fault_point
from airlock.fsutil import fsync_dir

GENESIS = "0" * 64


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


@dataclass
class AuditReport:
    path: str
    ok: bool
    records: int
    head: AuditHead
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "ok": self.ok, "records": self.records,
                "head": {"seq": self.head.seq, "hash": self.head.hash}, "problems": self.problems}


def _iter_lines(path: Path) -> Iterator[bytes]:
    """Non-empty lines, streamed (the log grows for the appliance's lifetime)."""
    if not path.exists():
        return
    with open(path, "rb") as fh:
        for raw in fh:
            line = raw.rstrip(b"\n")
            if line:
                yield line


def scan(path: Path, expected_head: AuditHead | None = None) -> AuditReport:
    """Walk the chain; every problem is reported (the first one is the tampering point)."""
    problems: list[str] = []
    prev, seq = GENESIS, 0
    at_head: str | None = None
    for i, raw in enumerate(_iter_lines(path), start=1):
        try:
            rec = json.loads(raw)
            if not isinstance(rec, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            problems.append(f"line {i}: not a JSON record ({exc})")
            prev, seq = line_hash(raw), seq + 1
            continue
        if rec.get("prev") != prev:
            problems.append(f"line {i} (seq {rec.get('seq')}): prev hash does not match line {i - 1} "
                            "(a record was edited, deleted or reordered)")
        if rec.get("seq") != seq + 1:
            problems.append(f"line {i}: seq {rec.get('seq')}, expected {seq + 1}")
        prev, seq = line_hash(raw), seq + 1
        if expected_head is not None and seq == expected_head.seq:
            at_head = prev
    head = AuditHead(seq, prev)
    if expected_head is not None:
        if expected_head.seq > seq:
            problems.append(f"log ends at seq {seq} but the catalog recorded seq {expected_head.seq}: "
                            "records were removed from the end")
        elif expected_head.seq and at_head != expected_head.hash:
            problems.append(f"record seq {expected_head.seq} differs from the head the catalog recorded")
    return AuditReport(str(path), not problems, seq, head, problems)


def verify(path: Path, expected_head: AuditHead | None = None) -> AuditReport:
    report = scan(path, expected_head)
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
           to_version: str | None = None, result: str = "ok", details: dict[str, Any] | None = None
           ) -> AuditHead:
    """Append one record (caller holds the repository lock) and fsync it; returns the new head."""
    head = tail_head(path)
    rec = {
        "seq": head.seq + 1, "prev": head.hash,
        "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "actor": actor(), "pid": os.getpid(), "action": action, "model": model,
        "from": from_version, "to": to_version, "result": result, "details": details or {},
    }
    line = json.dumps(rec, sort_keys=True, separators=(",", ":"), default=str).encode()
    new = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, line + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    if new:
        fsync_dir(path.parent)
    fault_point("repo.audit.after-append")
    return AuditHead(head.seq + 1, line_hash(line))


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
