"""Model control needs a credential (Triton's restricted APIs), inference does not: a real
tritonserver started with the key from a 0600 file; Airlock's client and CLI use it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from airlock.serving.auth import make_control_key, read_control_key
from airlock.serving.client import TritonClient
from airlock.serving.errors import ServingError
from airlock.serving.server import ServerConfig, TritonServer
from airlock.serving.triton_repo import generate
from tests.serving.conftest import _require_triton, add_model, ids
from tests.serving.play import pki as _pki


def _airlock(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cli = Path(sys.executable).with_name("airlock")
    return subprocess.run([str(cli), *args], capture_output=True, text=True, check=False,
                          env={**os.environ, "NO_COLOR": "1", **(env or {})}, timeout=300)


def test_the_key_file_is_created_private_and_checked(tmp_path: Path) -> None:
    key = tmp_path / "control.key"
    made = _airlock("serve", "control-key", str(key), "--json")
    assert made.returncode == 0 and '"changed": true' in made.stdout
    assert oct(key.stat().st_mode & 0o777) == "0o600" and len(read_control_key(key)) >= 32
    before = key.read_bytes()
    assert not make_control_key(key) and key.read_bytes() == before, "an existing key is kept"
    key.chmod(0o644)
    with pytest.raises(ServingError, match="readable by group/others"):
        read_control_key(key)
    loose = _airlock("serve", "unload", "m", "--url", "http://127.0.0.1:9", "--control-key-file", str(key))
    assert loose.returncode == 50 and "chmod 0600" in loose.stderr and "Traceback" not in loose.stderr
    key.chmod(0o600)
    key.write_text("short\n")
    with pytest.raises(ServingError, match="not a control key"):
        read_control_key(key)


def test_unload_without_the_credential_is_refused_inference_still_works(tmp_path: Path,
                                                                        airlock_root: Path) -> None:
    _require_triton()
    key = tmp_path / "control.key"
    make_control_key(key)
    add_model(airlock_root, "auth_m", current="1.0.0")
    (tmp_path / "models").mkdir()
    generate(airlock_root, tmp_path / "models", models=["auth_m"])
    cfg = ServerConfig(tmp_path / "models", tmp_path / "work", control_key_file=key)
    with TritonServer(cfg) as server:
        assert read_control_key(key) not in (tmp_path / "work" / "tritonserver.log").read_text()
        owner = server.client()  # Airlock's client: the key from the file, GRPC control
        owner.load("auth_m")
        owner.wait_ready("auth_m", 1)
        assert owner.loaded_versions("auth_m") == {"1": "READY"}

        for grpc in (server.grpc_url, None):  # a client without the key, over GRPC and over HTTP
            stranger = TritonClient(server.url, grpc_url=grpc, timeout=10)
            with pytest.raises(ServingError) as refused:
                stranger.unload("auth_m", timeout=10)
            assert refused.value.rule == "control-key" and "--control-key-file" in str(refused.value)
            with pytest.raises(ServingError):
                stranger.load("auth_m")
            with pytest.raises(ServingError):
                stranger.index()
            assert stranger.infer("auth_m", {"INPUT_IDS": ids()}).model_version == "1"  # inference is open
            assert stranger.live() and stranger.model_ready("auth_m", 1)  # health is open (load balancers)
        wrong = TritonClient(server.url, grpc_url=server.grpc_url, control_key="x" * 43)
        with pytest.raises(ServingError):
            wrong.unload("auth_m", timeout=10)
        assert owner.loaded_versions("auth_m") == {"1": "READY"}, "nothing was unloaded"

        url = ["--url", server.url]
        cli_refused = _airlock("serve", "unload", "auth_m", *url, "--grpc-url", server.grpc_url)
        assert cli_refused.returncode == 50 and "[control-key]" in cli_refused.stderr
        assert "Traceback" not in cli_refused.stderr
        assert owner.loaded_versions("auth_m") == {"1": "READY"}
        cli_ok = _airlock("serve", "unload", "auth_m", *url, "--grpc-url", server.grpc_url,
                          env={"AIRLOCK_TRITON_CONTROL_KEY_FILE": str(key)})
        assert cli_ok.returncode == 0, cli_ok.stderr
        assert owner.loaded_versions("auth_m") == {}



def test_grpc_control_over_tls_with_the_credential(tmp_path: Path, airlock_root: Path) -> None:
    """Triton's GRPC endpoint with a site CA's certificate: Airlock's client (CA + key) loads and
    unloads over TLS; a plaintext client and a client trusting another CA get nothing."""
    _require_triton()
    cert, key_pem, ca = _pki(tmp_path)
    control = tmp_path / "control.key"
    make_control_key(control)
    add_model(airlock_root, "tls_m", current="1.0.0")
    (tmp_path / "models").mkdir()
    generate(airlock_root, tmp_path / "models", models=["tls_m"])
    cfg = ServerConfig(tmp_path / "models", tmp_path / "work", control_key_file=control,
                       grpc_tls=(cert, key_pem, ca))
    with TritonServer(cfg) as server:
        owner = server.client()
        assert owner.grpc_ca == str(ca)
        owner.load("tls_m")
        owner.wait_ready("tls_m", 1)
        plain = TritonClient(server.url, grpc_url=server.grpc_url, control_key=read_control_key(control))
        with pytest.raises(ServingError):
            plain.unload("tls_m", timeout=10)  # no TLS handshake, no control
        other_dir = tmp_path / "other"
        other_dir.mkdir()
        _, _, other_ca = _pki(other_dir)
        stranger = TritonClient(server.url, grpc_url=server.grpc_url,
                                control_key=read_control_key(control), grpc_ca=str(other_ca))
        with pytest.raises(ServingError):
            stranger.unload("tls_m", timeout=10)  # the server's certificate does not verify
        assert owner.loaded_versions("tls_m") == {"1": "READY"}
        cli = _airlock("serve", "unload", "tls_m", "--url", server.url, "--grpc-url", server.grpc_url,
                       "--grpc-ca", str(ca), "--control-key-file", str(control))
        assert cli.returncode == 0, cli.stderr
        assert owner.loaded_versions("tls_m") == {}
