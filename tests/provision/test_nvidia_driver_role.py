"""roles/nvidia_driver on this host, which has no GPU: the clear stop, the clean skip, and with
nvidia_driver_force the package selection and templates in check mode, resolved by real apt against an
offline repository of stand-in packages (the real driver needs the GPU and its kernel module).
Only a GPU host can show: the DKMS build, the reboot handler firing, nvidia-persistenced running and
the nvidia-smi version check."""

from __future__ import annotations

import platform
import re
import subprocess
from pathlib import Path

import pytest

from airlock.provision import preflight as pf
from airlock.provision.aptrepo import KEYRING_NAME, build_apt_repo
from tests.provision.ansible_run import run_role
from tests.provision.conftest import Key, apt_config, make_dummy_deb
from tests.support import require_root

VERSION = "535.216.01-1~deb12u1"


@pytest.fixture(autouse=True)
def _no_gpu_here() -> None:
    if pf.nvidia_hardware() or pf.query_gpus() is not None:
        pytest.fail("these tests describe a host without an NVIDIA GPU")


def test_no_gpu_stops_with_a_clear_message(tmp_path: Path) -> None:
    res = run_role(tmp_path, "nvidia_driver", {}, facts=True)
    assert res.rc != 0 and res.recap["failed"] == 1
    assert "localhost has no NVIDIA GPU (no PCI device with vendor 10de" in res.output
    assert "nvidia_driver_skip_no_gpu: true" in res.output


def test_no_gpu_skips_cleanly_when_asked(tmp_path: Path) -> None:
    res = run_role(tmp_path, "nvidia_driver", {"nvidia_driver_skip_no_gpu": True}, facts=True)
    assert res.rc == 0 and res.recap["changed"] == 0 and res.recap["failed"] == 0
    assert "driver not installed (nvidia_driver_skip_no_gpu)" in res.output


def test_forced_package_selection_and_templates_in_check_mode(tmp_path: Path, keys: dict[str, Key]) -> None:
    require_root("apt lists for the stand-in repository")
    debs = tmp_path / "debs"
    debs.mkdir()
    names = [
        f"linux-headers-{platform.release()}",
        "dkms",
        "nvidia-driver",
        "nvidia-kernel-dkms",
        "nvidia-smi",
        "nvidia-persistenced",
    ]
    for name in names:
        version = VERSION if name.startswith("nvidia") else "1.0"
        make_dummy_deb(debs, name, version)
    make_dummy_deb(debs, "nvidia-driver", "550.54.15-1")  # a newer one the pin must not pick
    repo = tmp_path / "apt"
    build_apt_repo(sorted(debs.glob("*.deb")), repo, signer=keys["bundle"].fpr, gnupghome=keys["bundle"].home)
    conf = apt_config(tmp_path / "aptstate", f"deb [signed-by={repo / KEYRING_NAME}] file:{repo} ./")
    v = {
        "nvidia_driver_force": True,
        "nvidia_driver_version": VERSION,
        "nvidia_driver_apt_environment": {"APT_CONFIG": str(conf)},
        "nvidia_driver_modprobe_conf": str(tmp_path / "modprobe.d/airlock-nvidia.conf"),
        "nvidia_driver_modprobe_options": ["options nvidia NVreg_PreserveVideoMemoryAllocations=1"],
    }
    res = run_role(tmp_path, "nvidia_driver", v, check=True, diff=True, facts=True)
    assert res.rc == 0, res.output[-3000:]
    assert (
        f"NVIDIA packages: linux-headers-{platform.release()} dkms nvidia-driver={VERSION} "
        f"nvidia-kernel-dkms={VERSION} nvidia-smi={VERSION} nvidia-persistenced"
    ) in res.output
    assert "blacklist nouveau" in res.output and "NVreg_PreserveVideoMemoryAllocations=1" in res.output
    assert res.recap["changed"] >= 3
    # the driver change notifies the reboot handler, which does not reboot a host without a GPU
    assert re.search(r"HANDLER \[nvidia_driver : Reboot for the NVIDIA driver\] \**\nskipping", res.output)
    # check mode: nothing installed, nothing written
    assert not (tmp_path / "modprobe.d").exists()
    assert subprocess.run(["dpkg-query", "-W", "nvidia-driver"], capture_output=True).returncode != 0
    # a pin the offline repository cannot satisfy fails in apt's resolution, naming the package
    bad = run_role(
        tmp_path, "nvidia_driver", {**v, "nvidia_driver_version": "999.1-1"}, check=True, facts=True
    )
    assert bad.rc != 0 and "nvidia-driver=999.1-1" in bad.output
