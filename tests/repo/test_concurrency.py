"""Two operations on one repository never interleave: the second waits for the lock or, past its
timeout, fails clearly (exit 32) naming the holder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from airlock.repo import Repository
from tests.repo.conftest import Versions, cli

CLI = [sys.executable, "-c", "from airlock.cli import main; main()"]
HOLDER = """
import sys
from pathlib import Path
from airlock.repo.lock import repo_lock
with repo_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    sys.stdin.read()  # hold until the test closes our stdin
"""


def _hold(lock: Path) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "locked"
    return p


def test_second_operation_fails_clearly_after_timeout(tmp_path: Path, versions: Versions) -> None:
    repo = Repository(tmp_path / "root")
    repo.install_version("m", "1.0.0", versions.src["1.0.0"])
    holder = _hold(repo.layout.lock)
    try:
        r = cli(repo.root, "model", "install", "m", "1.1.0", str(versions.src["1.1.0"]),
                "--lock-timeout", "0.3")
        assert r.returncode == 32
        assert "holds the repository lock" in r.stderr and f"pid {holder.pid}" in r.stderr
        assert not repo.layout.version_dir("m", "1.1.0").exists()
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait()
    repo.close()


def test_second_operation_waits_then_runs(tmp_path: Path, versions: Versions) -> None:
    repo = Repository(tmp_path / "root")
    repo.install_version("m", "1.0.0", versions.src["1.0.0"])
    holder = _hold(repo.layout.lock)
    env = {**os.environ, "AIRLOCK_ROOT": str(repo.root)}
    waiter = subprocess.Popen([*CLI, "model", "install", "m", "1.1.0", str(versions.src["1.1.0"]),
                               "--lock-timeout", "120"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # while the lock is held the waiter cannot have written its version
    assert waiter.poll() is None and not repo.layout.version_dir("m", "1.1.0").exists()
    assert holder.stdin is not None
    holder.stdin.close()
    holder.wait()
    _out, err = waiter.communicate(timeout=120)
    assert waiter.returncode == 0, err
    assert os.readlink(repo.layout.current("m")) == "1.1.0"
    repo.close()


def test_parallel_installs_of_two_models_both_land(tmp_path: Path, versions: Versions) -> None:
    root = tmp_path / "root"
    env = {**os.environ, "AIRLOCK_ROOT": str(root)}
    procs = [subprocess.Popen([*CLI, "model", "install", name, "1.0.0", str(versions.src["1.0.0"]),
                               "--lock-timeout", "120"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in ("a", "b")]
    for p in procs:
        _out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    repo = Repository(root)
    assert set(repo.state()["models"]) == {"a", "b"}
    assert repo.verify("a")["ok"] and repo.verify("b")["ok"]
    assert repo.audit_verify().records == 4  # 2 x (install, activate); verify writes nothing
    repo.close()


def test_processes_opening_a_fresh_catalog_at_once_all_migrate_it(tmp_path: Path) -> None:
    """Migrations re-check the schema under the write lock: a second opener must not re-run one."""
    code = ("import sys; from pathlib import Path; from airlock.repo.catalog import Catalog; "
            "c = Catalog(Path(sys.argv[1])); print(c.schema_version()); c.close()")
    for trial in range(3):
        db = tmp_path / f"catalog-{trial}.db"
        procs = [subprocess.Popen([sys.executable, "-c", code, str(db)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(6)]
        results = [p.communicate(timeout=60) for p in procs]
        assert all(p.returncode == 0 for p in procs), [err for _out, err in results]
        assert len({out.strip() for out, _err in results}) == 1
