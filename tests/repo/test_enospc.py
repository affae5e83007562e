"""Disk space, for real: a 16 MiB ext4 filesystem on a loop device (root only; falls back to a
size-limited tmpfs where loop mounts are not allowed). The preflight refuses cleanly with both
numbers; with the preflight bypassed, the real ENOSPC mid-write leaves the repository consistent."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from airlock.errors import DiskSpaceError
from airlock.fsutil import free_bytes
from airlock.repo import Repository
from tests.repo.conftest import Versions, assert_same_tree, cli, hashes, leftovers
from tests.repo.models import make_model
from tests.support import require_root, require_tool

BIG = 20 * 1024 * 1024


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    require_root("mounting a small filesystem for real ENOSPC")
    require_tool("mkfs.ext4", "apt-get install e2fsprogs")
    img, mnt = tmp_path / "fs.img", tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["truncate", "-s", "16M", str(img)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True)
    loop = subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], capture_output=True, text=True)
    if loop.returncode != 0:  # no loop devices here: a tmpfs with a hard size limit is just as real
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture(scope="module")
def big_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("big") / "2.0.0", extra_bytes=BIG, seed=9)


def test_preflight_refuses_with_both_numbers(small_fs: Path, versions: Versions, big_model: Path) -> None:
    repo = Repository(small_fs / "root")
    repo.install_version("m", "1.0.0", versions.src["1.0.0"])
    snap = hashes(repo.layout.repo / "m")
    plan = repo.plan_install("m", "2.0.0", big_model)
    with pytest.raises(DiskSpaceError) as err:
        repo.install_version("m", "2.0.0", big_model)
    msg = str(err.value)
    assert f"needs {plan.bytes_needed} bytes" in msg and "bytes are free" in msg
    free = int(msg.split("only ")[1].split(" bytes")[0])
    assert 0 < free < plan.bytes_needed
    assert hashes(repo.layout.repo / "m") == snap and leftovers(repo.root) == []
    r = cli(repo.root, "model", "install", "m", "2.0.0", str(big_model))
    assert r.returncode == 31 and "needs" in r.stderr and "free" in r.stderr
    repo.close()


def test_enospc_mid_write_leaves_repository_consistent(small_fs: Path, versions: Versions, big_model: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    repo = Repository(small_fs / "root")
    repo.install_version("m", "1.0.0", versions.src["1.0.0"])
    free_before = free_bytes(small_fs)
    monkeypatch.setenv("AIRLOCK_TEST_SKIP_PREFLIGHT", "1")
    with pytest.raises(DiskSpaceError, match="no space left"):
        repo.install_version("m", "2.0.0", big_model)
    monkeypatch.delenv("AIRLOCK_TEST_SKIP_PREFLIGHT")
    assert os.readlink(repo.layout.current("m")) == "1.0.0"
    assert_same_tree(repo.layout.version_dir("m", "1.0.0"), versions.src["1.0.0"])
    assert not repo.layout.version_dir("m", "2.0.0").exists() and leftovers(repo.root) == []
    assert repo.catalog().version("m", "2.0.0") is None
    assert free_bytes(small_fs) >= free_before - 64 * 1024  # the partial copy was removed
    assert repo.verify("m")["ok"]
    repo.audit_verify()
    assert repo.history("m")[-1]["result"] == "failed"  # verify records nothing
    # and the repository still works: a small update goes through
    repo.update_from_delta("m", versions.deltas[("1.0.0", "1.1.0")])
    assert os.readlink(repo.layout.current("m")) == "1.1.0"
    repo.close()


def test_delta_update_enospc_preflight_and_mid_write(small_fs: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from airlock.delta import make_delta

    old = make_model(tmp_path / "3.0.0", extra_bytes=5 * 1024 * 1024, seed=20)
    new = make_model(tmp_path / "3.1.0", extra_bytes=5 * 1024 * 1024, seed=21)  # extra tensor all new
    delta = tmp_path / "m-3.0.0-3.1.0.aldelta"
    make_delta(old, new, delta, from_version="3.0.0", to_version="3.1.0")
    repo = Repository(small_fs / "root")
    repo.install_version("m", "3.0.0", old)
    plan = repo.plan_update("m", delta)
    assert plan.bytes_needed > free_bytes(small_fs)
    with pytest.raises(DiskSpaceError, match=f"needs {plan.bytes_needed} bytes"):
        repo.update_from_delta("m", delta)
    assert not repo.layout.model_packages("m").exists() or not any(repo.layout.model_packages("m").iterdir())
    monkeypatch.setenv("AIRLOCK_TEST_SKIP_PREFLIGHT", "1")
    with pytest.raises(DiskSpaceError, match="no space left"):
        repo.update_from_delta("m", delta)
    monkeypatch.delenv("AIRLOCK_TEST_SKIP_PREFLIGHT")
    assert os.readlink(repo.layout.current("m")) == "3.0.0"
    assert_same_tree(repo.layout.version_dir("m", "3.0.0"), old)
    assert not repo.layout.version_dir("m", "3.1.0").exists()
    repo.prune("m")  # any mutating run recovers first; nothing to prune
    assert leftovers(repo.root) == [] and repo.verify("m")["ok"]
    repo.audit_verify()
    repo.close()
