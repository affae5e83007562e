"""The warm tier on real CephFS (a single-node Ceph started here: mon, memstore OSD, MDS, mgr;
mounted with ceph-fuse, as roles/ceph_client does on this kernel): demote to it, a kill -9 after the
copy was renamed into place on CephFS and before the catalog commit, recovery, prune demoting to it
and activate promoting back, every copy checked against the hashes."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from airlock.repo import Repository, tier
from tests.provision.ceph_cluster import running
from tests.repo.conftest import Versions, cli, hashes


@pytest.fixture(scope="module")
def cephfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    mnt = tmp_path_factory.mktemp("cephfs")
    with running(tmp_path_factory.mktemp("ceph"), [mnt]) as cluster:
        subprocess.run(["ceph-fuse", "-c", str(cluster.conf), "-n", "client.admin", str(mnt)], check=True,
                       capture_output=True, timeout=120)
        deadline = time.monotonic() + 60
        while subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "--mountpoint", str(mnt)], capture_output=True,
                             text=True, check=False).stdout.strip() != "fuse.ceph-fuse":
            assert time.monotonic() < deadline, "CephFS did not mount"
            time.sleep(0.5)
        yield mnt


@pytest.mark.slow
def test_warm_tier_on_cephfs(cephfs: Path, tmp_path: Path, versions: Versions) -> None:
    warm = cephfs / "appliance-1"  # one directory per appliance on the site's share
    warm.mkdir()
    repo = Repository(tmp_path / "root", lock_timeout=5)
    for v in ("1.0.0", "1.1.0", "1.2.0"):
        repo.install_version("m", v, versions.src[v])
    tier.configure(repo, dirs={"warm": warm})
    status = tier.status(repo)["tiers"]["warm"]
    assert status["available"] and status["total"] > 0 and status["free"] > 0  # CephFS's statfs (the mgr)
    repo.close()

    r = cli(repo.root, "tier", "demote", "m", "1.0.0", fault="tier.demote.after-rename")
    assert r.returncode == -9, r.stderr
    assert hashes(warm / "m" / "1.0.0") == hashes(versions.src["1.0.0"])  # complete on CephFS, not recorded
    repo.recover_now()
    assert not (warm / "m" / "1.0.0").exists() and repo.layout.version_dir("m", "1.0.0").is_dir()
    assert repo.catalog().version("m", "1.0.0").location == "hot"  # type: ignore[union-attr]

    plan = repo.prune("m", keep=2)  # with a warm tier: demoted, not deleted
    assert plan.remove_versions == ["1.0.0"]
    assert hashes(warm / "m" / "1.0.0") == hashes(versions.src["1.0.0"])
    assert not repo.layout.version_dir("m", "1.0.0").exists()
    assert sorted(os.listdir(warm / "m")) == ["1.0.0"]
    checked = repo.verify("m", "1.0.0")  # re-hashed on CephFS, where it lives (modes kept there too)
    assert checked["ok"] and checked["versions"][0]["path"] == str(warm / "m" / "1.0.0"), checked["drift"]

    repo.activate("m", "1.0.0")  # promoted from CephFS (verified), then activated
    assert os.readlink(repo.layout.current("m")) == "1.0.0"
    assert hashes(repo.layout.version_dir("m", "1.0.0")) == hashes(versions.src["1.0.0"])
    assert not (warm / "m" / "1.0.0").exists()
    row = repo.catalog().version("m", "1.0.0")
    assert row is not None and row.location == "hot" and row.state == "active"
    assert repo.verify("m")["ok"] is True and repo.audit_verify().ok
    repo.close()
