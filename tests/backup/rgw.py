"""Ceph's RADOS Gateway (Debian ``radosgw`` 16) on the suite's single-node Ceph (tests/provision/
ceph_cluster.py): S3 on a free loopback port, one S3 user for restic."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from tests.provision.ceph_cluster import CephCluster, free_port, run


@dataclass
class Rgw:
    port: int
    access_key: str
    secret_key: str

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_rgw(c: CephCluster) -> Rgw:
    """radosgw as client.rgw.a (its pools are created on first start), then an S3 user."""
    root, conf = c.root, str(c.conf)
    # few placement groups: the one memstore OSD carries CephFS and RGW's pools
    c.ceph("config", "set", "global", "osd_pool_default_pg_num", "8")
    c.ceph("config", "set", "global", "osd_pool_default_pgp_num", "8")
    c.ceph("auth", "get-or-create", "client.rgw.a", "mon", "allow rw", "osd", "allow rwx", "mgr", "allow rw",
           "-o", f"{root}/client.rgw.a.keyring")
    port = free_port()
    (root / "rgw").mkdir(exist_ok=True)
    run(["radosgw", "-c", conf, "-n", "client.rgw.a", "--keyring", f"{root}/client.rgw.a.keyring",
         "--rgw-frontends", f"beast endpoint=127.0.0.1:{port}", "--rgw-data", f"{root}/rgw",
         "--pid-file", f"{root}/run/client.rgw.a.pid", "--log-file", f"{root}/log/rgw.log"])
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5):
                break
        except urllib.error.HTTPError:
            break  # S3 answered (403 for an anonymous request)
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"radosgw did not answer on port {port}") from None
            time.sleep(1)
    out = json.loads(run(["radosgw-admin", "-c", conf, "-n", "client.admin", "user", "create", "--uid",
                          "airlock", "--display-name", "Airlock backups"], timeout=180))
    key = out["keys"][0]
    return Rgw(port, key["access_key"], key["secret_key"])

