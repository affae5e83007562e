"""How often an install reads each byte of the bundle (issue 19): every read(2), pread64(2), readv(2),
sendfile(2) and copy_file_range(2) of the real CLI and of the real Ansible modules, traced with strace
and charged to the file it came from. The target (docs/architecture.md, "Install path"): the payloads
of a full bundle are read twice (stage hash, then the install's hashed copy), a delta twice (stage
hash, then apply) -- on either path.

Before issue 19 (measured at 3767ba5 with this test): CLI full 2.0, delta 5.0; Ansible full 3.0, delta
6.0 (the module verified the staged copy again; keeping the delta hashed it and copied it; apply
checked every record in a pre-pass and then read them again)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from airlock.bundle import build_bundle
from tests.gpg import Keys
from tests.repo.models import make_model
from tests.support import require_tool

REPO = Path(os.environ.get("AIRLOCK_READ_COUNT_TREE") or Path(__file__).resolve().parents[2])
CALLS = "read,pread64,readv,preadv,preadv2,sendfile,copy_file_range"
DELTA = "m-1.0.0-1.1.0.aldelta"
EXTRA = 1 << 20  # a 1 MiB tensor that differs between the versions: the delta is mostly record bytes
_DONE = re.compile(r"^(\d+)\s+(\w+)\((\d+)<([^>]*)>(?:, (\d+)<([^>]*)>)?.*\)\s+=\s+(\d+)")
_START = re.compile(r"^(\d+)\s+(\w+)\((\d+)<([^>]*)>(?:, (\d+)<([^>]*)>)?.*<unfinished \.\.\.>")
_RESUMED = re.compile(r"^(\d+)\s+<\.\.\. (\w+) resumed>.*\)\s+=\s+(\d+)")


def _source(call: str, first: str, second: str | None) -> str:
    return second or first if call == "sendfile" else first  # sendfile(out, in, ...)


def traced(cmd: list[str], env: dict[str, str], log: Path) -> tuple[subprocess.CompletedProcess[str],
                                                                     dict[str, int]]:
    """Run ``cmd`` (children followed) under strace; bytes read per file path."""
    strace = ["strace", "-f", "--seccomp-bpf", "-qq", "-y", "-s", "0", "-e", f"trace={CALLS}",
              "-e", "signal=none", "-o", str(log)]
    r = subprocess.run([*strace, *cmd], env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    per_path: dict[str, int] = defaultdict(int)
    pending: dict[str, str] = {}
    for line in log.read_text(errors="replace").splitlines():
        if m := _DONE.match(line):
            per_path[_source(m[2], m[4], m[6])] += int(m[7])
        elif m := _START.match(line):
            pending[m[1]] = _source(m[2], m[4], m[6])
        elif (m := _RESUMED.match(line)) and m[1] in pending:
            per_path[pending.pop(m[1])] += int(m[3])
    log.unlink()
    return r, per_path


@dataclass
class Counts:
    payload_bytes: int = 0  # read from the full bundle's payload files (stick, staged copy)
    delta_bytes: int = 0  # read from any copy of the delta (stick, staged, kept)

    def add(self, per_path: dict[str, int], payload_names: set[str]) -> None:
        for path, n in per_path.items():
            name = Path(path).name
            if name == DELTA:
                self.delta_bytes += n
            elif (("/bundles/full/" in path or "/stage" in path)
                  and any(path.endswith("/" + rel) for rel in payload_names)):
                self.payload_bytes += n


@dataclass
class World:
    full: Path
    delta: Path
    full_payload: set[str]
    full_bytes: int
    delta_bytes: int
    keyring: Path
    fpr: str
    base: Path


@pytest.fixture(scope="module")
def world(keys: Keys) -> World:
    require_tool("strace", "apt-get install strace")
    from airlock.delta import make_delta

    base = Path(tempfile.mkdtemp(prefix="airlock-reads-"))
    v1 = make_model(base / "src/1.0.0", extra_bytes=EXTRA)
    v2 = make_model(base / "src/1.1.0", change_layer=1, seed=3, extra_bytes=EXTRA)
    make_delta(v1, v2, base / "src" / DELTA, from_version="1.0.0", to_version="1.1.0")
    out = {}
    for name, seq, model in (
            ("full", 5, {"name": "m", "version": "1.0.0", "path": str(v1)}),
            ("delta", 6, {"name": "m", "version": "1.1.0", "from_version": "1.0.0",
                          "delta_file": str(base / "src" / DELTA)})):
        spec = base / f"{name}.yml"
        spec.write_text(yaml.safe_dump({"compatible": "appliance-test", "sequence": seq, "block_size": 65536,
                                        "models": [model]}))
        out[name] = base / "bundles" / name
        build_bundle(spec, out[name], signer=keys.fpr["signer"], gnupghome=keys.home)
    m = json.loads((out["full"] / "MANIFEST.json").read_bytes())
    dm = json.loads((out["delta"] / "MANIFEST.json").read_bytes())
    return World(out["full"], out["delta"], set(m["files"]), sum(f["size"] for f in m["files"].values()),
                 sum(f["size"] for f in dm["files"].values()), keys.keyring("signer"), keys.fpr["signer"],
                 base)


def _env(root: Path) -> dict[str, str]:
    e = {**os.environ, "AIRLOCK_ROOT": str(root), "PYTHONPATH": str(REPO),
         "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    e.pop("AIRLOCK_FAULT", None)
    return e


def _ratio(n: int, size: int) -> float:
    return round(n / size, 1)


def cli_counts(w: World, tmp: Path) -> tuple[float, float]:
    root = tmp / "cli-root"
    counts = Counts()
    for bundle in (w.full, w.delta):
        cmd = [sys.executable, "-c", "from airlock.cli import main; main()", "model", "install-bundle",
               str(bundle), "--trust", w.fpr, "--keyring", str(w.keyring), "--json"]
        r, per_path = traced(cmd, _env(root), tmp / "strace.log")
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        counts.add(per_path, w.full_payload)
    assert os.readlink(root / "model_repo/m/current") == "1.1.0"
    return _ratio(counts.payload_bytes, w.full_bytes), _ratio(counts.delta_bytes, w.delta_bytes)


def _module(name: str, args: dict[str, object], root: Path, tmp: Path, counts: Counts,
            payload: set[str]) -> dict[str, object]:
    tree = tmp / "tree"
    cmd = [str(REPO / ".venv/bin/ansible"), "localhost", "-c", "local", "-i", "localhost,",
           "-e", f"ansible_python_interpreter={REPO / '.venv/bin/python'}",
           "-m", f"airlock.appliance.{name}", "-a", json.dumps(args), "--tree", str(tree)]
    r, per_path = traced(cmd, _env(root), tmp / "strace.log")
    result: dict[str, object] = json.loads((tree / "localhost").read_text())
    assert r.returncode == 0, result
    counts.add(per_path, payload)
    return result


def ansible_counts(w: World, tmp: Path) -> tuple[float, float]:
    """The role's install step (roles/model_update/tasks/main.yml): stage with airlock_bundle, then
    airlock_model installs the bundle through that stage (reopened, not copied again)."""
    root = tmp / "ansible-root"
    counts = Counts()
    trust = {"trust": [w.fpr], "keyring": str(w.keyring), "root": str(root)}
    for bundle in (w.full, w.delta):
        staged = _module("airlock_bundle", {"src": str(bundle), "dest": str(tmp / "stage" / bundle.name),
                                            **trust}, root, tmp, counts, w.full_payload)
        _module("airlock_model", {"bundle": str(bundle), "stage_dir": staged["staged_path"],
                                  "state": "active", **trust}, root, tmp, counts, w.full_payload)
        assert not Path(str(staged["staged_path"])).exists()  # removed once installed
    assert os.readlink(root / "model_repo/m/current") == "1.1.0"
    return _ratio(counts.payload_bytes, w.full_bytes), _ratio(counts.delta_bytes, w.delta_bytes)


def test_cli_reads_each_byte_twice(world: World, tmp_path: Path) -> None:
    full, delta = cli_counts(world, tmp_path)
    print(f"CLI: full payloads read {full}x, delta read {delta}x")
    assert (full, delta) == (2.0, 2.0)


def test_ansible_reads_each_byte_twice(world: World, tmp_path: Path) -> None:
    full, delta = ansible_counts(world, tmp_path)
    print(f"Ansible: full payloads read {full}x, delta read {delta}x")
    assert (full, delta) == (2.0, 2.0)
