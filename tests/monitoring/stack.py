"""The real monitoring stack on loopback for the end-to-end tests: node_exporter (textfile
collector), Prometheus and Alertmanager (configs rendered by roles/monitoring) and a webhook
receiver run by the test. Each child is stopped by its own PID."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.monitoring.helpers import free_port
from tests.support import require_tool


@dataclass
class Webhook:
    """Alertmanager's webhook receiver: every POSTed notification, with its arrival time."""

    received: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    port: int = 0
    _server: ThreadingHTTPServer | None = None

    def start(self) -> Webhook:
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                hook.received.append((time.time(), json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/alerts"

    def delivered(self, alertname: str, status: str = "firing") -> float | None:
        """Arrival time of the first notification carrying ``alertname`` with ``status``."""
        for when, doc in self.received:
            for a in doc.get("alerts", []):
                if a.get("labels", {}).get("alertname") == alertname and a.get("status") == status:
                    return when
        return None

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def wait_for(what: str, check: Callable[[], Any], timeout: float = 120.0, step: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except OSError as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


@dataclass
class Stack:
    base: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    node_port: int = 0
    prom_port: int = 0
    am_port: int = 0

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.base / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True))
        log.close()

    def __post_init__(self) -> None:
        self.node_port, self.prom_port, self.am_port = free_port(), free_port(), free_port()

    def start_node_exporter(self, textfile_dir: Path) -> None:
        self._spawn("node_exporter", [
            require_tool("prometheus-node-exporter", "apt-get install prometheus-node-exporter"),
            f"--web.listen-address=127.0.0.1:{self.node_port}", "--collector.disable-defaults",
            "--collector.textfile", f"--collector.textfile.directory={textfile_dir}",
            "--collector.filesystem", "--collector.loadavg"])

    def start_alertmanager(self, config: Path) -> None:
        self._spawn("alertmanager", [
            require_tool("prometheus-alertmanager", "apt-get install prometheus-alertmanager"),
            f"--config.file={config}", f"--storage.path={self.base / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{self.am_port}", "--cluster.listen-address="])

    def start_prometheus(self, config: Path) -> None:
        self._spawn("prometheus", [
            require_tool("prometheus", "apt-get install prometheus"),
            f"--config.file={config}", f"--storage.tsdb.path={self.base / 'prom-data'}",
            f"--web.listen-address=127.0.0.1:{self.prom_port}"])

    @property
    def prometheus(self) -> str:
        return f"http://127.0.0.1:{self.prom_port}"

    def query(self, promql: str) -> list[dict[str, Any]]:
        q = urllib.parse.urlencode({"query": promql})
        doc = get_json(f"{self.prometheus}/api/v1/query?{q}")
        assert doc["status"] == "success", doc
        return list(doc["data"]["result"])

    def firing(self, alertname: str) -> list[dict[str, Any]]:
        doc = get_json(f"{self.prometheus}/api/v1/alerts")
        return [a for a in doc["data"]["alerts"]
                if a["labels"].get("alertname") == alertname and a["state"] == "firing"]

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}"
                         for p in self.base.glob("*.log"))



