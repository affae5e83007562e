"""A real tritonserver: load, ready, infer, index, metrics, unload polling, down and slow servers."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from airlock.serving.client import TritonClient
from airlock.serving.errors import ServingError
from airlock.serving.golden import compare, parse_golden
from airlock.serving.reload import Reloader
from airlock.serving.triton_repo import generate
from tests.serving.conftest import add_model, ids


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"<dir>")
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("control", ["grpc", "http"])
def test_load_ready_infer_index_unload(triton, airlock_root: Path, goldens: dict, control: str) -> None:
    client: TritonClient = triton.client(grpc_control=control == "grpc")
    name = f"srv_basic_{control}"
    add_model(airlock_root, name)
    generate(airlock_root, triton.cfg.model_repository, models=[name])
    assert client.live() and client.metadata()["name"] == "triton"
    rows = {e.name: e for e in client.index()}
    assert rows[name].state is None, "explicit mode: present in the index but not loaded"
    assert not client.model_ready(name, 1)

    client.load(name)
    client.wait_ready(name, 1)
    assert client.model_ready(name) and client.model_ready(name, 1)
    assert client.loaded_versions(name) == {"1": "READY"}
    assert client.model_config(name)["backend"] == "python"

    result = client.infer(name, {"INPUT_IDS": ids()})
    assert result.model_version == "1"
    emb = result["EMBEDDING"]
    assert emb.shape == (2, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert compare(parse_golden(goldens["1.0.0"]), result.outputs).ok
    # pinned version answers the same; a version that is not loaded is refused clearly
    assert np.array_equal(client.infer(name, {"INPUT_IDS": ids()}, version=1)["EMBEDDING"], emb)
    with pytest.raises(ServingError, match="HTTP 4"):
        client.infer(name, {"INPUT_IDS": ids()}, version=7)
    # a bad request is an error for that request only; the model keeps serving
    with pytest.raises(ServingError, match="token id out of range"):
        client.infer(name, {"INPUT_IDS": np.array([[101, 999999]], dtype=np.int64)})
    assert client.model_ready(name, 1)

    # unload is asynchronous on Triton: the client polls the index until the version is gone
    client.unload(name)
    assert client.loaded_versions(name) == {}
    assert not client.model_ready(name, 1)
    with pytest.raises(ServingError, match="HTTP"):
        client.infer(name, {"INPUT_IDS": ids()})


def test_metrics_endpoint_is_enabled(triton, airlock_root: Path) -> None:
    client = triton.client()
    add_model(airlock_root, "srv_metrics")
    generate(airlock_root, triton.cfg.model_repository, models=["srv_metrics"])
    client.load("srv_metrics")
    client.infer("srv_metrics", {"INPUT_IDS": ids()})
    count = 0.0
    for _ in range(50):  # Triton refreshes its counters periodically (--metrics-interval-ms)
        with urllib.request.urlopen(triton.metrics_url, timeout=10) as resp:
            text = resp.read().decode()
        line = next(x for x in text.splitlines()
                    if x.startswith("nv_inference_request_success") and 'model="srv_metrics"' in x)
        count = float(line.rsplit(" ", 1)[1])
        if count >= 1:
            break
        time.sleep(0.2)
    assert count >= 1
    assert "nv_inference_request_duration_us" in text
    client.unload("srv_metrics")


def test_load_of_a_broken_model_is_a_clear_error(triton, airlock_root: Path, tmp_path: Path) -> None:
    client = triton.client()
    add_model(airlock_root, "srv_broken")
    generate(airlock_root, triton.cfg.model_repository, models=["srv_broken"])
    vfile = triton.cfg.model_repository / "srv_broken" / "1" / "version.json"
    vfile.write_text(vfile.read_text().replace('"path": "', f'"path": "{tmp_path}/missing'))
    with pytest.raises(ServingError, match="srv_broken"):
        client.load("srv_broken")
    assert client.loaded_versions("srv_broken") == {}


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP listener that accepts and never answers: a hung Triton."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(sock.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    stop.set()
    t.join()
    for c in conns:
        c.close()
    sock.close()


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # closed again: connection refused


def test_triton_down_is_a_clear_error_and_changes_nothing(tmp_path: Path, airlock_root: Path,
                                                           goldens: dict) -> None:
    model = add_model(airlock_root, "srv_down")
    triton_repo = tmp_path / "triton"
    generate(airlock_root, triton_repo, models=["srv_down"])
    before = _snapshot(triton_repo)
    client = TritonClient(_dead_url(), timeout=2)
    assert not client.live()
    with pytest.raises(ServingError, match="unreachable") as err:
        client.index()
    assert err.value.rule == "triton-down" and err.value.exit_code == 50
    with pytest.raises(ServingError, match="unreachable") as err:
        TritonClient(_dead_url(), grpc_url=_dead_url().removeprefix("http://")).unload("srv_down")
    assert err.value.rule == "triton-down"
    with pytest.raises(ServingError, match="not live; nothing changed"):
        Reloader(client, triton_repo).reload("srv_down", "1.1.0", model / "1.1.0", goldens["1.1.0"])
    assert _snapshot(triton_repo) == before


def test_triton_slow_is_a_timeout_error_and_changes_nothing(tmp_path: Path, airlock_root: Path,
                                                             silent_server: str, goldens: dict) -> None:
    model = add_model(airlock_root, "srv_slow")
    triton_repo = tmp_path / "triton"
    generate(airlock_root, triton_repo, models=["srv_slow"])
    before = _snapshot(triton_repo)
    client = TritonClient(silent_server, timeout=0.5)
    t0 = time.monotonic()
    with pytest.raises(ServingError, match=r"did not answer .* within 0\.5s") as err:
        client.index()
    assert err.value.rule == "triton-timeout"
    assert time.monotonic() - t0 < 10, "the timeout must bound the wait"
    with pytest.raises(ServingError, match="not live"):
        Reloader(client, triton_repo).reload("srv_slow", "1.1.0", model / "1.1.0", goldens["1.1.0"])
    assert _snapshot(triton_repo) == before
