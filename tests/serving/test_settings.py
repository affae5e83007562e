"""Serving settings stored once in the Airlock repository (backend + options), reused by every path
that writes config.pbtxt; encrypted versions are never handed to Triton."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from airlock.errors import ManifestError, RepositoryError
from airlock.serving.client import TritonClient
from airlock.serving.errors import EncryptedVersionError
from airlock.serving.reload import Reloader
from airlock.serving.settings import ModelOptions, SettingsStore, configure
from airlock.serving.triton_repo import TritonModel, generate, render_config, validate_config
from tests.serving.conftest import add_model, ids

LLM_SETTINGS = {
    "vllm": {"backend": "vllm", "instance_count": 2, "max_batch_size": 128, "tensor_parallel_size": 8,
             "gpu_memory_utilization": 0.85},
    "tensorrtllm": {"backend": "tensorrtllm", "instance_count": 2, "max_batch_size": 32,
                    "dynamic_batching": True, "max_queue_delay_us": 250, "tensor_parallel_size": 4,
                    "gpu_memory_utilization": 0.8},
}


def _airlock(*args: str) -> subprocess.CompletedProcess[str]:
    cli = Path(sys.executable).with_name("airlock")
    return subprocess.run([str(cli), *args], capture_output=True, text=True, check=False,
                          env={**os.environ, "NO_COLOR": "1"}, timeout=300)


def _set_current(root: Path, name: str, version: str) -> None:
    link = root / "model_repo" / name / "current"
    link.unlink()
    link.symlink_to(version)


def _assert_llm_config(entry: TritonModel, backend: str, versions: list[int]) -> None:
    """config.pbtxt and the version directories say exactly what LLM_SETTINGS[backend] says."""
    want = LLM_SETTINGS[backend]
    cfg = validate_config(entry.config_path.read_text(), name=entry.name, model_dir=entry.root)
    assert cfg.backend == backend
    assert sorted(cfg.version_policy.specific.versions) == versions
    assert cfg.instance_group[0].count == want["instance_count"]
    assert cfg.model_transaction_policy.decoupled
    for n in versions:
        vdir = entry.root / str(n)
        assert not (vdir / "model.py").exists(), "a python model.py would shadow the LLM backend"
        if backend == "vllm":
            engine = json.loads((vdir / "model.json").read_text())
            info = json.loads((vdir / "version.json").read_text())
            assert engine == {"model": info["path"], "disable_log_requests": True, "tensor_parallel_size": 8,
                              "gpu_memory_utilization": 0.85, "max_num_seqs": 128}
    if backend == "tensorrtllm":
        assert cfg.max_batch_size == want["max_batch_size"]
        assert cfg.dynamic_batching.max_queue_delay_microseconds == want["max_queue_delay_us"]
        assert cfg.parameters["kv_cache_free_gpu_mem_fraction"].string_value == "0.8"
        assert cfg.parameters["airlock_tensor_parallel_size"].string_value == "4"


def test_configure_validates_before_writing_and_is_idempotent(tmp_path: Path, airlock_root: Path) -> None:
    add_model(airlock_root, "st_conf")
    store = SettingsStore(airlock_root)
    path = store.path("st_conf")
    bad = [
        ({"backend": "onnx-magic"}, "unknown Triton backend"),
        ({"backend": "python", "tensor_parallel_size": 2}, "apply to the vllm and tensorrtllm"),
        ({"backend": "vllm", "dynamic_batching": True}, "batches continuously"),
        ({"dynamic_batching": True}, "needs max_batch_size > 0"),
        ({"max_batch_size": 4, "max_queue_delay_us": 10}, "set dynamic_batching too"),
        ({"backend": "vllm", "gpu_memory_utilization": 1.5}, r"in \(0, 1\]"),
        ({"instance_count": 0}, "instance_count must be an integer >= 1"),
        ({"instance_count": True}, "instance_count must be an integer"),
        ({"bogus": 1}, "unknown serving option"),
        ({"backend": "vllm", "task": "embed"}, "task must be embed or generate"),
        ({"task": "generate", "max_batch_size": 4}, "streams one request at a time"),
    ]
    for changes, message in bad:
        with pytest.raises(ManifestError, match=message):
            configure(airlock_root, "st_conf", changes)
        assert not path.exists(), f"{changes} must not write"
    with pytest.raises(RepositoryError, match="no such model"):
        configure(airlock_root, "st_nope", {"backend": "vllm"})
    with pytest.raises(ManifestError, match="not a servable model name"):
        configure(airlock_root, "../st_conf", {})

    checked = configure(airlock_root, "st_conf", LLM_SETTINGS["vllm"], check=True)
    assert checked.changed and not path.exists(), "check mode writes nothing"

    # the CLI: flags merge, --settings replaces; one line and exit 11 on bad input
    root = str(airlock_root)
    cli = _airlock("serve", "configure", "st_conf", "--root", root, "--backend", "vllm",
                   "--tensor-parallel-size", "8", "--gpu-memory-utilization", "0.85", "--json")
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert json.loads(cli.stdout)["changed"] and store.load("st_conf") == ModelOptions(
        backend="vllm", tensor_parallel_size=8, gpu_memory_utilization=0.85)
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    before = path.read_bytes()
    settings = {"backend": "vllm", "tensor_parallel_size": 8, "gpu_memory_utilization": 0.85}
    same = _airlock("serve", "configure", "st_conf", "--root", root, "--settings", json.dumps(settings),
                    "--json")
    assert same.returncode == 0 and not json.loads(same.stdout)["changed"] and path.read_bytes() == before
    refused = _airlock("serve", "configure", "st_conf", "--root", root, "--dynamic-batching")
    assert refused.returncode == 11 and "batches continuously" in refused.stderr
    assert "Traceback" not in refused.stderr and path.read_bytes() == before

    # a damaged settings file is a clear error for every path that would use it, not a python config
    path.write_text('{"format": 1, "model": "st_conf", "backend": "vllm", "tensor_parallel_size": "8"}')
    gen = _airlock("serve", "generate", "--root", root, "--triton-repo", str(tmp_path / "t"), "-m", "st_conf")
    assert gen.returncode == 11 and "tensor_parallel_size must be an integer" in gen.stderr
    assert not (tmp_path / "t").exists()
    path.unlink()


@pytest.mark.parametrize("backend", ["vllm", "tensorrtllm"])
def test_llm_backend_keeps_its_settings_through_generate_reload_sync_and_rollback(
        tmp_path: Path, airlock_root: Path, backend: str) -> None:
    """The config writers of each path, in the order they run, without loading the backend (neither
    backend runs on this CPU-only host): the stored settings are what every config.pbtxt says."""
    name = f"st_{backend}"
    model = add_model(airlock_root, name, current="1.0.0")
    triton = tmp_path / "triton"
    configure(airlock_root, name, LLM_SETTINGS[backend])
    # install: serve generate (the role's main)
    report = generate(airlock_root, triton, models=[name])
    assert report.models[name]["backend"] == backend
    entry = TritonModel(triton / name)
    _assert_llm_config(entry, backend, [1])

    # update: serve reload builds its entry from the stored settings (candidate, promote, retire)
    reloader = Reloader(TritonClient("http://127.0.0.1:9"), triton)
    live = reloader.entry(name, model / "1.1.0")
    assert live.options == SettingsStore(airlock_root).load(name)
    number = live.ensure_version("1.1.0", model / "1.1.0")
    cand = reloader._candidate(live, number)
    cfg = validate_config(cand.config_path.read_text(), name=cand.name, model_dir=cand.root)
    assert cfg.backend == backend and cfg.instance_group[0].count == LLM_SETTINGS[backend]["instance_count"]
    reloader._drop_candidate(cand)
    live.write_config([1, number])  # promote
    _assert_llm_config(live, backend, [1, number])
    live.write_config([number])  # retire
    _assert_llm_config(live, backend, [number])

    # rollback.yml -> triton_models sync: serve generate, then serve reload to `current` (1.0.0)
    _set_current(airlock_root, name, "1.0.0")
    again = generate(airlock_root, triton, models=[name])
    assert not again.changed, again.models
    back = Reloader(TritonClient("http://127.0.0.1:9"), triton).entry(name, model / "1.0.0")
    back.write_config([1])
    _assert_llm_config(back, backend, [1])

    # the CLI reload reads the same store: with Triton down it fails cleanly, nothing rewritten
    text = entry.config_path.read_bytes()
    down = _airlock("serve", "reload", name, "--root", str(airlock_root), "--triton-repo", str(triton),
                    "--version", "1.1.0", "--url", "http://127.0.0.1:9", "--json")
    assert down.returncode == 50 and entry.config_path.read_bytes() == text


def test_changed_settings_reach_the_server_through_reload_and_rollback(triton, airlock_root: Path,
                                                                      goldens: dict) -> None:
    """Python backend on the real tritonserver: instance count, max batch size and dynamic batching
    from the store are what Triton loaded, through promote, a rollback to 1.0.0 and a settings change."""
    name = "st_py"
    model = add_model(airlock_root, name, current="1.0.0")
    configure(airlock_root, name, {"instance_count": 2, "max_batch_size": 8, "dynamic_batching": True,
                                   "max_queue_delay_us": 500})
    generate(airlock_root, triton.cfg.model_repository, models=[name])
    client = triton.client()
    client.load(name)
    client.wait_ready(name, 1)

    def loaded_config() -> tuple[int, int, int, int]:
        cfg = client.model_config(name)
        return (cfg["max_batch_size"], cfg["instance_group"][0]["count"],
                int(cfg.get("dynamic_batching", {}).get("max_queue_delay_microseconds", -1)),
                int(client.infer(name, {"INPUT_IDS": ids()}).model_version or 0))

    assert loaded_config() == (8, 2, 500, 1)
    reloader = Reloader(client, triton.cfg.model_repository)
    up = reloader.reload(name, "1.1.0", model / "1.1.0", goldens["1.1.0"])
    assert up.status == "promoted", up.error
    assert loaded_config() == (8, 2, 500, 2)
    _set_current(airlock_root, name, "1.0.0")  # a rollback moved current back; sync reloads to it
    down = reloader.reload(name, "1.0.0", model / "1.0.0", goldens["1.0.0"])
    assert down.status == "promoted", down.error
    assert loaded_config() == (8, 2, 500, 1)
    # new settings, same version: reloaded in place
    configure(airlock_root, name, {"instance_count": 1, "max_batch_size": 0, "dynamic_batching": False,
                                   "max_queue_delay_us": 0}, replace_all=True)
    same = reloader.reload(name, "1.0.0", model / "1.0.0", goldens["1.0.0"])
    assert same.status == "reconfigured" and same.ok, same.error
    cfg = client.model_config(name)
    assert cfg["instance_group"][0]["count"] == 1 and cfg.get("max_batch_size", 0) == 0
    assert reloader.reload(name, "1.0.0", model / "1.0.0", goldens["1.0.0"]).status == "unchanged"
    client.unload(name)


@pytest.fixture
def encrypted_version(airlock_root: Path, tmp_path: Path) -> Path:
    """Model st_enc: 1.0.0 plaintext, 1.1.0 with model.safetensors stored encrypted (real AES-GCM
    envelope, development key file provider)."""
    from airlock.crypto import ProviderRegistry, encrypt_file

    model = add_model(airlock_root, "st_enc", current="1.0.0")
    vdir = model / "1.1.0"
    if not (vdir / "model.safetensors").read_bytes().startswith(b"AIRLKENC"):
        conf = tmp_path / "keys.yaml"
        conf.write_text(yaml.safe_dump({"providers": {"dev": {"type": "keyfile", "dir": str(tmp_path / "k"),
                                                              "allow_development_keyfile": True}}}))
        provider = ProviderRegistry.load(conf).get("dev")
        provider.generate("kek")
        plain = vdir / "model.safetensors"
        enc = tmp_path / "model.safetensors.enc"
        encrypt_file(plain, enc, provider, "kek")
        plain.unlink()  # a hard link into the shared store: replace the name, not the bytes
        enc.rename(plain)
    return model


def test_an_encrypted_version_is_never_handed_to_triton(triton, airlock_root: Path, tmp_path: Path,
                                                        encrypted_version: Path, goldens: dict) -> None:
    model, triton_repo = encrypted_version, triton.cfg.model_repository
    generate(airlock_root, triton_repo, models=["st_enc"])
    client = triton.client()
    client.load("st_enc")
    client.wait_ready("st_enc", 1)
    entry = TritonModel(triton_repo / "st_enc")
    before = sorted(p.name for p in entry.root.iterdir())

    with pytest.raises(EncryptedVersionError, match=r"st_enc 1.1.0: model.safetensors is stored encrypted"):
        Reloader(client, triton_repo).reload("st_enc", "1.1.0", model / "1.1.0", goldens["1.1.0"])
    assert sorted(p.name for p in entry.root.iterdir()) == before, "no version directory for ciphertext"
    assert client.loaded_versions("st_enc") == {"1": "READY"} and entry.served() == [1]

    _set_current(airlock_root, "st_enc", "1.1.0")
    fresh = tmp_path / "fresh"
    gen = _airlock("serve", "generate", "--root", str(airlock_root), "--triton-repo", str(fresh),
                   "-m", "st_enc")
    assert gen.returncode == 52, gen.stdout + gen.stderr
    assert "[encrypted-version]" in gen.stderr and "docs/security.md" in gen.stderr
    assert "Traceback" not in gen.stderr and not (fresh / "st_enc").exists()
    _set_current(airlock_root, "st_enc", "1.0.0")
    client.unload("st_enc")


def test_the_runtime_dependencies_carry_what_airlock_serve_imports() -> None:
    """tritonclient's GRPC pieces (config schema, model control) are runtime dependencies, not test
    extras, so a wheelhouse built from Airlock's own requirements can run `airlock serve generate`."""
    import importlib.metadata
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    runtime = {Requirement(r).name: Requirement(r) for r in project["dependencies"]}
    assert "tritonclient" in runtime and "grpc" in runtime["tritonclient"].extras
    grpc_extra = [Requirement(r) for r in importlib.metadata.requires("tritonclient") or []
                  if "extra == 'grpc'" in r]
    assert {"grpcio", "protobuf"} <= {r.name for r in grpc_extra}  # model_config_pb2, the GRPC client
    assert validate_config(render_config("m", [1], ModelOptions(backend="vllm")), name="m").backend == "vllm"
