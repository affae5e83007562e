"""Preflight checks for an appliance host: is it fit for this bundle, before anything is installed.

Standard library only, so the ``preflight`` Ansible role can run this very file on a bare target
(``python3 preflight.py --json --requirements FILE``) before Airlock itself is installed there.
Each check yields pass / warn / fail; a failure stops the install unless the check is allowed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

PASS, WARN, FAIL = "pass", "warn", "fail"
SUPPORTED_OS = {"debian": ("12", "13"), "ubuntu": ("22.04", "24.04")}
GIB = 1 << 30
MIB = 1 << 20
# airlock.repo.layout.DEFAULT_ROOT, spelled out: this file runs on bare targets with the stdlib only
# (tests/test_os_errors.py checks that the two agree)
DEFAULT_ROOT = "/srv/airlock"


@dataclass
class Check:
    name: str
    status: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    allowed: bool = False  # a failure the operator chose to accept (--allow-fail NAME)


@dataclass
class Requirements:
    """What the host must offer. ``tiers`` maps a tier name to ``(path, bytes needed there)``
    (``[path, bytes]`` or ``{"path": ..., "bytes": ...}`` in JSON)."""

    min_kernel: str = "5.10"
    min_cpus: int = 2
    min_ram_bytes: int = 4 * GIB
    tiers: dict[str, tuple[str, int]] = field(default_factory=lambda: {"hot": (DEFAULT_ROOT, 0)})
    gpu_required: bool = False
    min_gpu_memory_mib: int = 0
    min_driver_version: str | None = None
    not_before: str | None = None  # ISO time the bundle was built: the clock must not be earlier

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Requirements:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown requirement keys: {', '.join(sorted(unknown))}")
        req = cls(**raw)
        req.tiers = {k: (str(v["path"]), int(v["bytes"])) if isinstance(v, dict) else (str(v[0]), int(v[1]))
                     for k, v in req.tiers.items()}
        return req


@dataclass
class PreflightReport:
    checks: list[Check]

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == FAIL and not c.allowed]

    @property
    def ok(self) -> bool:
        return not self.failed

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "failed": [c.name for c in self.failed],
                "checks": [asdict(c) for c in self.checks]}


def version_tuple(text: str) -> tuple[int, ...]:
    """``"6.1.0-18-amd64"`` -> (6, 1, 0); ``"550.54.15"`` -> (550, 54, 15)."""
    m = re.match(r"^\s*(\d+(?:\.\d+)*)", text)
    return tuple(int(x) for x in m.group(1).split(".")) if m else ()


def _run(cmd: list[str], timeout: float = 10) -> tuple[int, str]:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, str(exc)
    return proc.returncode, proc.stdout


def read_os_release(path: Path = Path("/etc/os-release")) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        for line in path.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep:
                out[key.strip()] = value.strip().strip('"')
    except OSError:
        pass
    return out


def check_os() -> Check:
    info = read_os_release()
    osid, ver = info.get("ID", "unknown"), info.get("VERSION_ID", "")
    details = {"id": osid, "version": ver, "pretty": info.get("PRETTY_NAME", ""), "system": platform.system()}
    if platform.system() != "Linux":
        return Check("os", FAIL, f"{platform.system()} is not Linux", details)
    if osid in SUPPORTED_OS and ver in SUPPORTED_OS[osid]:
        return Check("os", PASS, f"{details['pretty'] or osid + ' ' + ver} is supported", details)
    like = info.get("ID_LIKE", "")
    return Check("os", WARN, f"{osid} {ver} is not a tested release (tested: Debian 12/13, Ubuntu 22.04/24.04"
                 f"{'; ID_LIKE=' + like if like else ''})", details)


def check_kernel(req: Requirements) -> Check:
    rel = platform.release()
    details = {"release": rel, "min": req.min_kernel, "machine": platform.machine()}
    if version_tuple(rel) < version_tuple(req.min_kernel):
        return Check("kernel", FAIL, f"kernel {rel} is older than {req.min_kernel}", details)
    return Check("kernel", PASS, f"kernel {rel} ({platform.machine()})", details)


def check_cpu(req: Requirements) -> Check:
    count = os.cpu_count() or 0
    flags: set[str] = set()
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = set(line.partition(":")[2].split())
            elif line.startswith("model name") and not model:
                model = line.partition(":")[2].strip()
    except OSError:
        pass
    details = {"count": count, "min": req.min_cpus, "model": model, "avx2": "avx2" in flags}
    if count < req.min_cpus:
        return Check("cpu", FAIL, f"{count} CPUs, at least {req.min_cpus} needed", details)
    if platform.machine() == "x86_64" and flags and "avx2" not in flags:
        return Check("cpu", WARN, f"{count} CPUs ({model}) without AVX2: CPU inference will be slow", details)
    return Check("cpu", PASS, f"{count} CPUs ({model or platform.machine()})", details)


def mem_total_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_ram(req: Requirements) -> Check:
    total = mem_total_bytes()
    details = {"total_bytes": total, "min_bytes": req.min_ram_bytes}
    if total < req.min_ram_bytes:
        return Check("ram", FAIL, f"{total / GIB:.1f} GiB RAM, at least {req.min_ram_bytes / GIB:.1f} GiB "
                     "needed", details)
    return Check("ram", PASS, f"{total / GIB:.1f} GiB RAM", details)


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(tier: str, path: str, needed: int) -> Check:
    where = _existing(Path(path))
    st = os.statvfs(where)
    free = st.f_bavail * st.f_frsize
    details = {"path": path, "measured_at": str(where), "free_bytes": free, "needed_bytes": needed}
    name = f"disk:{tier}"
    if not os.access(where, os.W_OK):
        return Check(name, FAIL, f"{path}: not writable by this user ({where}): run as root or choose "
                     "another root", details)
    why = " (the staged copy of the bundle plus the installed version; --stage-dir on another disk " \
          "halves it)" if tier == "hot" and needed else ""
    if free < needed:
        return Check(name, FAIL, f"{path}: {free / GIB:.2f} GiB free, {needed / GIB:.2f} GiB needed "
                     f"for the {tier} tier{why}: {(needed - free) / GIB:.2f} GiB more needed", details)
    if needed and free < needed * 1.1:
        return Check(name, WARN, f"{path}: {free / GIB:.2f} GiB free, barely above the "
                     f"{needed / GIB:.2f} GiB needed", details)
    return Check(name, PASS, f"{path}: {free / GIB:.2f} GiB free, {needed / GIB:.2f} GiB needed{why}",
                 details)


@dataclass
class Gpu:
    index: int
    name: str
    memory_mib: int
    driver: str


def query_gpus() -> list[Gpu] | None:
    """GPUs as ``nvidia-smi`` reports them; None when nvidia-smi is absent or cannot talk to a driver."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    rc, out = _run([smi, "--query-gpu=index,name,memory.total,driver_version",
                    "--format=csv,noheader,nounits"])
    if rc != 0:
        return None
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4:
            continue
        try:
            gpus.append(Gpu(int(parts[0]), parts[1], int(float(parts[2])), parts[3]))
        except ValueError:
            continue
    return gpus


def nvidia_hardware() -> list[str]:
    """NVIDIA PCI devices (vendor 0x10de, display/3D class) from sysfs, whether or not a driver is loaded."""
    found = []
    for dev in sorted(Path("/sys/bus/pci/devices").glob("*")):
        try:
            vendor = (dev / "vendor").read_text().strip()
            klass = (dev / "class").read_text().strip()
        except OSError:
            continue
        if vendor == "0x10de" and klass.startswith(("0x0300", "0x0302")):
            found.append(dev.name)
    return found


def check_gpu(req: Requirements, gpus: list[Gpu] | None) -> list[Check]:
    miss = FAIL if req.gpu_required else WARN
    if gpus is None:
        hw = nvidia_hardware()
        if hw:
            return [Check("gpu", WARN, f"NVIDIA GPU(s) at {', '.join(hw)} but no working nvidia-smi: the "
                          "nvidia_driver role installs the driver", {"pci": hw})]
        why = "required by the bundle" if req.gpu_required else "models will run on CPU"
        return [Check("gpu", miss, f"no NVIDIA GPU found (no nvidia-smi, no PCI device 10de); {why}",
                      {"pci": []})]
    if not gpus:
        return [Check("gpu", miss, "nvidia-smi reports no GPU", {})]
    details = {"gpus": [asdict(g) for g in gpus]}
    names = ", ".join(f"{g.name} ({g.memory_mib} MiB)" for g in gpus)
    checks = [Check("gpu", PASS, f"{len(gpus)} GPU(s): {names}", details)]
    least = min(g.memory_mib for g in gpus)
    if req.min_gpu_memory_mib:
        status = PASS if least >= req.min_gpu_memory_mib else FAIL
        checks.append(Check("gpu-memory", status, f"smallest GPU has {least} MiB, "
                            f"{req.min_gpu_memory_mib} MiB needed", {"min_mib": req.min_gpu_memory_mib}))
    driver = gpus[0].driver
    if req.min_driver_version:
        ok = version_tuple(driver) >= version_tuple(req.min_driver_version)
        checks.append(Check("driver", PASS if ok else FAIL, f"NVIDIA driver {driver}, models need "
                            f">= {req.min_driver_version}",
                            {"driver": driver, "min": req.min_driver_version}))
    return checks


def check_time(req: Requirements, now: Callable[[], float] = time.time) -> Check:
    synced: bool | None = None
    source = ""
    if shutil.which("timedatectl"):
        rc, out = _run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"])
        if rc == 0 and out.strip() in ("yes", "no"):
            synced, source = out.strip() == "yes", "timedatectl"
    if synced is None and shutil.which("chronyc"):
        rc, out = _run(["chronyc", "tracking"])
        if rc == 0:
            synced, source = "Leap status     : Normal" in out, "chronyc"
    clock = datetime.fromtimestamp(now(), UTC)
    details: dict[str, Any] = {"synchronized": synced, "source": source or None, "clock": clock.isoformat()}
    if req.not_before:
        built = datetime.fromisoformat(req.not_before.replace("Z", "+00:00"))
        details["not_before"] = built.isoformat()
        if clock < built:
            return Check("time", FAIL, f"clock {clock:%Y-%m-%d %H:%M}Z is before the bundle was built "
                         f"({built:%Y-%m-%d %H:%M}Z): apt and gpg would refuse its signatures as not "
                         "yet valid", details)
    if synced:
        return Check("time", PASS, f"clock synchronized ({source})", details)
    if synced is None:
        return Check("time", WARN, "no time synchronization service found (timedatectl/chronyc); "
                     "set the clock by hand and keep it within a few minutes across the fleet", details)
    return Check("time", WARN, f"clock not synchronized ({source}); expected on an air-gapped site without "
                 "a local NTP server", details)


def check_mac() -> Check:
    """SELinux / AppArmor state: reported, warned when SELinux enforces (not the tested setup)."""
    details: dict[str, Any] = {"selinux": "absent", "apparmor": "absent"}
    enforce = Path("/sys/fs/selinux/enforce")
    if enforce.exists():
        try:
            details["selinux"] = "enforcing" if enforce.read_text().strip() == "1" else "permissive"
        except OSError:
            details["selinux"] = "unknown"
    aa = Path("/sys/module/apparmor/parameters/enabled")
    if aa.exists():
        try:
            details["apparmor"] = "enabled" if aa.read_text().strip() == "Y" else "disabled"
        except OSError:
            details["apparmor"] = "unknown"
    text = f"SELinux {details['selinux']}, AppArmor {details['apparmor']}"
    if details["selinux"] == "enforcing":
        return Check("mac", WARN, f"{text}: SELinux enforcing is not tested; label /var/lib/airlock or "
                     "set permissive", details)
    return Check("mac", PASS, text, details)


def run_preflight(req: Requirements, *,
                  allow_fail: set[str] | frozenset[str] = frozenset()) -> PreflightReport:
    checks = [check_os(), check_kernel(req), check_cpu(req), check_ram(req)]
    checks += [check_disk(tier, path, needed) for tier, (path, needed) in sorted(req.tiers.items())]
    checks += check_gpu(req, query_gpus())
    checks += [check_time(req), check_mac()]
    for c in checks:
        c.allowed = c.status == FAIL and c.name in allow_fail
    return PreflightReport(checks)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point (used by the preflight role on a target without Airlock installed)."""
    ap = argparse.ArgumentParser(prog="preflight.py", description=__doc__)
    ap.add_argument("--requirements", help="JSON file with Requirements fields")
    ap.add_argument("--requirements-json", help="the same, inline")
    ap.add_argument("--allow-fail", action="append", default=[], help="accept a failing check (repeatable)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    raw: dict[str, Any] = {}
    if args.requirements:
        raw = json.loads(Path(args.requirements).read_text())
    elif args.requirements_json:
        raw = json.loads(args.requirements_json)
    report = run_preflight(Requirements.from_dict(raw), allow_fail=set(args.allow_fail))
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, sort_keys=True))
    else:
        for c in report.checks:
            print(f"{c.status.upper():4} {c.name:12} {c.message}{' (allowed)' if c.allowed else ''}")
    return 0 if report.ok else 3


if __name__ == "__main__":
    sys.exit(main())
