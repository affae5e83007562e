"""apt pointed at one offline repository only, with its own sources, lists and cache: the machine's own
apt configuration and state are neither used nor changed (only dpkg's database, by install/purge)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass
class OfflineApt:
    work: Path

    def __post_init__(self) -> None:
        for d in ("lists/partial", "cache/archives/partial", "sources.list.d"):
            (self.work / d).mkdir(parents=True, exist_ok=True)
        (self.work / "sources.list").write_text("")

    def use(self, source_line: str) -> None:
        (self.work / "sources.list").write_text(source_line + "\n")

    def options(self) -> list[str]:
        w = self.work
        return [
            "-o",
            f"Dir::Etc::sourcelist={w / 'sources.list'}",
            "-o",
            f"Dir::Etc::sourceparts={w / 'sources.list.d'}",
            "-o",
            f"Dir::State::Lists={w / 'lists'}",
            "-o",
            f"Dir::Cache={w / 'cache'}",
            "-o",
            f"Dir::Cache::archives={w / 'cache/archives'}",
            "-o",
            "DPkg::Lock::Timeout=120",
            "-o",
            "APT::Sandbox::User=root",
        ]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["apt-get", "-q", "-y", *self.options(), *args],
            capture_output=True,
            text=True,
            check=False,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"},
        )


def installed(pkg: str) -> bool:
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True, check=False
    )
    return proc.returncode == 0 and "install ok installed" in proc.stdout
