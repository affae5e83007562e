"""A small Triton V2 (KServe) HTTP client on the standard library only.

Stdlib only so the engine, the CLI and Ansible modules (through their own ``urls``) speak the same
protocol without tritonclient. Every network failure becomes a ``ServingError`` naming the URL:
down (connection refused) and slow (timeout) are told apart, and nothing is retried silently.

Model control over GRPC (``grpc_url``): Triton 2.51 runs an HTTP ``repository/.../load`` on one of
its HTTP worker threads for the whole load, and an HTTP inference request that lands on that
thread waits until the load finishes (measured: one request stalls ~1.4 s per MiniLM load). Given a
``grpc_url`` and tritonclient, load/unload go over GRPC, whose control handlers are separate from
inference, and HTTP clients see no stall; without it, the stdlib HTTP path is used.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from airlock.serving.auth import GRPC_PREFIX, HEADER
from airlock.serving.errors import ServingError

_NP_TO_TRITON: dict[np.dtype[Any], str] = {
    np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64", np.dtype(np.float16): "FP16",
    np.dtype(np.int64): "INT64", np.dtype(np.int32): "INT32", np.dtype(np.int16): "INT16",
    np.dtype(np.int8): "INT8", np.dtype(np.uint8): "UINT8", np.dtype(np.bool_): "BOOL",
}
_TRITON_TO_NP: dict[str, np.dtype[Any]] = {v: k for k, v in _NP_TO_TRITON.items()}
_RESTRICTED = ("Triton at {where} refused {what} {model}: model control needs the credential ({reason}); "
               "give --control-key-file (or AIRLOCK_TRITON_CONTROL_KEY_FILE)")


@dataclass(frozen=True)
class IndexEntry:
    """One row of ``POST /v2/repository/index``."""

    name: str
    version: str | None
    state: str | None
    reason: str | None


@dataclass(frozen=True)
class InferResult:
    """Outputs by name, and the model version Triton says answered."""

    outputs: dict[str, np.ndarray]
    model_version: str | None

    def __getitem__(self, name: str) -> np.ndarray:
        return self.outputs[name]


class TritonClient:
    """HTTP/REST client for one Triton server (e.g. ``http://127.0.0.1:8000``)."""

    def __init__(self, url: str, *, timeout: float = 30.0, load_timeout: float = 300.0,
                 grpc_url: str | None = None, control_key: str | None = None,
                 grpc_ca: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.load_timeout = load_timeout
        self.grpc_url = grpc_url
        self.grpc_ca = grpc_ca  # GRPC over TLS, server certificate checked against this CA (PEM file)
        self._grpc: Any = None
        # Triton's restricted APIs (airlock.serving.auth): sent with control-plane requests only
        self._control = {HEADER: control_key} if control_key else {}
        # over GRPC Triton expects the restricted key as metadata "triton-grpc-protocol-<key>"
        self._grpc_control = {GRPC_PREFIX + HEADER: control_key} if control_key else {}

    @property
    def control_key(self) -> str | None:
        return self._control.get(HEADER)

    def _grpc_client(self) -> Any:
        """tritonclient's GRPC client for model control, or None (no grpc_url / not installed)."""
        if self.grpc_url is None:
            return None
        if self._grpc is None:
            try:
                import tritonclient.grpc  # noqa: F401  (optional: the stdlib HTTP path otherwise)
            except ImportError:
                self.grpc_url = None
                return None
            self._grpc = grpc_client(self.grpc_url, self.grpc_ca)
        return self._grpc

    def _grpc_call(self, what: str, model: str, call: Any) -> None:
        from tritonclient.utils import InferenceServerException

        try:
            call()
        except InferenceServerException as exc:
            status = str(exc.status() or "")
            where = f"grpc://{self.grpc_url}"
            if "restricted" in (exc.message() or ""):
                message = _RESTRICTED.format(what=what, model=model, where=where, reason=exc.message())
                raise ServingError(message, path=where, rule="control-key") from exc
            if "UNAVAILABLE" in status:
                raise ServingError(f"Triton at {where} unreachable ({exc.message()}); is tritonserver "
                                   "running?", path=where, rule="triton-down") from exc
            if "DEADLINE_EXCEEDED" in status:
                raise ServingError(f"Triton at {where} did not finish {what} {model} in time (server slow "
                                   "or hung)", path=where, rule="triton-timeout") from exc
            raise ServingError(f"Triton {what} {model} via {where} failed: {exc.message()}", path=model,
                               rule="triton-request") from exc

    # -- transport ---------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: Any = None, *, timeout: float | None = None,
                 ok_statuses: tuple[int, ...] = (200,)) -> tuple[int, Any]:
        url = self.url + path
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data else {}
        if path.startswith("/v2/repository"):
            headers.update(self._control)
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        wait = self.timeout if timeout is None else timeout
        try:
            with urllib.request.urlopen(req, timeout=wait) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
            if "restricted" in _error_text(raw):
                raise ServingError(_RESTRICTED.format(what=f"{method} {path}", model="", where=self.url,
                                                      reason=_error_text(raw)), path=url,
                                   rule="control-key") from None
            if status not in ok_statuses:
                raise ServingError(f"Triton {method} {url} -> HTTP {status}: {_error_text(raw)}",
                                   path=url, rule="triton-request") from None
        except TimeoutError as exc:
            raise ServingError(f"Triton at {self.url} did not answer {method} {path} within {wait:g}s "
                               "(server slow or hung)", path=url, rule="triton-timeout") from exc
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError | socket.timeout):
                raise ServingError(f"Triton at {self.url} did not answer {method} {path} within {wait:g}s "
                                   "(server slow or hung)", path=url, rule="triton-timeout") from exc
            raise ServingError(f"Triton at {self.url} unreachable ({exc.reason}); is tritonserver running?",
                               path=url, rule="triton-down") from exc
        except (ConnectionError, OSError) as exc:
            raise ServingError(f"Triton at {self.url} unreachable ({exc}); is tritonserver running?",
                               path=url, rule="triton-down") from exc
        if not raw:
            return status, None
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def _status_ok(self, path: str) -> bool:
        status, _ = self._request("GET", path, ok_statuses=(200, 400, 404, 503))
        return status == 200

    # -- health --------------------------------------------------------------------------------
    def live(self) -> bool:
        """True when the server answers live; False when it is down (never raises for 'down')."""
        try:
            return self._status_ok("/v2/health/live")
        except ServingError:
            return False

    def ready(self) -> bool:
        return self._status_ok("/v2/health/ready")

    def metadata(self) -> dict[str, Any]:
        return dict(self._request("GET", "/v2")[1])

    # -- repository API ------------------------------------------------------------------------
    def index(self, *, ready_only: bool = False) -> list[IndexEntry]:
        _, rows = self._request("POST", "/v2/repository/index", {"ready": ready_only})
        return [IndexEntry(r["name"], r.get("version"), r.get("state"), r.get("reason")) for r in rows or []]

    def load(self, model: str, *, config: dict[str, Any] | None = None) -> None:
        """Load (or reload) a model; Triton answers when the load finished or failed."""
        grpc = self._grpc_client()
        if grpc is not None:
            cfg = json.dumps(config) if config else None
            headers = self._grpc_control
            self._grpc_call("load", model, lambda: grpc.load_model(model, config=cfg, headers=headers,
                                                                   client_timeout=self.load_timeout))
            return
        body = {"parameters": {"config": json.dumps(config)}} if config else None
        self._request("POST", f"/v2/repository/models/{model}/load", body, timeout=self.load_timeout)

    def unload(self, model: str, *, wait: bool = True, poll_s: float = 0.2, timeout: float = 60.0) -> None:
        """Unload a model. Triton unloads asynchronously: poll the index until no version is loaded."""
        grpc = self._grpc_client()
        if grpc is not None:
            self._grpc_call("unload", model, lambda: grpc.unload_model(model, headers=self._grpc_control,
                                                                       client_timeout=self.timeout))
        else:
            self._request("POST", f"/v2/repository/models/{model}/unload",
                          {"parameters": {"unload_dependents": False}})
        if wait:
            self.wait_unloaded(model, poll_s=poll_s, timeout=timeout)

    def loaded_versions(self, model: str) -> dict[str, str]:
        """version -> state for every version of ``model`` the index lists as READY or in transition."""
        return {e.version or "": e.state or "" for e in self.index()
                if e.name == model and e.state not in (None, "UNAVAILABLE")}

    def wait_unloaded(self, model: str, *, versions: list[str] | None = None, poll_s: float = 0.2,
                      timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            states = self.loaded_versions(model)
            busy = {v: s for v, s in states.items() if versions is None or v in versions}
            if not busy:
                return
            if time.monotonic() > deadline:
                raise ServingError(f"{model}: versions {busy} still loaded {timeout:g}s after unload",
                                   path=model, rule="triton-unload")
            time.sleep(poll_s)

    def model_ready(self, model: str, version: str | int | None = None) -> bool:
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version is not None else "") + "/ready"
        return self._status_ok(path)

    def wait_ready(self, model: str, version: str | int | None = None, *, poll_s: float = 0.2,
                   timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.model_ready(model, version):
            if time.monotonic() > deadline:
                raise ServingError(f"{model} version {version}: not READY after {timeout:g}s",
                                   path=model, rule="triton-ready")
            time.sleep(poll_s)

    def model_config(self, model: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/v2/models/{model}/config")[1])

    # -- inference -------------------------------------------------------------------------------
    def infer(self, model: str, inputs: dict[str, np.ndarray], *, version: str | int | None = None,
              outputs: list[str] | None = None, timeout: float | None = None) -> InferResult:
        """JSON inference (exact: Triton prints floats round-trippably); ``version`` pins a version."""
        body: dict[str, Any] = {"inputs": []}
        for name, value in inputs.items():
            arr = np.asarray(value)
            dtype = _NP_TO_TRITON.get(arr.dtype)
            if dtype is None:
                raise ServingError(f"{model}: input {name} has unsupported dtype {arr.dtype}", path=model)
            body["inputs"].append({"name": name, "shape": list(arr.shape), "datatype": dtype,
                                   "data": arr.reshape(-1).tolist()})
        if outputs:
            body["outputs"] = [{"name": n} for n in outputs]
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version is not None else "") + "/infer"
        _, resp = self._request("POST", path, body, timeout=timeout)
        result: dict[str, np.ndarray] = {}
        for out in resp.get("outputs", []):
            np_dtype = _TRITON_TO_NP.get(out["datatype"])
            if np_dtype is None:
                raise ServingError(f"{model}: output {out['name']} has unsupported type {out['datatype']}")
            result[out["name"]] = np.asarray(out["data"], dtype=np_dtype).reshape(out["shape"])
        return InferResult(result, resp.get("model_version"))


@dataclass
class StreamResult:
    """One streamed generation: token ids (or text), the model versions that answered, and timings
    (seconds)."""

    tokens: list[int]
    versions: set[str]
    ttft: float  # request sent -> first token (first non-empty response)
    itl: list[float]  # gaps between non-empty responses
    error: str | None = None
    text: str = ""  # text dialects: the text_output pieces, joined


def grpc_client(grpc_url: str, ca: str | None = None) -> Any:
    """tritonclient's GRPC client; with ``ca`` (PEM file) over TLS, the server's certificate checked."""
    import tritonclient.grpc as grpcclient

    if ca is None:
        return grpcclient.InferenceServerClient(grpc_url)
    return grpcclient.InferenceServerClient(grpc_url, ssl=True, root_certificates=ca)


def infer_input(name: str, value: Any, dtype: str, shape: list[int]) -> Any:
    """A tritonclient GRPC input ``name`` of Triton type ``dtype`` holding ``value`` shaped ``shape``."""
    import tritonclient.grpc as grpcclient

    t = grpcclient.InferInput(name, shape, dtype)
    t.set_data_from_numpy(np.asarray(value, dtype=object if dtype == "BYTES" else _TRITON_TO_NP[dtype])
                          .reshape(shape))
    return t


def token_request(input_ids: list[int], max_tokens: int) -> list[Any]:
    """Airlock's python generation model: ``INPUT_IDS`` INT64 [seq], ``MAX_TOKENS`` INT32 [1]."""
    return [infer_input("INPUT_IDS", input_ids, "INT64", [len(input_ids)]),
            infer_input("MAX_TOKENS", [max_tokens], "INT32", [1])]


def vllm_request(prompt: str, max_tokens: int) -> list[Any]:
    """Triton's vLLM backend (``src/model.py``, no Triton batching): ``text_input`` BYTES [1], ``stream``
    BOOL [1], ``sampling_parameters`` BYTES [1] (JSON; greedy = temperature 0), ``exclude_input_in_output``
    BOOL [1] (must be true when streaming)."""
    params = json.dumps({"temperature": 0, "max_tokens": max_tokens})
    return [infer_input("text_input", [prompt.encode()], "BYTES", [1]),
            infer_input("stream", [True], "BOOL", [1]),
            infer_input("sampling_parameters", [params.encode()], "BYTES", [1]),
            infer_input("exclude_input_in_output", [True], "BOOL", [1])]


def trtllm_request(prompt: str, max_tokens: int) -> list[Any]:
    """TensorRT-LLM's ``inflight_batcher_llm/ensemble`` (max_batch_size > 0: a batch dimension of 1):
    ``text_input`` BYTES [1, 1], ``max_tokens`` INT32 [1, 1], ``stream`` BOOL [1, 1], greedy by
    ``top_k`` INT32 1 and ``temperature`` FP32 1, ``exclude_input_in_output`` BOOL [1, 1]."""
    return [infer_input("text_input", [prompt.encode()], "BYTES", [1, 1]),
            infer_input("max_tokens", [max_tokens], "INT32", [1, 1]),
            infer_input("stream", [True], "BOOL", [1, 1]),
            infer_input("top_k", [1], "INT32", [1, 1]), infer_input("temperature", [1.0], "FP32", [1, 1]),
            infer_input("exclude_input_in_output", [True], "BOOL", [1, 1])]


TEXT_DIALECTS = {"vllm": vllm_request, "tensorrtllm": trtllm_request}


def stream_generate(grpc_url: str, model: str, input_ids: list[int], *, max_tokens: int = 16,
                    version: int | str | None = None, timeout: float = 120.0,
                    control_key: str | None = None, grpc_ca: str | None = None) -> StreamResult:
    """Greedy generation from Airlock's decoupled python model over GRPC streaming: ``INPUT_IDS`` and
    ``MAX_TOKENS`` in, one ``OUTPUT_IDS`` per response until the final flag (see ``stream_infer``)."""
    def take(result: Any, res: StreamResult) -> int:
        out = result.as_numpy("OUTPUT_IDS")
        if out is None:
            return 0
        res.tokens.extend(int(t) for t in out.reshape(-1))
        return int(out.size)

    return stream_infer(grpc_url, model, token_request(input_ids, max_tokens), take, version=version,
                        timeout=timeout, control_key=control_key, grpc_ca=grpc_ca)


def stream_text(grpc_url: str, model: str, prompt: str, *, dialect: str, max_tokens: int = 16,
                version: int | str | None = None, timeout: float = 120.0,
                control_key: str | None = None, grpc_ca: str | None = None) -> StreamResult:
    """Greedy text generation in Triton's text interface of ``dialect`` (``vllm`` or ``tensorrtllm``:
    the request from ``TEXT_DIALECTS``); the ``text_output`` pieces of the streamed responses are joined
    into ``text`` (see ``stream_infer``)."""
    if dialect not in TEXT_DIALECTS:
        raise ServingError(f"{model}: no text interface for backend {dialect!r} (known: "
                           f"{', '.join(TEXT_DIALECTS)})", path=model, rule="golden")

    request = TEXT_DIALECTS[dialect](prompt, max_tokens)
    return stream_infer(grpc_url, model, request, take_text, version=version, timeout=timeout,
                        control_key=control_key, grpc_ca=grpc_ca)


def take_text(result: Any, res: StreamResult) -> int:
    """``stream_infer``'s ``take`` for the text interfaces: the ``text_output`` piece(s) appended."""
    out = result.as_numpy("text_output")
    if out is None:
        return 0
    piece = "".join(x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in out.reshape(-1))
    res.text += piece
    return len(piece)


def stream_infer(grpc_url: str, model: str, inputs: list[Any], take: Callable[[Any, StreamResult], int], *,
                 version: int | str | None = None, timeout: float = 120.0, control_key: str | None = None,
                 grpc_ca: str | None = None) -> StreamResult:
    """One request to a decoupled model over GRPC streaming (Triton's ``ModelStreamInfer``), responses
    read until the final flag; ``take`` moves a response's outputs into the result and says how much
    came (0: nothing, e.g. an empty final response). Every failure is in ``error`` (the caller decides);
    an unreachable server raises."""
    import queue

    from tritonclient.utils import InferenceServerException

    events: queue.Queue[tuple[float, Any, Any]] = queue.Queue()
    client = grpc_client(grpc_url, grpc_ca)
    res = StreamResult([], set(), float("inf"), [])
    try:
        client.start_stream(callback=lambda result, error: events.put((time.monotonic(), result, error)),
                            headers={GRPC_PREFIX + HEADER: control_key} if control_key else None)
        t0 = time.monotonic()
        client.async_stream_infer(model, inputs, model_version="" if version is None else str(version),
                                  enable_empty_final_response=True)
        last, seen = t0, False
        deadline = t0 + timeout
        while True:
            try:
                at, result, error = events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                got = len(res.tokens) or len(res.text)
                res.error = f"no final response within {timeout:g}s ({got} tokens/chars so far)"
                break
            if error is not None:
                res.error = str(error.message() if hasattr(error, "message") else error)
                break
            resp = result.get_response()
            if take(result, res):
                res.versions.add(resp.model_version)
                if seen:
                    res.itl.append(at - last)
                else:
                    res.ttft, seen = at - t0, True
                last = at
            final = resp.parameters.get("triton_final_response")
            if final is not None and final.bool_param:
                break
    except InferenceServerException as exc:
        if "UNAVAILABLE" in str(exc.status() or "") and "restricted" not in (exc.message() or ""):
            raise ServingError(f"Triton at grpc://{grpc_url} unreachable ({exc.message()})",
                               path=grpc_url, rule="triton-down") from exc
        res.error = exc.message()
    finally:
        with contextlib.suppress(Exception):
            client.stop_stream()
        with contextlib.suppress(Exception):
            client.close()
    return res


def _error_text(raw: bytes) -> str:
    try:
        return str(json.loads(raw).get("error", raw.decode(errors="replace")))
    except (ValueError, AttributeError):
        return raw.decode(errors="replace")[:300]
