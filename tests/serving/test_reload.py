"""Hot reload on a real tritonserver while a client keeps sending requests."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from airlock.errors import LockBusyError
from airlock.serving.client import TritonClient
from airlock.serving.errors import ServingError
from airlock.serving.golden import compare, parse_golden
from airlock.serving.reload import CANDIDATE_SUFFIX, Reloader
from airlock.serving.triton_repo import TritonModel, airlock_models, generate
from tests.serving.conftest import add_model, ids


@dataclass
class Traffic:
    """A client thread sending unversioned requests until stopped (bounded in count)."""

    url: str
    model: str
    limit: int = 5000
    answers: list[tuple[str | None, bytes]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    started: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        client = TritonClient(self.url, timeout=30)
        for _ in range(self.limit):
            if self.stop.is_set():
                return
            try:
                r = client.infer(self.model, {"INPUT_IDS": ids()})
                self.answers.append((r.model_version, r["EMBEDDING"].tobytes()))
            except ServingError as exc:
                self.errors.append(str(exc))
            if len(self.answers) >= 5:
                self.started.set()

    def __enter__(self) -> Traffic:
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        assert self.started.wait(60), f"traffic did not start: {self.errors[:3]}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)


def _deploy_v10(triton, airlock_root: Path, name: str) -> tuple[TritonClient, Path, bytes]:
    model = add_model(airlock_root, name, current="1.0.0")
    generate(airlock_root, triton.cfg.model_repository, models=[name])
    client = triton.client()
    client.load(name)
    client.wait_ready(name, 1)
    return client, model, client.infer(name, {"INPUT_IDS": ids()})["EMBEDDING"].tobytes()


def test_hot_reload_drops_no_request_and_serves_v11(triton, airlock_root: Path, goldens: dict) -> None:
    client, model, v10 = _deploy_v10(triton, airlock_root, "rl_ok")
    with Traffic(triton.url, "rl_ok") as traffic:
        result = Reloader(client, triton.cfg.model_repository).reload(
            "rl_ok", "1.1.0", model / "1.1.0", goldens["1.1.0"])
        n_at_switch = len(traffic.answers)
        while len(traffic.answers) < n_at_switch + 5 and not traffic.errors:
            traffic.stop.wait(0.05)
    assert result.status == "promoted", result.error
    assert result.from_versions == ["1.0.0"] and result.triton_version == 2
    assert result.smoke and result.smoke["ok"]

    v11 = client.infer("rl_ok", {"INPUT_IDS": ids()})
    assert v11.model_version == "2"
    assert compare(parse_golden(goldens["1.1.0"]), v11.outputs).ok
    expected = {"1": v10, "2": v11["EMBEDDING"].tobytes()}
    assert expected["1"] != expected["2"]

    assert traffic.errors == [], f"{len(traffic.errors)} failed requests, first: {traffic.errors[:1]}"
    wrong = [(v, i) for i, (v, emb) in enumerate(traffic.answers) if expected.get(v or "") != emb]
    assert not wrong, f"responses not exactly v1.0's or v1.1's answer: {wrong[:5]}"
    versions_seen = [v for v, _ in traffic.answers]
    assert versions_seen[0] == "1" and versions_seen[-1] == "2"
    assert len(traffic.answers) > 10

    # only the new version is left, the candidate is gone, and the config says so
    assert client.loaded_versions("rl_ok") == {"2": "READY"}
    assert TritonModel(triton.cfg.model_repository / "rl_ok").served() == [2]
    assert not (triton.cfg.model_repository / f"rl_ok{CANDIDATE_SUFFIX}").exists()
    assert client.loaded_versions(f"rl_ok{CANDIDATE_SUFFIX}") == {}

    # reloading to the version already serving is a no-op that re-checks the smoke test
    again = Reloader(client, triton.cfg.model_repository).reload(
        "rl_ok", "1.1.0", model / "1.1.0", goldens["1.1.0"])
    assert again.status == "unchanged" and client.loaded_versions("rl_ok") == {"2": "READY"}
    client.unload("rl_ok")


def test_failed_smoke_test_keeps_v10_serving(triton, airlock_root: Path, goldens: dict) -> None:
    client, model, v10 = _deploy_v10(triton, airlock_root, "rl_bad")
    wrong = copy.deepcopy(goldens["1.1.0"])
    wrong["expected"]["EMBEDDING"][0][0] += 0.05  # one value off by far more than atol
    with Traffic(triton.url, "rl_bad") as traffic:
        result = Reloader(client, triton.cfg.model_repository).reload(
            "rl_bad", "1.1.0", model / "1.1.0", wrong)
    assert result.status == "failed" and not result.ok
    assert result.error and "smoke test failed" in result.error
    assert result.smoke and not result.smoke["ok"] and result.smoke["max_abs_err"] > 0.04

    # v1.0 kept serving throughout, and no client ever saw the unverified version
    assert traffic.errors == []
    assert {v for v, _ in traffic.answers} == {"1"}
    assert all(emb == v10 for _, emb in traffic.answers)
    assert client.loaded_versions("rl_bad") == {"1": "READY"}
    assert TritonModel(triton.cfg.model_repository / "rl_bad").served() == [1]
    assert client.infer("rl_bad", {"INPUT_IDS": ids()})["EMBEDDING"].tobytes() == v10
    assert not (triton.cfg.model_repository / f"rl_bad{CANDIDATE_SUFFIX}").exists()
    client.unload("rl_bad")


def _airlock(*args: str) -> subprocess.CompletedProcess[str]:
    cli = Path(sys.executable).with_name("airlock")
    return subprocess.run([str(cli), *args], capture_output=True, text=True, check=False,
                          env={**os.environ, "NO_COLOR": "1"}, timeout=300)


def test_cli_generate_reload_status_smoke(triton, airlock_root: Path, goldens: dict, tmp_path: Path) -> None:
    add_model(airlock_root, "rl_cli", current="1.0.0")
    repo, url = str(triton.cfg.model_repository), triton.url
    common = ["--url", url, "--triton-repo", repo]
    gen = _airlock("serve", "generate", "--root", str(airlock_root), "--triton-repo", repo, "-m", "rl_cli",
                   "--json")
    assert gen.returncode == 0, gen.stderr
    assert json.loads(gen.stdout)["models"]["rl_cli"]["served"] == [1]
    assert _airlock("serve", "load", "rl_cli", "--url", url).returncode == 0

    # golden carried in a (staged, verified) manifest's model entry
    manifest = tmp_path / "MANIFEST.json"
    manifest.write_text(json.dumps({"models": [{"name": "rl_cli", "version": "1.1.0",
                                                "golden": goldens["1.1.0"]}]}))
    (airlock_root / "model_repo" / "rl_cli" / "current").unlink()
    (airlock_root / "model_repo" / "rl_cli" / "current").symlink_to("1.1.0")
    rel = _airlock("serve", "reload", "rl_cli", "--root", str(airlock_root), *common,
                   "--grpc-url", triton.grpc_url, "--golden", str(manifest), "--json")
    assert rel.returncode == 0, rel.stdout + rel.stderr
    report = json.loads(rel.stdout)
    assert report["status"] == "promoted" and report["to_version"] == "1.1.0"

    st = _airlock("serve", "status", *common, "--json")
    assert st.returncode == 0
    row = json.loads(st.stdout)["models"]["rl_cli"]
    assert row["configured"] == [2] and row["loaded"] == {"2": "READY"}
    assert row["versions"] == {"1": "1.0.0", "2": "1.1.0"}

    golden_file = tmp_path / "golden.json"
    v10_dir = airlock_root / "model_repo" / "rl_cli" / "1.0.0"
    made = _airlock("serve", "golden", str(v10_dir), "-o", str(golden_file))
    assert made.returncode == 0 and json.loads(golden_file.read_text()) == goldens["1.0.0"]
    # v1.0's answers: v1.1 must fail them
    smoke = _airlock("serve", "smoke", "rl_cli", "--url", url, "--golden", str(golden_file))
    assert smoke.returncode == 51 and "differs from the golden output" in smoke.stderr
    assert _airlock("serve", "unload", "rl_cli", "--url", url).returncode == 0

    down = _airlock("serve", "status", "--url", "http://127.0.0.1:9", "--triton-repo", repo, "--json")
    assert down.returncode == 0 and json.loads(down.stdout)["live"] is False
    dead = _airlock("serve", "unload", "rl_cli", "--url", "http://127.0.0.1:9")
    assert dead.returncode == 50 and "unreachable" in dead.stderr


CRASH_CODE = """
import json, sys
from pathlib import Path
from airlock.serving.client import TritonClient
from airlock.serving.reload import Reloader
url, grpc, repo, model, path, golden = sys.argv[1:7]
Reloader(TritonClient(url, grpc_url=grpc), Path(repo)).reload(model, "1.1.0", Path(path),
                                                               json.loads(Path(golden).read_text()))
"""


def test_kill_during_reload_keeps_v10_serving_and_a_rerun_completes(triton, airlock_root: Path, goldens: dict,
                                                                    tmp_path: Path) -> None:
    name = "rl_crash"
    client, model, v10 = _deploy_v10(triton, airlock_root, name)
    golden = tmp_path / "golden.json"
    golden.write_text(json.dumps(goldens["1.1.0"]))
    # killed with the candidate loaded and tested, then (second try) right after config.pbtxt
    # names old + new but before Triton loaded it: each time v1.0 alone keeps serving
    for point in ("serving.reload.candidate_tested", "serving.reload.after_config"):
        proc = subprocess.run([sys.executable, "-c", CRASH_CODE, triton.url, triton.grpc_url,
                               str(triton.cfg.model_repository), name, str(model / "1.1.0"), str(golden)],
                              env={**os.environ, "AIRLOCK_FAULT": point}, capture_output=True, text=True,
                              timeout=300, check=False)
        assert proc.returncode == -9, proc.stderr
        assert client.loaded_versions(name) == {"1": "READY"}, point
        answer = client.infer(name, {"INPUT_IDS": ids()})
        assert answer.model_version == "1" and answer["EMBEDDING"].tobytes() == v10

    result = Reloader(client, triton.cfg.model_repository).reload(name, "1.1.0", model / "1.1.0",
                                                                   goldens["1.1.0"])
    assert result.status == "promoted", result.error
    assert client.loaded_versions(name) == {"2": "READY"}
    assert client.loaded_versions(name + CANDIDATE_SUFFIX) == {}
    assert not (triton.cfg.model_repository / (name + CANDIDATE_SUFFIX)).exists()
    assert not [e for e in client.index() if e.name.startswith(".")], "lock files are not models"
    client.unload(name)


def test_a_second_concurrent_reload_is_refused(triton, airlock_root: Path, goldens: dict) -> None:
    import fcntl

    client, model, _ = _deploy_v10(triton, airlock_root, "rl_busy")
    lock = triton.cfg.model_repository / ".rl_busy.reload.lock"
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(LockBusyError, match="another reload of rl_busy"):
            Reloader(client, triton.cfg.model_repository).reload("rl_busy", "1.1.0", model / "1.1.0",
                                                                 goldens["1.1.0"])
    assert client.loaded_versions("rl_busy") == {"1": "READY"}
    assert TritonModel(triton.cfg.model_repository / "rl_busy").served() == [1]
    client.unload("rl_busy")


def test_generate_and_reload_follow_a_real_airlock_repository(triton, minilm_pair, goldens: dict,
                                                              tmp_path: Path) -> None:
    """The layout contract with airlock.repo: install and activate there, serve here."""
    from airlock.repo import Repository

    repo = Repository(tmp_path / "appliance")
    repo.install_version("rl_repo", "1.0.0", minilm_pair.old, activate=True)
    repo.install_version("rl_repo", "1.1.0", minilm_pair.new, activate=False)
    generate(tmp_path / "appliance", triton.cfg.model_repository, models=["rl_repo"])
    client = triton.client()
    client.load("rl_repo")
    assert compare(parse_golden(goldens["1.0.0"]), client.infer("rl_repo", {"INPUT_IDS": ids()}).outputs).ok

    repo.activate("rl_repo", "1.1.0")
    version, path = airlock_models(tmp_path / "appliance")["rl_repo"]
    assert version == "1.1.0"
    result = Reloader(client, triton.cfg.model_repository).reload("rl_repo", version, path, goldens["1.1.0"])
    assert result.status == "promoted", result.error
    assert compare(parse_golden(goldens["1.1.0"]), client.infer("rl_repo", {"INPUT_IDS": ids()}).outputs).ok
    client.unload("rl_repo")
    repo.close()
