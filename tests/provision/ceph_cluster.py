"""A real single-node Ceph (Debian ceph 16: one mon, one memstore OSD, one MDS; no mgr needed for
CephFS) in a temp dir on a free loopback port, started in about a minute on 2 cores."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support import pids_running, require_root, require_tool

TOOLS = ("ceph-mon", "ceph-osd", "ceph-mds", "ceph-mgr", "ceph-fuse")


@dataclass
class CephCluster:
    root: Path
    fsid: str
    port: int
    client_key: str = ""

    @property
    def conf(self) -> Path:
        return self.root / "ceph.conf"

    @property
    def mon_host(self) -> str:
        return f"v2:127.0.0.1:{self.port}"

    def ceph(self, *args: str) -> str:
        return run(["ceph", "-c", str(self.conf), "--connect-timeout", "30", *args])


def run(cmd: list[str], timeout: float = 120) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: rc={proc.returncode}: {proc.stderr.strip()[-800:]}")
    return proc.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(root: Path) -> CephCluster:
    c = CephCluster(root, str(uuid.uuid4()), free_port())
    for d in ("mon", "osd/osd.0", "mds/mds.a", "mgr/mgr.x", "run", "log"):
        (root / d).mkdir(parents=True)
    c.conf.write_text(f"""[global]
fsid = {c.fsid}
mon_host = {c.mon_host}
run_dir = {root}/run
log_file = {root}/log/$name.log
admin_socket = {root}/run/$name.asok
pid_file = {root}/run/$name.pid
keyring = {root}/$name.keyring
mon_data = {root}/mon/$name
osd_data = {root}/osd/$name
mds_data = {root}/mds/$name
mgr_data = {root}/mgr/$name
mgr_disabled_modules = dashboard,prometheus,restful,influx,telemetry
osd_objectstore = memstore
memstore_device_bytes = 536870912
osd_pool_default_size = 1
osd_pool_default_min_size = 1
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
mon_data_avail_warn = 1
mon_data_avail_crit = 0
""")
    conf = str(c.conf)
    run(
        [
            "ceph-authtool",
            "--create-keyring",
            f"{root}/mon.a.keyring",
            "--gen-key",
            "-n",
            "mon.",
            "--cap",
            "mon",
            "allow *",
        ]
    )
    run(
        [
            "ceph-authtool",
            "--create-keyring",
            f"{root}/client.admin.keyring",
            "--gen-key",
            "-n",
            "client.admin",
            "--cap",
            "mon",
            "allow *",
            "--cap",
            "osd",
            "allow *",
            "--cap",
            "mds",
            "allow *",
            "--cap",
            "mgr",
            "allow *",
        ]
    )
    run(["ceph-authtool", f"{root}/mon.a.keyring", "--import-keyring", f"{root}/client.admin.keyring"])
    run(["monmaptool", "--create", "--add", "a", f"127.0.0.1:{c.port}", "--fsid", c.fsid, f"{root}/monmap"])
    run(
        [
            "ceph-mon",
            "-c",
            conf,
            "-i",
            "a",
            "--mkfs",
            "--monmap",
            f"{root}/monmap",
            "--keyring",
            f"{root}/mon.a.keyring",
        ]
    )
    run(["ceph-mon", "-c", conf, "-i", "a"])
    c.ceph("osd", "create")
    run(["ceph-osd", "-c", conf, "-i", "0", "--mkfs", "--mkkey", "--no-mon-config"])
    c.ceph(
        "auth", "add", "osd.0", "osd", "allow *", "mon", "allow profile osd", "-i", f"{root}/osd.0.keyring"
    )
    run(["ceph-osd", "-c", conf, "-i", "0"])
    # a manager: without one the cluster reports no usage, and CephFS clients see 0 bytes free
    c.ceph(
        "auth",
        "get-or-create",
        "mgr.x",
        "mon",
        "allow profile mgr",
        "osd",
        "allow *",
        "mds",
        "allow *",
        "-o",
        f"{root}/mgr.x.keyring",
    )
    run(["ceph-mgr", "-c", conf, "-i", "x"])
    c.ceph(
        "auth",
        "get-or-create",
        "mds.a",
        "mon",
        "allow profile mds",
        "osd",
        "allow rwx",
        "mds",
        "allow",
        "-o",
        f"{root}/mds.a.keyring",
    )
    run(["ceph-mds", "-c", conf, "-i", "a"])
    c.ceph("osd", "pool", "create", "cephfs_data", "8")
    c.ceph("osd", "pool", "create", "cephfs_metadata", "8")
    c.ceph("fs", "new", "cephfs", "cephfs_metadata", "cephfs_data")
    deadline = time.monotonic() + 120
    while "up:active" not in c.ceph("mds", "stat"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"MDS not active: {c.ceph('mds', 'stat')}")
        time.sleep(1)
    while '"available": true' not in c.ceph("mgr", "stat", "--format", "json-pretty"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"mgr not available: {c.ceph('mgr', 'stat')}")
        time.sleep(1)
    out = c.ceph("fs", "authorize", "cephfs", "client.airlock", "/", "rw")
    c.client_key = next(ln.split("=", 1)[1].strip() for ln in out.splitlines() if "key =" in ln)
    return c


def stop(c: CephCluster, mounts: list[Path]) -> None:
    """Unmount first (a FUSE client hangs once the cluster is gone), then stop the daemons."""
    pids = []
    for m in mounts:
        subprocess.run(["umount", "-l", str(m)], capture_output=True, check=False)
        pids += pids_running(b"ceph-fuse", str(m))  # the ceph-fuse this test's mount started
    for pidfile in sorted((c.root / "run").glob("*.pid")):
        try:
            pids.append(int(pidfile.read_text().strip()))
        except (OSError, ValueError):
            continue
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        time.sleep(2)


@contextlib.contextmanager
def running(root: Path, mounts: list[Path], extra_tools: tuple[str, ...] = ()) -> Iterator[CephCluster]:
    """A cluster started under ``root`` (as root, the Ceph tools installed: else a clear skip, a
    failure in CI), stopped at the end after unmounting ``mounts`` (read then: append to it)."""
    require_root("runs Ceph daemons and mounts CephFS with ceph-fuse")
    tools = (*TOOLS, *extra_tools)
    for tool in tools:
        require_tool(tool, f"apt-get install {' '.join(tools)} (scripts/apt-packages.txt)")
    c = start(root)
    try:
        yield c
    finally:
        stop(c, mounts)
