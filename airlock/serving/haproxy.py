"""HAProxy in front of the appliances' Triton endpoints, driven through its runtime API (the admin
socket of ``roles/load_balancer``): drain a server, wait until its connections are gone, swap the
model, gate, re-enable, and shift traffic gradually by weight.

Runtime API commands used (HAProxy 2.6, ``stats socket ... level admin``)::

    show servers state <backend>           # admin state, weight
    show stat -1 4 -1 typed                # per server: scur (current sessions), status
    set server <backend>/<server> state ready|drain|maint
    set server <backend>/<server> weight <0-256>

``drain_swap`` is also the path for a model that does not fit twice in GPU memory: drain, then the
swap unloads the old version and loads the new one while no client reaches the host.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airlock.serving.errors import ServingError

_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


@dataclass(frozen=True)
class ServerState:
    backend: str
    server: str
    admin: str  # ready | drain | maint
    weight: int
    sessions: int
    status: str  # UP, DOWN, DRAIN, MAINT, ... (health as HAProxy sees it)


class HAProxy:
    """The runtime API of one HAProxy over its admin UNIX socket."""

    def __init__(self, socket_path: Path, *, timeout: float = 5.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def command(self, line: str) -> str:
        if "\n" in line or ";" in line:
            raise ServingError(f"haproxy: refusing a multi-command line {line!r}", rule="haproxy")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(self.timeout)
                s.connect(str(self.socket_path))
                s.sendall(line.encode() + b"\n")
                chunks = []
                while chunk := s.recv(65536):
                    chunks.append(chunk)
        except OSError as exc:
            raise ServingError(f"haproxy admin socket {self.socket_path}: {exc.strerror or exc}; is haproxy "
                               "running with 'stats socket ... level admin'?", path=str(self.socket_path),
                               rule="haproxy") from exc
        return b"".join(chunks).decode(errors="replace")

    def _set(self, backend: str, server: str, what: str) -> None:
        for name in (backend, server):
            if not _NAME.match(name):
                raise ServingError(f"haproxy: not a backend/server name: {name!r}", rule="haproxy")
        answer = self.command(f"set server {backend}/{server} {what}").strip()
        if answer:  # HAProxy answers nothing on success
            raise ServingError(f"haproxy: set server {backend}/{server} {what}: {answer}", rule="haproxy")

    def states(self, backend: str) -> dict[str, ServerState]:
        admin: dict[str, tuple[str, int]] = {}
        for line in self.command(f"show servers state {backend}").splitlines():
            f = line.split()
            # be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight ...
            if len(f) > 8 and f[1] == backend and f[0].isdigit():
                adm = int(f[6])
                admin[f[3]] = ("maint" if adm & 0x01 or adm & 0x02 or adm & 0x20 else
                               "drain" if adm & 0x08 or adm & 0x10 else "ready", int(f[7]))
        if not admin:
            raise ServingError(f"haproxy: no backend {backend!r} (or no servers in it)", rule="haproxy")
        sessions: dict[str, tuple[int, str]] = {}
        for row in self._stat_rows():
            if row.get("pxname") == backend and row.get("svname") in admin:
                sessions[row["svname"]] = (int(row.get("scur") or 0), row.get("status", ""))
        return {name: ServerState(backend, name, adm, weight, *sessions.get(name, (0, "")))
                for name, (adm, weight) in admin.items()}

    def _stat_rows(self) -> list[dict[str, str]]:
        text = self.command("show stat")
        lines = text.splitlines()
        if not lines or not lines[0].startswith("# "):
            raise ServingError(f"haproxy: unexpected 'show stat' answer: {text[:200]!r}", rule="haproxy")
        head = lines[0][2:].split(",")
        return [dict(zip(head, line.split(","), strict=False)) for line in lines[1:] if line]

    def state(self, backend: str, server: str) -> ServerState:
        states = self.states(backend)
        if server not in states:
            raise ServingError(f"haproxy: backend {backend} has no server {server!r} "
                               f"(has: {', '.join(sorted(states))})", rule="haproxy")
        return states[server]

    def drain(self, backend: str, server: str, *, wait_s: float = 60.0, poll_s: float = 0.1) -> ServerState:
        """No new connections to ``server``; wait until its current sessions are gone."""
        self.state(backend, server)
        self._set(backend, server, "state drain")
        deadline = time.monotonic() + wait_s
        while (st := self.state(backend, server)).sessions:
            if time.monotonic() > deadline:
                raise ServingError(f"haproxy: {backend}/{server} still has {st.sessions} session(s) "
                                   f"{wait_s:g}s after drain", rule="haproxy-drain")
            time.sleep(poll_s)
        return st

    def enable(self, backend: str, server: str) -> ServerState:
        self._set(backend, server, "state ready")
        return self.state(backend, server)

    def weight(self, backend: str, server: str, weight: int) -> ServerState:
        if not 0 <= weight <= 256:
            raise ServingError(f"haproxy: weight {weight} out of 0..256", rule="haproxy")
        self._set(backend, server, f"weight {weight}")
        return self.state(backend, server)

    def errors(self, backend: str, server: str) -> int:
        """Failed responses and connection/response errors HAProxy counted for ``server`` so far."""
        for row in self._stat_rows():
            if row.get("pxname") == backend and row.get("svname") == server:
                return sum(int(row.get(k) or 0) for k in ("econ", "eresp", "hrsp_5xx"))
        raise ServingError(f"haproxy: backend {backend} has no server {server!r}", rule="haproxy")


@dataclass
class ShiftResult:
    server: str
    ok: bool
    detail: str
    steps: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return {"server": self.server, "ok": self.ok, "detail": self.detail, "steps": self.steps}


def shift(lb: HAProxy, backend: str, server: str, weights: tuple[int, ...] = (), *, full_weight: int = 100,
          settle_s: float = 1.0, drain_wait_s: float = 60.0) -> ShiftResult:
    """Bring ``server`` back gradually: each weight of ``weights`` then ``full_weight``, ``settle_s``
    apart; after each step HAProxy's health check must see the server UP and its error counters
    (connection, response, 5xx) must not have grown. A step that fails drains the server again (it
    takes no new request) and the result says why; the caller rolls back."""
    steps: list[dict[str, Any]] = []
    for w in (*weights, full_weight):
        before = lb.errors(backend, server)
        lb.weight(backend, server, w)
        lb.enable(backend, server)
        time.sleep(settle_s)
        errs = lb.errors(backend, server) - before
        status = lb.state(backend, server).status
        steps.append({"weight": w, "errors": errs, "status": status})
        if errs or not status.startswith("UP"):
            lb.drain(backend, server, wait_s=drain_wait_s)
            why = f"{errs} error(s)" if errs else f"health check {status or 'unknown'}"
            return ShiftResult(server, False, f"{why} at weight {w}: drained again", steps)
    return ShiftResult(server, True, "shifted", steps)


@dataclass
class SwapResult:
    server: str
    ok: bool
    detail: str
    drained_s: float
    swap_s: float
    steps: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return {"server": self.server, "ok": self.ok, "detail": self.detail,
                "drained_s": round(self.drained_s, 3), "swap_s": round(self.swap_s, 3), "steps": self.steps}


def drain_swap(lb: HAProxy, backend: str, server: str, swap: Callable[[], bool],
               rollback: Callable[[], object], *, weights: tuple[int, ...] = (), full_weight: int = 100,
               settle_s: float = 1.0, drain_wait_s: float = 60.0) -> SwapResult:
    """Drain ``server``, ``swap()`` (reload + gate; True = promoted), then bring it back: straight to
    ready, or through ``weights`` (e.g. 10, 50) with HAProxy's error counters checked between steps.
    A failed gate or a step that raised errors: ``rollback()`` runs while the server is still drained
    (or drained again), then the server is re-enabled on the old version at full weight."""
    t0 = time.monotonic()
    lb.drain(backend, server, wait_s=drain_wait_s)
    drained = time.monotonic() - t0
    t1 = time.monotonic()
    ok = swap()
    swap_s = time.monotonic() - t1
    if not ok:
        rollback()
        lb.weight(backend, server, full_weight)
        lb.enable(backend, server)
        return SwapResult(server, False, "gate failed: rolled back while drained, re-enabled on the old "
                          "version", drained, swap_s, [])
    moved = shift(lb, backend, server, weights, full_weight=full_weight, settle_s=settle_s,
                  drain_wait_s=drain_wait_s)
    if not moved.ok:  # drained again by shift
        rollback()
        lb.weight(backend, server, full_weight)
        lb.enable(backend, server)
        return SwapResult(server, False, f"{moved.detail.removesuffix(': drained again')}: rolled back, "
                          "re-enabled on the old version", drained, swap_s, moved.steps)
    return SwapResult(server, True, "swapped", drained, swap_s, moved.steps)
