"""Triton as a dedicated user distinct from the repository owner (roles/triton_server): a real
tritonserver started as an unprivileged uid that holds only CAP_DAC_READ_SEARCH (as the systemd unit's
User= and AmbientCapabilities=) reads the 0700 version directories and serves the model; that same
identity cannot write a byte in the Airlock repository or the generated Triton model repository."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from airlock.errors import AirlockError
from airlock.serving.golden import compare, parse_golden
from airlock.serving.server import ServerConfig, TritonServer, as_user
from airlock.serving.triton_repo import generate
from tests.serving.conftest import _require_triton, add_model, ids
from tests.support import require_root

UID = "64123"  # no passwd entry: uid = gid, no groups, no home
PROBE = """
import json, os, sys
out = {}
for name, fn in {
    "append-weights": lambda: open(sys.argv[1], "ab"),
    "create-in-version": lambda: open(os.path.join(os.path.dirname(sys.argv[1]), "x"), "xb"),
    "rename-current": lambda: os.rename(sys.argv[2], sys.argv[2] + ".x"),
    "write-config": lambda: open(sys.argv[3], "ab"),
    "create-in-triton-repo": lambda: open(os.path.join(os.path.dirname(sys.argv[3]), "y"), "xb"),
}.items():
    try:
        fn()
        out[name] = "written"
    except PermissionError:
        out[name] = "refused"
out["read-weights"] = len(open(sys.argv[1], "rb").read(16))
print(json.dumps(out))
"""


def test_tritonserver_as_a_dedicated_user(airlock_root: Path, goldens: dict) -> None:
    require_root("setpriv to another uid (the unit's User=)")
    _require_triton()
    name = "srv_dedicated_user"
    model = add_model(airlock_root, name)
    for version in ("1.0.0", "1.1.0"):
        (model / version).chmod(0o700)  # as the repository keeps them: owner only
    # Triton's own model repository: readable by plain permissions (roles/triton_server: owner the
    # repository's user, group Triton's, 0750; here 0755 under a world-traversable directory), as
    # tritonserver checks paths with access(2), which ignores capabilities for a non-root uid
    base = Path(tempfile.mkdtemp(prefix="airlock-triton-user-", dir="/tmp"))
    base.chmod(0o755)
    triton_repo = base / "models"
    triton_repo.mkdir(mode=0o755)
    generate(airlock_root, triton_repo, models=[name])
    server = TritonServer(ServerConfig(triton_repo, base / "work", user=UID))
    try:
        _serve_and_probe(server, airlock_root, name, goldens)
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def _serve_and_probe(server: TritonServer, airlock_root: Path, name: str, goldens: dict) -> None:
    model = airlock_root / "model_repo" / name
    triton_repo = server.cfg.model_repository
    with server:
        assert server.proc is not None
        status = Path(f"/proc/{server.proc.pid}/status").read_text()
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        assert set(uids) == {UID}
        caps = {k: v for k, _, v in (line.partition(":\t") for line in status.splitlines())}
        assert int(caps["CapEff"], 16) == 1 << 2  # CAP_DAC_READ_SEARCH only
        client = server.client()
        client.load(name)
        client.wait_ready(name, 1)
        result = client.infer(name, {"INPUT_IDS": ids()})
        assert compare(parse_golden(goldens["1.0.0"]), result.outputs).ok
    weights = sorted((model / "1.0.0").rglob("*.safetensors"))[0]
    probe = subprocess.run(as_user(["/usr/bin/python3", "-c", PROBE, str(weights), str(model / "current"),
                                    str(triton_repo / name / "config.pbtxt")], UID),
                           capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    got = json.loads(probe.stdout)
    assert got.pop("read-weights") == 16
    assert set(got.values()) == {"refused"}, got


def test_root_or_unknown_user_is_refused() -> None:
    for user in ("0", "root", "no-such-user-airlock"):
        with pytest.raises(AirlockError, match="user"):
            as_user(["true"], user)
