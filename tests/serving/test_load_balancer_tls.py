"""HTTP over TLS for clients (Triton 2.51's HTTP endpoint has none): roles/load_balancer terminates
TLS in a real HAProxy (load_balancer_tls_cert, checked by haproxy -c) in front of a plain-HTTP
backend; a client trusting the site CA gets the backend's answer over HTTPS, a client that does not
trust it and a plaintext client get nothing."""

from __future__ import annotations

import http.client
import http.server
import ssl
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import ClassVar

import pytest

from airlock.serving.server import free_port
from tests.serving.play import haproxy_by_role as _haproxy_by_role
from tests.serving.play import pki as _pki
from tests.support import require_tool


class _Ready(http.server.BaseHTTPRequestHandler):
    """A stand-in for Triton's HTTP endpoint: 200 on /v2/health/ready, records what it was asked."""

    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.seen.append(f"{self.request_version} {self.path}")
        body = b'{"ready": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_haproxy_terminates_tls_for_triton_http(tmp_path: Path) -> None:
    require_tool("haproxy", "apt-get install haproxy (scripts/apt-packages.txt)")
    cert, key, ca = _pki(tmp_path)
    pem = tmp_path / "lb.pem"  # HAProxy's crt: the chain and its key in one file
    pem.write_bytes(cert.read_bytes() + key.read_bytes())
    pem.chmod(0o600)
    backend = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _Ready)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    try:
        servers = [{"name": "t1", "address": "127.0.0.1", "port": backend.server_address[1]}]
        with _haproxy_by_role(tmp_path, servers, load_balancer_tls_cert=str(pem)) as (_lb, url):
            assert url.startswith("https://")
            trusted = ssl.create_default_context(cafile=str(ca))
            with urllib.request.urlopen(f"{url}/v2/health/ready", context=trusted, timeout=30) as resp:
                assert resp.status == 200 and resp.read() == b'{"ready": true}'
                assert resp.headers["Strict-Transport-Security"] == "max-age=31536000"
            assert "HTTP/1.1 /v2/health/ready" in _Ready.seen  # HAProxy -> backend: plain HTTP
            with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
                urllib.request.urlopen(f"{url}/v2/health/ready", context=ssl.create_default_context(),
                                       timeout=30)
            plain = url.replace("https://", "http://")
            with pytest.raises((urllib.error.URLError, http.client.HTTPException, ConnectionError)):
                urllib.request.urlopen(f"{plain}/v2/health/ready", timeout=30)
    finally:
        backend.shutdown()
