"""Hot-reload benchmark on a real tritonserver: reload time and request latency during vs. steady state.

    .venv/bin/python -m benchmarks.serving [--steady 200] [--work benchmarks/work/serving]

One run, one server (nvidia-pytriton wheel, CPU, python backend with the numpy MiniLM model):
deploy the real all-MiniLM-L6-v2 v1.0, measure --steady sequential requests, then hot reload to the
fine-tuned v1.1 (candidate + golden smoke test, promote, retire) with model control over GRPC, and
back to v1.0 with model control over HTTP, each while one client thread keeps sending HTTP
requests. Prints Markdown tables: reload phases, p50/p99/max latency in steady state and during
each reload, failed requests, and how many answers came from each Triton version.
"""

from __future__ import annotations

import argparse
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from airlock.serving.client import TritonClient
from airlock.serving.errors import ServingError
from airlock.serving.golden import DEFAULT_INPUT_IDS, golden_record
from airlock.serving.reload import Reloader
from airlock.serving.server import ServerConfig, TritonServer
from airlock.serving.triton_repo import generate

ROOT = Path(__file__).resolve().parents[1]
IDS = {"INPUT_IDS": np.asarray(DEFAULT_INPUT_IDS, dtype=np.int64)}


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values), q))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steady", type=int, default=200, help="sequential requests in steady state")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks/work/serving")
    args = ap.parse_args()

    from airlock.fixtures import ensure_minilm_pair

    pair = ensure_minilm_pair()
    if args.work.exists():
        shutil.rmtree(args.work)
    model_dir = args.work / "airlock/model_repo/minilm"
    for version, src in (("1.0.0", pair.old), ("1.1.0", pair.new)):
        shutil.copytree(src, model_dir / version)
    (model_dir / "current").symlink_to("1.0.0")
    triton_repo = args.work / "triton"
    generate(args.work / "airlock", triton_repo)

    with TritonServer(ServerConfig(triton_repo, args.work / "server")) as server:
        client = server.client()
        t = time.perf_counter()
        client.load("minilm")
        first_load = time.perf_counter() - t
        for _ in range(10):  # warm-up
            client.infer("minilm", IDS)
        steady: list[float] = []
        for _ in range(args.steady):
            t = time.perf_counter()
            client.infer("minilm", IDS)
            steady.append((time.perf_counter() - t) * 1000)

        runs = [measure(server, "1.1.0", model_dir, grpc_control=True),
                measure(server, "1.0.0", model_dir, grpc_control=False)]

    print("\n### Triton hot reload on CPU, real all-MiniLM-L6-v2 (numpy python backend), one run\n")
    print(f"first (cold) load of v1.0: {first_load:.2f} s\n")
    print("| reload | control | status | candidate load s | promote s | retire s | total s |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for r in runs:
        sec = r["result"].seconds
        phases = " | ".join(f"{sec.get(k, 0):.2f}" for k in ("candidate_load", "promote", "retire", "total"))
        print(f"| {r['label']} | {r['control']} | {r['result'].status} | {phases} |")
    print("\n| requests (1 client, HTTP) | count | failed | p50 ms | p99 ms | max ms | answers by version |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    print(f"| steady state | {len(steady)} | 0 | {pct(steady, 50):.1f} | {pct(steady, 99):.1f} | "
          f"{max(steady):.1f} | |")
    for r in runs:
        d = r["during"]
        print(f"| during {r['label']} ({r['control']} control) | {len(d)} | {r['failed']} | "
              f"{pct(d, 50):.1f} | {pct(d, 99):.1f} | {max(d, default=float('nan')):.1f} | "
              f"{r['by_version']} |")


def measure(server: TritonServer, version: str, model_dir: Path, *, grpc_control: bool) -> dict[str, Any]:
    """Reload to ``version`` while one client thread sends requests; latencies of those sent meanwhile."""
    samples: list[tuple[float, float, str | None]] = []  # (start, latency ms, version)
    failures: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        c = TritonClient(server.url, timeout=30)
        for _ in range(100_000):
            if stop.is_set():
                return
            t0 = time.perf_counter()
            try:
                r = c.infer("minilm", IDS)
                samples.append((t0, (time.perf_counter() - t0) * 1000, r.model_version))
            except ServingError as exc:
                failures.append(str(exc))

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    time.sleep(1.0)
    control = server.client(grpc_control=grpc_control)
    r_start = time.perf_counter()
    result = Reloader(control, server.cfg.model_repository).reload(
        "minilm", version, model_dir / version, golden_record(model_dir / version))
    r_end = time.perf_counter()
    time.sleep(1.0)
    stop.set()
    thread.join(60)
    by_version: dict[str, int] = {}
    for _, _, v in samples:
        by_version[v or "?"] = by_version.get(v or "?", 0) + 1
    return {"label": f"to {version}", "control": "GRPC" if grpc_control else "HTTP", "result": result,
            "during": [lat for t0, lat, _ in samples if r_start <= t0 <= r_end], "failed": len(failures),
            "by_version": dict(sorted(by_version.items()))}


if __name__ == "__main__":
    main()
