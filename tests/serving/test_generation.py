"""A DeepSeek-V3-style generation model (MLA, MoE, fp8 block-scaled weights; safetensors in the
Airlock repository) served by the real tritonserver in decoupled mode, tokens streamed over GRPC;
a golden generation record gates the reload; hot reload v1.0 -> v1.1 under continuous streams."""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from airlock.serving.client import StreamResult, stream_generate
from airlock.serving.golden import generation_record, parse_golden
from airlock.serving.reload import Reloader, smoke_test
from airlock.serving.triton_repo import generate, validate_config
from tests.gpg import Keys
from tests.serving.conftest import two_llm_versions

TIMINGS = Path(os.environ.get("AIRLOCK_GENERATION_TIMINGS", "/tmp/airlock-generation-timings.json"))
PROMPT = [0, 17, 300, 42, 7, 99]


@pytest.fixture(scope="module")
def llm_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Airlock root with model gen_ds: 1.0.0 and 1.1.0, two DeepSeek-shaped models (seeds 0 and 1)."""
    root = tmp_path_factory.mktemp("llm")
    two_llm_versions(root, "gen_ds", {"task": "generate"})
    return root


@pytest.fixture(scope="module")
def signed_manifest(llm_root: Path, keys: Keys, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real signed bundle carrying gen_ds 1.1.0 with its golden generation record, staged
    (signature and hashes verified): the staged MANIFEST.json is what the health gate reads."""
    import yaml

    from airlock.bundle.build import build_bundle
    from airlock.bundle.stage import stage_bundle

    work = tmp_path_factory.mktemp("llm-bundle")
    version_dir = llm_root / "model_repo" / "gen_ds" / "1.1.0"
    record = generation_record(version_dir, PROMPT, max_tokens=6)
    spec = work / "bundle.yml"
    spec.write_text(yaml.safe_dump({"compatible": "appliance-test", "sequence": 7, "models": [
        {"name": "gen_ds", "version": "1.1.0", "path": str(version_dir), "golden": record}]}))
    build_bundle(spec, work / "bundle", signer=keys.fpr["signer"], gnupghome=keys.home)
    staged = stage_bundle(work / "bundle", work / "staged", keys.trust(["signer"], "signer"))
    return staged.path / "MANIFEST.json"


@dataclass
class Streams:
    """Clients streaming generations back to back until stopped."""

    grpc_url: str
    results: list[tuple[float, StreamResult]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            t = time.monotonic()
            result = stream_generate(self.grpc_url, "gen_ds", PROMPT, max_tokens=6, timeout=300)
            self.results.append((t, result))

    def window(self, t0: float, t1: float) -> dict[str, float]:
        rs = [r for t, r in self.results if t0 <= t <= t1 and r.error is None]
        ttft = np.asarray([r.ttft for r in rs]) * 1000
        itl = np.asarray([x for r in rs for x in r.itl]) * 1000
        if not rs:
            return {"streams": 0}
        return {"streams": len(rs), "ttft_p50_ms": round(float(np.percentile(ttft, 50)), 1),
                "ttft_p99_ms": round(float(np.percentile(ttft, 99)), 1),
                "itl_p50_ms": round(float(np.percentile(itl, 50)), 1),
                "itl_p99_ms": round(float(np.percentile(itl, 99)), 1)}


def test_generation_model_streams_and_is_gated_by_its_golden_record(triton, llm_root: Path,
                                                                    signed_manifest: Path) -> None:
    from airlock.cli.serve import load_golden

    model = llm_root / "model_repo" / "gen_ds"
    triton_repo = triton.cfg.model_repository
    generate(llm_root, triton_repo, models=["gen_ds"])
    cfg = validate_config((triton_repo / "gen_ds" / "config.pbtxt").read_text(), name="gen_ds")
    assert cfg.backend == "python" and cfg.model_transaction_policy.decoupled
    client = triton.client()
    client.load("gen_ds")
    client.wait_ready("gen_ds", 1)
    golden = {v: generation_record(model / v, PROMPT, max_tokens=6) for v in ("1.0.0", "1.1.0")}
    assert golden["1.0.0"]["expected"] != golden["1.1.0"]["expected"], "the two versions must differ"
    assert load_golden(signed_manifest, "gen_ds", "1.1.0") == golden["1.1.0"], "signed in the bundle"

    streamed = stream_generate(triton.grpc_url, "gen_ds", PROMPT, max_tokens=6)
    assert streamed.error is None and streamed.versions == {"1"}
    assert streamed.tokens == golden["1.0.0"]["expected"]["OUTPUT_IDS"], "server, golden: one forward pass"
    assert len(streamed.itl) == len(streamed.tokens) - 1, "one response per token"
    assert smoke_test(client, "gen_ds", 1, golden["1.0.0"]).ok
    wrong = smoke_test(client, "gen_ds", 1, golden["1.1.0"])
    assert not wrong.ok and "differ from the golden record at position" in wrong.detail

    # the gate refuses a candidate whose stream does not match: v1.1 checked against v1.0's record
    refused = Reloader(client, triton_repo).reload("gen_ds", "1.1.0", model / "1.1.0", golden["1.0.0"])
    assert refused.status == "failed" and "smoke test failed" in (refused.error or "")
    assert client.loaded_versions("gen_ds") == {"1": "READY"}

    # hot reload v1.0 -> v1.1 while two clients stream continuously
    streams = Streams(triton.grpc_url)
    threads = [threading.Thread(target=streams.run, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(8.0)
    t0 = time.monotonic()
    signed = load_golden(signed_manifest, "gen_ds", "1.1.0")  # the gate's record: from the staged bundle
    result = Reloader(client, triton_repo).reload("gen_ds", "1.1.0", model / "1.1.0", signed)
    t1 = time.monotonic()
    time.sleep(6.0)
    streams.stop.set()
    for t in threads:
        t.join(300)
    assert result.status == "promoted", result.error
    failed = [r.error for _, r in streams.results if r.error is not None]
    assert failed == [], failed[:3]
    assert all(len(r.versions) == 1 for _, r in streams.results), "a stream mixed versions"
    expected = {"1": golden["1.0.0"]["expected"]["OUTPUT_IDS"],
                "2": golden["1.1.0"]["expected"]["OUTPUT_IDS"]}
    assert {v for _, r in streams.results for v in r.versions} == {"1", "2"}
    assert all(r.tokens == expected[next(iter(r.versions))] for _, r in streams.results)
    assert next(iter(streams.results[-1][1].versions)) == "2"
    report = {"failed_streams": len(failed), "streams": len(streams.results), "reload_s": round(t1 - t0, 1),
              "steady": streams.window(0, t0), "during_reload": streams.window(t0, t1),
              "after": streams.window(t1, float("inf"))}
    TIMINGS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))
    client.unload("gen_ds")


def test_generation_golden_records_are_checked(llm_root: Path) -> None:
    import subprocess
    import sys

    from airlock.errors import ManifestError

    rec = generation_record(llm_root / "model_repo" / "gen_ds" / "1.0.0", PROMPT, max_tokens=4)
    assert parse_golden(rec).kind == "generation"
    cli = subprocess.run([str(Path(sys.executable).with_name("airlock")), "serve", "golden",
                          str(llm_root / "model_repo" / "gen_ds" / "1.0.0"), "--prompt-ids",
                          ",".join(map(str, PROMPT)), "--max-tokens", "4"], capture_output=True, text=True,
                         check=False, timeout=300)
    assert cli.returncode == 0 and json.loads(cli.stdout) == rec, cli.stderr
    for bad in ({**rec, "expected": {"OUTPUT_IDS": []}}, {**rec, "input": {"INPUT_IDS": ["a"]}},
                {**rec, "max_tokens": 2}, {**rec, "max_tokens": True}):
        with pytest.raises(ManifestError, match="generation golden"):
            parse_golden(bad)
