"""roles/ceph_client against a real single-node Ceph started here (mon + memstore OSD + MDS): the role
writes ceph.conf, keyring and the fuse.ceph fstab entry, and mounts CephFS with ceph-fuse (this kernel
has no ceph module, so the kernel client cannot be shown here). Data written through the mount survives
an unmount and the role's remount; a second run while mounted changes nothing."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from airlock.fixtures import generate_synthetic
from airlock.repo import Repository
from tests.provision.ansible_run import run_role
from tests.provision.ceph_cluster import CephCluster, running

MOUNTS: list[Path] = []


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CephCluster]:
    with running(tmp_path_factory.mktemp("ceph"), MOUNTS) as c:
        yield c


def mounted_type(path: Path) -> str:
    proc = subprocess.run(
        ["findmnt", "-n", "-o", "FSTYPE", "--mountpoint", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout.strip()


@pytest.mark.slow
def test_role_mounts_real_cephfs_idempotently(cluster: CephCluster, tmp_path: Path) -> None:
    t = tmp_path / "target"
    mnt = t / "warm"
    MOUNTS.append(mnt)
    v = {
        "ceph_client_install": False,
        "ceph_client_fsid": cluster.fsid,
        "ceph_client_mon_hosts": [cluster.mon_host],
        "ceph_client_key": cluster.client_key,
        "ceph_client_conf_dir": str(t / "etc/ceph"),
        "ceph_client_conf_extra": {
            "run_dir": str(t / "run"),
            "admin_socket": str(t / "run/$name.asok"),
            "log_file": str(t / "$name.log"),
        },
        "ceph_client_mount_type": "fuse",
        "ceph_client_fs_path": "/",
        "ceph_client_mount_point": str(mnt),
        "ceph_client_fstab": str(t / "fstab"),
    }
    (t / "run").mkdir(parents=True)
    first = run_role(tmp_path, "ceph_client", v)
    assert first.rc == 0, first.output[-3000:]
    assert mounted_type(mnt) == "fuse.ceph-fuse"
    payload = os.urandom(1 << 20)
    (mnt / "airlock-warm-tier.bin").write_bytes(payload)
    again = run_role(tmp_path, "ceph_client", v)
    assert again.rc == 0 and again.recap["changed"] == 0, again.output[-3000:]

    subprocess.run(["umount", str(mnt)], check=True)
    assert mounted_type(mnt) == ""
    remount = run_role(tmp_path, "ceph_client", v)
    assert remount.rc == 0 and remount.recap["changed"] == 1, remount.output[-3000:]
    got = (mnt / "airlock-warm-tier.bin").read_bytes()
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
    assert cluster.client_key not in first.output + again.output + remount.output

    # the model repository on the warm tier: install, activate and verify a real safetensors model there
    src = generate_synthetic(tmp_path / "model", size_bytes=4 << 20, seed=3)
    repo = Repository(mnt / "repo")
    repo.install_version("synthetic", "1.0.0", src)
    report = repo.verify("synthetic", "1.0.0")
    assert report["ok"] is True, report
    assert (mnt / "repo").is_dir() and any((mnt / "repo").rglob("*.safetensors"))
