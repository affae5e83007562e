"""`airlock serve ...`: serving settings, Triton model repository generation, load/unload, status,
hot reload, smoke test.

Exit codes: 0 ok, 11 bad config/settings/golden record, 30 repository, 50 Triton down/slow/refused,
51 smoke test failed (the old version keeps serving), 52 the version is stored encrypted (not served)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from airlock.cli.common import JsonOpt, RootOpt, emit_json, handle_errors, out
from airlock.errors import ManifestError

app = typer.Typer(no_args_is_help=True, help="Triton serving: repository generation, reload, smoke test.")

UrlOpt = typer.Option("http://127.0.0.1:8000", "--url", envvar="AIRLOCK_TRITON_URL",
                      help="Triton HTTP endpoint.")
GrpcOpt = typer.Option(None, "--grpc-url", envvar="AIRLOCK_TRITON_GRPC_URL",
                       help="Triton GRPC endpoint (host:port) for load/unload: an HTTP load stalls "
                       "HTTP inference requests on the same worker thread, a GRPC load does not.")
KeyOpt = typer.Option(None, "--control-key-file", envvar="AIRLOCK_TRITON_CONTROL_KEY_FILE",
                      help="Triton's model-control credential (file, mode 0600); needed when the server "
                      "restricts its control APIs (roles/triton_server does by default).")
GrpcCaOpt = typer.Option(None, "--grpc-ca", envvar="AIRLOCK_TRITON_GRPC_CA",
                         help="GRPC over TLS: the CA (PEM) that signed Triton's GRPC certificate.")
TimeoutOpt = typer.Option(30.0, "--timeout", help="Seconds to wait for one Triton answer.")
TritonRepoOpt = typer.Option(..., "--triton-repo", envvar="AIRLOCK_TRITON_REPO",
                             help="The Triton model repository directory (generated).")
BackendOpt = typer.Option([], "--backend", help="MODEL=python|vllm|tensorrtllm: stored in the model's "
                          "serving settings first (as `serve configure MODEL --backend B`); repeatable.")
GoldenOpt = typer.Option(None, "--golden", help="Golden record JSON, or a staged (verified) MANIFEST.json "
                         "whose model entry carries one.")


def _client(url: str, timeout: float, grpc_url: str | None = None,  # type: ignore[no-untyped-def]
            key_file: Path | None = None, grpc_ca: Path | None = None):
    from airlock.serving.auth import read_control_key
    from airlock.serving.client import TritonClient

    key = read_control_key(key_file) if key_file is not None else None
    return TritonClient(url, timeout=timeout, grpc_url=grpc_url, control_key=key,
                        grpc_ca=str(grpc_ca) if grpc_ca is not None else None)


def _backends(specs: list[str]) -> dict[str, str]:
    from airlock.serving.settings import BACKENDS

    backends: dict[str, str] = {}
    for spec in specs:
        name, _, backend = spec.partition("=")
        if not name or backend not in BACKENDS:
            raise typer.BadParameter(f"--backend {spec!r}: expected MODEL=" + "|".join(BACKENDS))
        backends[name] = backend
    return backends


@app.command()
def configure(
    model: str,
    root: Path = RootOpt,
    backend: str | None = typer.Option(None, "--backend", help="python | vllm | tensorrtllm."),
    instance_count: int | None = typer.Option(None, "--instance-count", help="Model instances (>= 1)."),
    max_batch_size: int | None = typer.Option(None, "--max-batch-size",
                                              help="Triton batch size (0 = none); vllm: max_num_seqs."),
    dynamic_batching: bool | None = typer.Option(None, "--dynamic-batching/--no-dynamic-batching",
                                                 help="Triton's dynamic batcher (python, tensorrtllm)."),
    max_queue_delay_us: int | None = typer.Option(None, "--max-queue-delay-us",
                                                  help="Dynamic batcher queue delay (microseconds)."),
    tensor_parallel_size: int | None = typer.Option(None, "--tensor-parallel-size",
                                                    help="vllm, tensorrtllm."),
    gpu_memory_utilization: float | None = typer.Option(None, "--gpu-memory-utilization",
                                                        help="(0, 1]; vllm engine, tensorrtllm KV cache."),
    settings: str | None = typer.Option(None, "--settings", help="JSON object: the whole settings (replaces "
                                        "what is stored; unnamed options take their defaults)."),
    check: bool = typer.Option(False, "--check", help="Report what would change; write nothing."),
    as_json: bool = JsonOpt,
) -> None:
    """Show or set MODEL's serving settings (stored once under <root>/model_repo/metadata/serving/,
    used by generate, reload, sync and rollback). Flags merge into what is stored."""
    from airlock.serving.settings import configure as conf

    with handle_errors(as_json):
        flags = {"backend": backend, "instance_count": instance_count, "max_batch_size": max_batch_size,
                 "dynamic_batching": dynamic_batching, "max_queue_delay_us": max_queue_delay_us,
                 "tensor_parallel_size": tensor_parallel_size,
                 "gpu_memory_utilization": gpu_memory_utilization}
        changes: dict[str, Any] = {k: v for k, v in flags.items() if v is not None}
        if settings is not None:
            if changes:
                raise typer.BadParameter("--settings replaces the whole settings: give it alone or use "
                                         "flags")
            try:
                changes = json.loads(settings)
            except ValueError as exc:
                raise ManifestError(f"--settings: not JSON: {exc}", rule="serving-settings") from exc
        report = conf(root, model, changes, replace_all=settings is not None, check=check)
        if as_json:
            emit_json(report.as_dict())
        else:
            body = " ".join(f"{k}={v}" for k, v in report.after.items())
            out.print(f"{model}: {body}" + (" (changed)" if report.changed else ""))


def load_golden(path: Path | None, model: str, version: str) -> dict[str, Any] | None:
    """A golden record from a file: the record itself, or a manifest's ``models[]`` entry's ``golden``."""
    if path is None:
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{path}: cannot read golden record: {exc}", path=str(path),
                            rule="golden") from exc
    if isinstance(data, dict) and "models" in data:
        for entry in data["models"]:
            if entry.get("name") == model and entry.get("version") == version:
                golden = entry.get("golden")
                if not golden:
                    raise ManifestError(f"{path}: model {model} {version} carries no golden record",
                                        path=str(path), rule="golden")
                return dict(golden)
        raise ManifestError(f"{path}: no model entry {model} {version}", path=str(path), rule="golden")
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: golden record must be a JSON object", path=str(path), rule="golden")
    return data


@app.command()
def generate(
    root: Path = RootOpt,
    triton_repo: Path = TritonRepoOpt,
    model: list[str] = typer.Option([], "--model", "-m", help="Only this model; repeatable (default: all)."),
    backend: list[str] = BackendOpt,
    check: bool = typer.Option(False, "--check", help="Report what would change; change nothing."),
    as_json: bool = JsonOpt,
) -> None:
    """Generate/refresh the Triton repository from the Airlock model repository (validated configs)."""
    from airlock.serving.settings import configure as conf
    from airlock.serving.triton_repo import generate as gen

    with handle_errors(as_json):
        stored = {name: conf(root, name, {"backend": b}, check=check).changed
                  for name, b in _backends(backend).items()}
        report = gen(root, triton_repo, models=model or None, check=check)
        report.changed |= any(stored.values())
        if as_json:
            emit_json(report.as_dict())
        else:
            for name, row in report.models.items():
                out.print(f"{name}: active {row['active']} -> triton version {row['triton_version']}, "
                          f"served {row['served']}")
            out.print("changed" if report.changed else "no change")


@app.command()
def load(model: str, url: str = UrlOpt,
         version: int | None = typer.Option(None, "--version", help="Triton version."),
         grpc_url: str | None = GrpcOpt, control_key_file: Path | None = KeyOpt,
         grpc_ca: Path | None = GrpcCaOpt, timeout: float = TimeoutOpt, as_json: bool = JsonOpt) -> None:
    """Load (or reload) MODEL as its config.pbtxt says, and wait until READY."""
    with handle_errors(as_json):
        c = _client(url, timeout, grpc_url, control_key_file, grpc_ca)
        c.load(model)
        c.wait_ready(model, version, timeout=max(timeout, 60.0))
        result = {"model": model, "loaded": c.loaded_versions(model)}
        emit_json(result) if as_json else out.print(f"{model}: {result['loaded']}")


@app.command()
def unload(model: str, url: str = UrlOpt, grpc_url: str | None = GrpcOpt,
           control_key_file: Path | None = KeyOpt, grpc_ca: Path | None = GrpcCaOpt,
           timeout: float = TimeoutOpt, as_json: bool = JsonOpt) -> None:
    """Unload MODEL and poll until Triton reports no version loaded."""
    with handle_errors(as_json):
        c = _client(url, timeout, grpc_url, control_key_file, grpc_ca)
        c.unload(model, timeout=max(timeout, 60.0))
        emit_json({"model": model, "unloaded": True}) if as_json else out.print(f"{model}: unloaded")


@app.command()
def status(url: str = UrlOpt, triton_repo: Path = TritonRepoOpt, control_key_file: Path | None = KeyOpt,
           timeout: float = TimeoutOpt, as_json: bool = JsonOpt) -> None:
    """Triton liveness, and per model: versions on disk, configured and loaded."""
    from airlock.serving.reload import status as st

    with handle_errors(as_json):
        report = st(_client(url, timeout, key_file=control_key_file), triton_repo)
        if as_json:
            emit_json(report)
            return
        out.print(f"triton {report['url']}: {'live' if report['live'] else 'DOWN'}")
        for name, row in report["models"].items():
            out.print(f"  {name}: versions {row['versions']} configured {row['configured']} "
                      f"loaded {row['loaded']}")


@app.command()
def reload(
    model: str,
    root: Path = RootOpt,
    triton_repo: Path = TritonRepoOpt,
    version: str | None = typer.Option(None, "--version",
                                       help="Airlock version (default: the model's current)."),
    golden: Path | None = GoldenOpt,
    url: str = UrlOpt,
    grpc_url: str | None = GrpcOpt,
    control_key_file: Path | None = KeyOpt,
    grpc_ca: Path | None = GrpcCaOpt,
    timeout: float = TimeoutOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Hot reload MODEL to VERSION with its stored serving settings: candidate + golden smoke test,
    promote, unload old; else keep old. Same version, changed settings: reloaded in place."""
    from airlock.errors import RepositoryError
    from airlock.repo.layout import Layout
    from airlock.serving.errors import SmokeTestError
    from airlock.serving.reload import Reloader
    from airlock.serving.triton_repo import airlock_models

    with handle_errors(as_json):
        if version is None:
            active = airlock_models(root)
            if model not in active:
                raise RepositoryError(f"{Layout(root).repo / model}: no current version", path=str(root))
            version, path = active[model]
        else:
            path = Layout(root).version_dir(model, version)  # names checked (model, SemVer)
            if not path.is_dir():
                raise RepositoryError(f"{path}: no such model version", path=str(path))
        record = load_golden(golden, model, version)
        client = _client(url, timeout, grpc_url, control_key_file, grpc_ca)
        result = Reloader(client, triton_repo, airlock_root=root).reload(
            model, version, path, record)
        if as_json:
            emit_json(result.as_dict())
        else:
            out.print(f"{model} -> {version}: {result.status}"
                      + (f" ({result.error})" if result.error else "")
                      + f" in {result.seconds.get('total', 0):.1f}s")
        if not result.ok:
            if as_json:
                raise typer.Exit(SmokeTestError.exit_code)
            raise SmokeTestError(result.error or "reload failed", path=str(path))


@app.command()
def restore(
    root: Path = RootOpt,
    triton_repo: Path = TritonRepoOpt,
    model: list[str] = typer.Option([], "--model", "-m", help="Only this model; repeatable (default: all)."),
    url: str = UrlOpt,
    grpc_url: str | None = GrpcOpt,
    control_key_file: Path | None = KeyOpt,
    grpc_ca: Path | None = GrpcCaOpt,
    wait_live: float = typer.Option(120.0, "--wait-live", help="Seconds to wait for Triton to come up."),
    timeout: float = TimeoutOpt,
    as_json: bool = JsonOpt,
) -> None:
    """After a Triton (re)start: serve each model's current version once its hashes verify, else the
    previous good one (audited). Exit 13 when a model is served from a fallback or not at all."""
    from airlock.errors import IntegrityError
    from airlock.serving.restore import restore as run_restore

    with handle_errors(as_json):
        report = run_restore(_client(url, timeout, grpc_url, control_key_file, grpc_ca), triton_repo, root,
                             models=model or None,
                             wait_live_s=wait_live)
        if as_json:
            emit_json(report.as_dict())
        else:
            for name, row in report.models.items():
                out.print(f"{name}: {row.status}: serving {row.served} (current {row.current})"
                          + "".join(f"; {v} refused: {why}" for v, why in row.refused.items()))
        if not report.ok:
            bad = ", ".join(n for n, r in report.models.items() if r.status != "current")
            if as_json:
                raise typer.Exit(IntegrityError.exit_code)
            raise IntegrityError(f"not serving the current version of: {bad} (see the audit log)",
                                 rule="serve-restore")


@app.command("control-key")
def control_key(
    path: Path = typer.Argument(..., help="Key file to create (mode 0600) unless it exists."),
    as_json: bool = JsonOpt,
) -> None:
    """Create Triton's model-control credential (random, mode 0600); an existing one is checked, kept."""
    from airlock.serving.auth import make_control_key

    with handle_errors(as_json):
        created = make_control_key(path)
        emit_json({"path": str(path), "changed": created}) if as_json else out.print(
            f"{path}: {'created' if created else 'kept'}")


@app.command()
def smoke(
    model: str,
    version: int | None = typer.Option(None, "--version", help="Triton version number to pin."),
    golden: Path | None = typer.Option(None, "--golden", help="Golden record JSON."),
    url: str = UrlOpt,
    grpc_url: str | None = GrpcOpt,
    grpc_ca: Path | None = GrpcCaOpt,
    timeout: float = TimeoutOpt,
    as_json: bool = JsonOpt,
    backend: str = typer.Option("python", "--backend", help="The model's backend: python, vllm or "
                                "tensorrtllm (a text record is sent in that backend's text interface)."),
) -> None:
    """Run the golden smoke test (or a liveness inference) against a loaded model; a generation
    golden record (``"kind": "generation"``) streams over GRPC (--grpc-url), a text record
    (``"kind": "text"``) too, in the text interface of --backend."""
    from airlock.serving.config import BACKENDS
    from airlock.serving.errors import SmokeTestError
    from airlock.serving.reload import smoke_test

    with handle_errors(as_json):
        record = None
        if golden is not None:
            try:
                record = json.loads(golden.read_text())
            except (OSError, ValueError) as exc:
                raise ManifestError(f"{golden}: cannot read golden record: {exc}", path=str(golden),
                                    rule="golden") from exc
        if backend not in BACKENDS:
            raise ManifestError(f"--backend {backend!r}: expected one of {', '.join(BACKENDS)}",
                                rule="serving-settings")
        gate = "infer" if backend == "python" else backend
        client = _client(url, timeout, grpc_url, grpc_ca=grpc_ca)
        result = smoke_test(client, model, version, record, gate=gate)
        if as_json:
            emit_json({"model": model, "version": version, **result.as_dict()})
        else:
            out.print(f"{model}: {'ok' if result.ok else 'FAILED'}: {result.detail}")
        if not result.ok:
            if as_json:
                raise typer.Exit(SmokeTestError.exit_code)
            raise SmokeTestError(result.detail, path=model)


@app.command("golden")
def golden_cmd(
    model_dir: Path = typer.Argument(..., help="A MiniLM-shaped or DeepSeek-style model directory."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write here (default: stdout)."),
    atol: float = typer.Option(1e-4, "--atol", help="Absolute tolerance."),
    rtol: float = typer.Option(1e-3, "--rtol", help="Relative tolerance."),
    prompt_ids: str | None = typer.Option(None, "--prompt-ids", help="Comma-separated token ids: a "
                                          "generation record (greedy OUTPUT_IDS) instead of embeddings."),
    max_tokens: int = typer.Option(8, "--max-tokens", help="Tokens to generate (with --prompt-ids or "
                                   "--prompt)."),
    prompt: str | None = typer.Option(None, "--prompt", help="Prompt text: a text record (greedy text, for "
                                      "vllm / tensorrtllm models) instead of embeddings."),
    match: str = typer.Option("exact", "--match", help="Text records: exact or normalised comparison."),
    grpc_url: str | None = typer.Option(None, "--grpc-url", help="With --prompt: record from this known-good "
                                        "Triton (GRPC) instead of computing locally; MODEL_DIR is then "
                                        "the served model's name."),
    backend: str = typer.Option("vllm", "--backend", help="With --grpc-url: the served model's text "
                                "interface, vllm or tensorrtllm."),
    grpc_ca: Path | None = GrpcCaOpt,
) -> None:
    """Compute the golden smoke-test record of MODEL_DIR (for the bundle manifest's model entry)."""
    from airlock.serving.golden import (
        TEXT_MATCHES,
        generation_record,
        golden_record,
        record_text,
        text_record,
    )

    if prompt is not None and match not in TEXT_MATCHES:
        raise typer.BadParameter(f"--match {match!r}: expected one of {', '.join(TEXT_MATCHES)}")
    if prompt is not None and prompt_ids is not None:
        raise typer.BadParameter("give --prompt (text) or --prompt-ids (token ids), not both")
    if prompt is not None and grpc_url is not None:
        with handle_errors(False):
            record = record_text(grpc_url, str(model_dir), prompt, backend=backend, max_tokens=max_tokens,
                                 match=match, grpc_ca=None if grpc_ca is None else str(grpc_ca))
    elif prompt is not None:
        with handle_errors(False):
            record = text_record(model_dir, prompt, max_tokens, match=match)
    elif prompt_ids is None:
        record = golden_record(model_dir, atol=atol, rtol=rtol)
    else:
        try:
            ids = [int(t) for t in prompt_ids.split(",")]
        except ValueError:
            raise typer.BadParameter(f"--prompt-ids {prompt_ids!r}: expected comma-separated integers"
                                     ) from None
        record = generation_record(model_dir, ids, max_tokens)
    text = json.dumps(record, indent=1) + "\n"
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)


lb_app = typer.Typer(no_args_is_help=True,
                     help="HAProxy in front of Triton (runtime API): drain, enable, weight.")
app.add_typer(lb_app, name="lb")
SocketOpt = typer.Option(Path("/run/haproxy/admin.sock"), "--socket", envvar="AIRLOCK_HAPROXY_SOCKET",
                         help="HAProxy's admin socket (stats socket ... level admin).")
LbBackendOpt = typer.Option("triton", "--backend", help="HAProxy backend of the Triton servers.")


def _lb_emit(state: Any, as_json: bool) -> None:
    from dataclasses import asdict

    row = asdict(state)
    if as_json:
        emit_json(row)
    else:
        out.print(f"{row['backend']}/{row['server']}: {row['admin']} weight {row['weight']} "
                  f"sessions {row['sessions']} {row['status']}")


@lb_app.command("status")
def lb_status(socket: Path = SocketOpt, backend: str = LbBackendOpt, as_json: bool = JsonOpt) -> None:
    """Every server of the backend: admin state, weight, current sessions, health."""
    from dataclasses import asdict

    from airlock.serving.haproxy import HAProxy

    with handle_errors(as_json):
        states = HAProxy(socket).states(backend)
        if as_json:
            emit_json({name: asdict(s) for name, s in states.items()})
        else:
            for s in states.values():
                _lb_emit(s, False)


@lb_app.command("drain")
def lb_drain(server: str, socket: Path = SocketOpt, backend: str = LbBackendOpt,
             wait: float = typer.Option(60.0, "--wait", help="Seconds to wait for its sessions to end."),
             as_json: bool = JsonOpt) -> None:
    """No new requests to SERVER; wait until its open sessions are gone (exit 50 if they do not)."""
    from airlock.serving.haproxy import HAProxy

    with handle_errors(as_json):
        _lb_emit(HAProxy(socket).drain(backend, server, wait_s=wait), as_json)


@lb_app.command("shift")
def lb_shift(server: str, socket: Path = SocketOpt, backend: str = LbBackendOpt,
             step: list[int] = typer.Option([], "--step", help="A weight on the way (e.g. --step 10 "
                                            "--step 50); repeatable, in order."),
             full_weight: int = typer.Option(100, "--full-weight", help="The weight it ends at."),
             settle: float = typer.Option(5.0, "--settle", help="Seconds between steps."),
             wait: float = typer.Option(60.0, "--wait", help="Seconds to wait for sessions when draining "
                                        "again."),
             as_json: bool = JsonOpt) -> None:
    """Send requests to SERVER again gradually: each --step weight, then --full-weight; between steps
    HAProxy's health check must see it UP and its error counters must not grow. Otherwise SERVER is
    drained again and the command exits 50."""
    from airlock.serving.errors import ServingError
    from airlock.serving.haproxy import HAProxy, shift

    with handle_errors(as_json):
        res = shift(HAProxy(socket), backend, server, tuple(step), full_weight=full_weight, settle_s=settle,
                    drain_wait_s=wait)
        if not res.ok:
            raise ServingError(f"haproxy: {backend}/{server}: {res.detail} (steps: "
                               f"{', '.join(str(s['weight']) for s in res.steps)})", rule="haproxy-shift")
        if as_json:
            emit_json(res.as_dict())
        else:
            path = " -> ".join(f"{s['weight']} ({s['status']})" for s in res.steps)
            out.print(f"{backend}/{server}: {path}")


@lb_app.command("enable")
def lb_enable(server: str, socket: Path = SocketOpt, backend: str = LbBackendOpt,
              weight: int | None = typer.Option(None, "--weight", help="Set this weight (0-256) first."),
              as_json: bool = JsonOpt) -> None:
    """Send requests to SERVER again (optionally at WEIGHT: 10, then 50, then 100 shifts gradually)."""
    from airlock.serving.haproxy import HAProxy

    with handle_errors(as_json):
        lb = HAProxy(socket)
        if weight is not None:
            lb.weight(backend, server, weight)
        _lb_emit(lb.enable(backend, server), as_json)
