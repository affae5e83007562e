"""roles/ceph_client against its generated configuration (no Ceph cluster here: see the module note).

Real ansible runs on this host with every path in a temp dir: ceph.conf parses and names the monitors,
keyring and secret are 0600 and the key never appears in Ansible's output (no_log, even with --diff),
the fstab entry is added beside the user's lines, check mode writes nothing, a second run changes
nothing; the package pin goes through real apt on a stand-in ceph-common in check mode.

Not covered here: mounting CephFS. This machine's kernel has no ceph module (no /lib/modules, no ceph in
/proc/filesystems), so only a ceph-fuse mount could work, which needs a running mon/osd/mds."""

from __future__ import annotations

import configparser
import stat
from pathlib import Path
from typing import Any

from airlock.provision.aptrepo import KEYRING_NAME, build_apt_repo
from tests.provision.ansible_run import run_role
from tests.provision.conftest import Key, apt_config, make_dummy_deb
from tests.support import require_root

KEY = "AQBFsdlkjf9sdfKJLKJSDF0923jlkjsdf0932kJ=="
FSID = "6f4a2f9e-3d3c-4b9a-9a43-2b8f1c6f8e11"
USER_FSTAB = "# user's own entries\nUUID=1234-abcd /boot/efi vfat umask=0077 0 1\n"


def role_vars(tmp: Path, **extra: Any) -> dict[str, Any]:
    t = tmp / "target"
    return {
        "ceph_client_install": False,
        "ceph_client_fsid": FSID,
        "ceph_client_mon_hosts": ["10.0.0.11:6789", "10.0.0.12:6789"],
        "ceph_client_key": KEY,
        "ceph_client_conf_dir": str(t / "etc/ceph"),
        "ceph_client_conf_extra": {"ms_mode": "secure"},
        "ceph_client_mount_point": str(t / "var/lib/airlock/warm"),
        "ceph_client_fstab": str(t / "etc/fstab"),
        "ceph_client_mount_now": False,
        **extra,
    }


def test_config_keyring_fstab_idempotent_and_secret(tmp_path: Path) -> None:
    t = tmp_path / "target"
    (t / "etc").mkdir(parents=True)
    (t / "etc/fstab").write_text(USER_FSTAB)
    v = role_vars(tmp_path)
    dry = run_role(tmp_path, "ceph_client", v, check=True, diff=True)
    assert dry.rc == 0 and dry.recap["changed"] > 0, dry.output
    assert not (t / "etc/ceph").exists() and (t / "etc/fstab").read_text() == USER_FSTAB

    first = run_role(tmp_path, "ceph_client", v, diff=True)
    assert first.rc == 0, first.output
    second = run_role(tmp_path, "ceph_client", v, diff=True)
    assert second.rc == 0 and second.recap["changed"] == 0, second.output
    for res in (dry, first, second):
        assert KEY not in res.output

    conf = configparser.ConfigParser()
    conf.read(t / "etc/ceph/ceph.conf")
    assert conf["global"]["fsid"] == FSID and conf["global"]["mon_host"] == "10.0.0.11:6789,10.0.0.12:6789"
    assert conf["global"]["ms_mode"] == "secure"
    assert conf["client.airlock"]["keyring"] == str(t / "etc/ceph/ceph.client.airlock.keyring")
    keyring = configparser.ConfigParser()
    keyring.read(t / "etc/ceph/ceph.client.airlock.keyring")
    assert keyring["client.airlock"]["key"] == KEY
    for name in ("ceph.client.airlock.keyring", "ceph.client.airlock.secret"):
        assert stat.S_IMODE((t / "etc/ceph" / name).stat().st_mode) == 0o600
    assert (t / "etc/ceph/ceph.client.airlock.secret").read_text() == KEY
    fstab = (t / "etc/fstab").read_text()
    assert fstab.startswith(USER_FSTAB)
    assert (
        f"10.0.0.11:6789,10.0.0.12:6789:/airlock {t}/var/lib/airlock/warm ceph name=airlock,"
        f"secretfile={t}/etc/ceph/ceph.client.airlock.secret,fs=cephfs,noatime,_netdev 0 0\n"
    ) in fstab
    assert (t / "var/lib/airlock/warm").is_dir()

    # switching to the fuse client replaces the entry, keeps the user's lines
    fuse = run_role(tmp_path, "ceph_client", role_vars(tmp_path, ceph_client_mount_type="fuse"))
    assert fuse.rc == 0 and KEY not in fuse.output, fuse.output
    fstab = (t / "etc/fstab").read_text()
    assert fstab.startswith(USER_FSTAB)
    lines = [ln for ln in fstab.splitlines() if "warm" in ln]
    assert lines == [
        f"none {t}/var/lib/airlock/warm fuse.ceph ceph.id=airlock,ceph.conf={t}/etc/ceph/ceph.conf,"
        "ceph.client_mountpoint=/airlock,ceph.client_fs=cephfs,noatime,_netdev 0 0"
    ]


def test_missing_key_is_refused_by_the_argument_spec(tmp_path: Path) -> None:
    v = role_vars(tmp_path)
    del v["ceph_client_key"]
    res = run_role(tmp_path, "ceph_client", v)
    assert res.rc != 0 and "ceph_client_key" in res.output
    assert not (tmp_path / "target").exists()


def test_pinned_ceph_common_from_the_offline_repo_in_check_mode(tmp_path: Path, keys: dict[str, Key]) -> None:
    require_root("apt lists for the stand-in repository")
    debs = tmp_path / "debs"
    debs.mkdir()
    make_dummy_deb(debs, "ceph-common", "16.2.15+ds-0+deb12u3~airlock1")
    repo = tmp_path / "apt"
    build_apt_repo(sorted(debs.glob("*.deb")), repo, signer=keys["bundle"].fpr, gnupghome=keys["bundle"].home)
    conf = apt_config(tmp_path / "aptstate", f"deb [signed-by={repo / KEYRING_NAME}] file:{repo} ./")
    v = role_vars(
        tmp_path,
        ceph_client_install=True,
        ceph_client_version="16.2.15+ds-0+deb12u3~airlock1",
        ceph_client_apt_environment={"APT_CONFIG": str(conf)},
    )
    res = run_role(tmp_path, "ceph_client", v, check=True, tags=["ceph_client_packages"])
    assert res.rc == 0 and res.recap["changed"] == 1, res.output
    bad = run_role(
        tmp_path,
        "ceph_client",
        {**v, "ceph_client_version": "18.2.0-1"},
        check=True,
        tags=["ceph_client_packages"],
    )
    assert bad.rc != 0 and "ceph-common=18.2.0-1" in bad.output
