"""The site depot on real CephFS (the single-node Ceph the suite starts: mon, memstore OSD, MDS, mgr):
the field engineer imports a bundle with split payloads through one client's mount; two appliances,
each its own CephFS client (ceph-fuse, as the ceph_client role mounts it), stage from the depot at
the same time, every block checked; an appliance's interrupted stage resumes by block."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bundle.factory import BundleFactory, payload
from tests.depot.cli import airlock, import_, trust_args
from tests.gpg import Keys
from tests.provision.ceph_cluster import CephCluster, run, running

pytestmark = pytest.mark.timeout(600)
MOUNTS: list[Path] = []


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CephCluster]:
    with running(tmp_path_factory.mktemp("ceph"), MOUNTS) as c:
        yield c


def mount(c: CephCluster, client: Path) -> Path:
    """One CephFS client (a host's view of the warm tier): its own conf, keyring and ceph-fuse."""
    (client / "run").mkdir(parents=True)
    keyring = client / "ceph.client.airlock.keyring"
    keyring.write_text(f"[client.airlock]\n\tkey = {c.client_key}\n")
    keyring.chmod(0o600)
    conf = client / "ceph.conf"
    conf.write_text(f"[global]\nfsid = {c.fsid}\nmon_host = {c.mon_host}\nrun_dir = {client}/run\n"
                    f"admin_socket = {client}/run/$name.asok\nlog_file = {client}/$name.log\n\n"
                    f"[client.airlock]\nkeyring = {keyring}\n")
    mnt = client / "warm"
    mnt.mkdir()
    MOUNTS.append(mnt)
    run(["ceph-fuse", "-c", str(conf), "--id", "airlock", "--client_fs", "cephfs", str(mnt)])
    return mnt


@pytest.mark.slow
def test_appliances_stage_in_parallel_from_a_cephfs_depot(cluster: CephCluster, factory: BundleFactory,
                                                           keys: Keys, tmp_path: Path) -> None:
    depot_host = mount(cluster, tmp_path / "depot-host")
    appliance_b = mount(cluster, tmp_path / "appliance-b")
    stick = factory.build(model_files={"config.json": b"{}\n", "model.safetensors": payload(3 << 20, 7)},
                          split_size=1 << 20)
    r = import_(stick, depot_host / "depot", keys)
    assert r.returncode == 0, r.stderr
    bid = json.loads(r.stdout)["bundle_id"]
    st = json.loads(airlock("depot", "status", "--depot", str(appliance_b / "depot"), "--json").stdout)
    assert st["filesystem"] == "fuse.ceph-fuse" and st["bundles"][0]["state"] == "ready"

    # two hosts, two CephFS clients, staging at the same time; each checks every block
    procs = [subprocess.Popen([*_stage_cmd(mnt / "depot" / bid, tmp_path / f"stage-{i}", keys)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i, mnt in enumerate((depot_host, appliance_b))]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    want = payload(3 << 20, 7)
    for i in range(2):
        assert json.loads(results[i][0])["bytes_copied"] == len(want) + 3
        assert (tmp_path / f"stage-{i}/models/minilm/1.0.0/model.safetensors").read_bytes() == want

    # an appliance's stage killed mid-copy resumes from the blocks it has, reading the rest from Ceph
    cmd = _stage_cmd(appliance_b / "depot" / bid, tmp_path / "stage-k", keys)
    kill = subprocess.run(cmd, capture_output=True, text=True, check=False,
                          env={**os.environ, "AIRLOCK_FAULT": "stage-mid-copy"})
    assert kill.returncode == -9
    again = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["blocks_reused"] >= 1


def _stage_cmd(src: Path, to: Path, keys: Keys) -> list[str]:
    from tests.bundle.factory import airlock_cmd

    return [*airlock_cmd(), "bundle", "stage", str(src), "--to", str(to), *trust_args(keys), "--json"]
