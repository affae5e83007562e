"""EDGE MOCK of the Vault/OpenBao transit HTTP API, for tests only.

No Vault or OpenBao server can be installed on these machines (neither Debian bookworm nor PyPI
ships one), so the Vault provider is tested through the real ``hvac`` client against this small
loopback HTTP server. It implements the subset of the documented API the provider uses, with
Vault's wire format and status codes: ``sys/seal-status``, ``transit/keys/<name>`` (create,
read, list), ``transit/keys/<name>/rotate``, ``transit/keys/<name>/config``
(``min_decryption_version``, enforced by decrypt and rewrap), ``transit/encrypt|decrypt|rewrap/<name>``; real
AES-256-GCM under versioned keys (ciphertext ``vault:v<N>:<base64>``), ``X-Vault-Token`` auth (403),
and a sealed state (503 ``Vault is sealed``). It is not a Vault: no policies, leases or storage.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


class TransitState:
    def __init__(self, token: str) -> None:
        self.token = token
        self.sealed = False
        self.keys: dict[str, list[bytes]] = {}
        self.min_decryption: dict[str, int] = {}
        self.requests: list[str] = []


class _Handler(BaseHTTPRequestHandler):
    state: TransitState

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, code: int, body: dict[str, Any] | None = None) -> None:
        data = json.dumps(body or {}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, code: int, message: str) -> None:
        self._send(code, {"errors": [message]})

    def _body(self) -> dict[str, Any]:
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n) or b"{}")

    def _route(self, method: str) -> None:
        st = self.state
        path = self.path.split("?")[0]
        st.requests.append(f"{method} {path}")
        if path == "/v1/sys/seal-status":
            self._send(200, {"sealed": st.sealed, "initialized": True, "type": "shamir"})
            return
        if st.sealed:
            self._error(503, "Vault is sealed")
            return
        if self.headers.get("X-Vault-Token") != st.token:
            self._error(403, "permission denied")
            return
        parts = path.split("/")[2:]  # after /v1/
        if parts[:1] != ["transit"] or len(parts) < 2:
            self._error(404, f"no handler for route {path!r}")
            return
        op, name = parts[1], parts[2] if len(parts) > 2 else ""
        if (op == "keys" and method == "LIST") or (op == "keys" and method == "GET" and not name):
            if not st.keys:
                self._error(404, "")
                return
            self._send(200, {"data": {"keys": sorted(st.keys)}})
            return
        if op == "keys" and len(parts) == 4 and parts[3] == "rotate" and method == "POST":
            if name not in st.keys:
                self._error(404, "key not found")
                return
            st.keys[name].append(AESGCM.generate_key(bit_length=256))
            self._send(204)
            return
        if op == "keys" and len(parts) == 4 and parts[3] == "config" and method == "POST":
            if name not in st.keys:
                self._error(404, "key not found")
                return
            floor = int(self._body().get("min_decryption_version", 1))
            if not 1 <= floor <= len(st.keys[name]):
                self._error(400, "min decryption version out of range")
                return
            st.min_decryption[name] = floor
            self._send(204)
            return
        if op == "keys" and method == "POST":
            st.keys.setdefault(name, [AESGCM.generate_key(bit_length=256)])
            self._send(204)
            return
        if op == "keys" and method == "GET":
            if name not in st.keys:
                self._error(404, "")
                return
            self._send(
                200, {"data": {"name": name, "type": "aes256-gcm96", "latest_version": len(st.keys[name]),
                               "min_decryption_version": st.min_decryption.get(name, 1)}}
            )
            return
        if method != "POST" or op not in ("encrypt", "decrypt", "rewrap"):
            self._error(405, "unsupported operation")
            return
        if name not in st.keys:
            self._error(400, "encryption key not found")
            return
        body = self._body()
        versions = st.keys[name]
        if op == "encrypt":
            plaintext = base64.b64decode(body["plaintext"])
            self._send(
                200, {"data": {"ciphertext": self._seal(versions, plaintext), "key_version": len(versions)}}
            )
            return
        try:
            version = int(str(body["ciphertext"]).split(":")[1][1:])
            if version < st.min_decryption.get(name, 1):
                self._error(400, "ciphertext or hmac version is disallowed by policy (too old)")
                return
            plaintext = self._open(versions, str(body["ciphertext"]))
        except (ValueError, InvalidTag, IndexError):
            self._error(400, "cipher: message authentication failed")
            return
        if op == "decrypt":
            self._send(200, {"data": {"plaintext": base64.b64encode(plaintext).decode()}})
        else:
            self._send(
                200, {"data": {"ciphertext": self._seal(versions, plaintext), "key_version": len(versions)}}
            )

    @staticmethod
    def _seal(versions: list[bytes], plaintext: bytes) -> str:
        nonce = os.urandom(12)
        ct = AESGCM(versions[-1]).encrypt(nonce, plaintext, None)
        return f"vault:v{len(versions)}:" + base64.b64encode(nonce + ct).decode()

    @staticmethod
    def _open(versions: list[bytes], ciphertext: str) -> bytes:
        prefix, ver, b64 = ciphertext.split(":", 2)
        if prefix != "vault" or not ver.startswith("v"):
            raise ValueError("bad ciphertext")
        version = int(ver[1:])
        if not 1 <= version <= len(versions):
            raise ValueError("bad version")
        raw = base64.b64decode(b64)
        return AESGCM(versions[version - 1]).decrypt(raw[:12], raw[12:], None)

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PUT(self) -> None:
        self._route("POST")

    def do_LIST(self) -> None:
        self._route("LIST")


class TransitEdgeMock:
    """Start with ``with TransitEdgeMock(token) as vault: vault.url ...``; ``vault.state.sealed = True``."""

    def __init__(self, token: str) -> None:
        self.state = TransitState(token)
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> TransitEdgeMock:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
