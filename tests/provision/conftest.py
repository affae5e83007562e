"""Real gpg key, real small Debian packages (fetched once with ``apt-get download`` into .cache/), and
a signed offline apt repository built from them."""

from __future__ import annotations

import fcntl
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import require_tool

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("AIRLOCK_CACHE", REPO_ROOT / ".cache")) / "provision"
DEBS = ("hello", "sl", "figlet")  # tiny, no dependencies beyond what a Debian base image has


@dataclass
class Key:
    home: Path
    fpr: str

    def gpg(self, *args: str) -> bytes:
        return subprocess.run(
            ["gpg", "--batch", "--yes", "--no-tty", "--homedir", str(self.home), *args],
            check=True,
            capture_output=True,
        ).stdout


def _make_key(home: Path, name: str) -> Key:
    home.mkdir(mode=0o700, parents=True)
    k = Key(home, "")
    k.gpg(
        "--passphrase",
        "",
        "--quick-gen-key",
        f"Airlock {name} <{name}@airlock.test>",
        "ed25519",
        "sign",
        "1y",
    )
    line = next(
        ln
        for ln in k.gpg("--with-colons", "--list-secret-keys").decode().splitlines()
        if ln.startswith("fpr:")
    )
    k.fpr = line.split(":")[9]
    return k


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Key]]:
    require_tool("gpg", "apt-get install gnupg")
    base = tmp_path_factory.mktemp("gpg")
    ks = {n: _make_key(base / n, n) for n in ("bundle", "other")}
    yield ks
    for k in ks.values():
        subprocess.run(
            ["gpgconf", "--homedir", str(k.home), "--kill", "gpg-agent"], check=False, capture_output=True
        )


@pytest.fixture(scope="session")
def debs() -> list[Path]:
    """The real .deb files, downloaded once from the Debian mirror this machine is configured for."""
    require_tool("apt-get", "a Debian/Ubuntu host")
    require_tool("dpkg-deb", "apt-get install dpkg")
    out = CACHE / "debs"
    out.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        missing = [p for p in DEBS if not list(out.glob(f"{p}_*.deb"))]
        if missing:
            subprocess.run(["apt-get", "download", *missing], cwd=out, check=True, capture_output=True)
    return sorted(p for name in DEBS for p in out.glob(f"{name}_*.deb"))


def make_dummy_deb(out_dir: Path, name: str, version: str, depends: str = "") -> Path:
    """A real (empty) Debian package built with dpkg-deb: stands in for packages too big or
    hardware-bound to install here (NVIDIA driver, kernel headers), for apt's package selection."""
    tree = out_dir / f"{name}-{version}-tree"
    (tree / "DEBIAN").mkdir(parents=True)
    control = (
        f"Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: Airlock <t@airlock.test>\n"
        f"{'Depends: ' + depends + chr(10) if depends else ''}Description: Airlock test stand-in\n"
    )
    (tree / "DEBIAN" / "control").write_text(control)
    deb = out_dir / f"{name}_{version.replace(':', '%3a')}_all.deb"
    subprocess.run(["dpkg-deb", "-Zxz", "-b", str(tree), str(deb)], check=True, capture_output=True)
    return deb


def apt_config(work: Path, sources_line: str) -> Path:
    """An APT_CONFIG file that makes apt (and python-apt) see only ``sources_line``, with its own lists."""
    for d in ("lists/partial", "cache/archives/partial", "parts"):
        (work / d).mkdir(parents=True, exist_ok=True)
    (work / "sources.list").write_text(sources_line + "\n")
    conf = work / "apt.conf"
    conf.write_text(
        f'Dir::Etc::sourcelist "{work}/sources.list";\nDir::Etc::sourceparts "{work}/parts";\n'
        f'Dir::State::Lists "{work}/lists";\nDir::Cache "{work}/cache";\n'
        f'Dir::Cache::archives "{work}/cache/archives";\nDPkg::Lock::Timeout "120";\n'
    )
    subprocess.run(
        ["apt-get", "-q", "update"],
        env={**os.environ, "APT_CONFIG": str(conf)},
        check=True,
        capture_output=True,
    )
    return conf
