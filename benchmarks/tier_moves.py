"""Tier moves vs the plain tools, same data, same run: demote (hot -> warm) and promote (warm -> hot)
of a synthetic DeepSeek-shaped version against ``cp -r`` + ``sync`` + ``sha256sum`` of the copy.

    .venv/bin/python benchmarks/tier_moves.py [--size-mib 512] [--warm DIR] [--work DIR]

Prints a Markdown table (MiB/s and the ratio to cp + sync + sha256sum). ``--warm`` puts the warm
tier elsewhere (e.g. a CephFS mount); by default it is a directory beside the repository."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from airlock.fixtures import generate_synthetic
from airlock.repo import Repository, tier


def _timed(fn: object) -> float:
    t = time.monotonic()
    fn()  # type: ignore[operator]
    return time.monotonic() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--warm", type=Path)
    ap.add_argument("--work", type=Path)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tier-bench-", dir=a.work))
    try:
        warm = a.warm or work / "warm"
        warm.mkdir(parents=True, exist_ok=True)
        repo = Repository(work / "root")
        for v, seed in (("1.0.0", 1), ("1.1.0", 2)):  # different content: promote copies, links nothing
            repo.install_version("m", v, generate_synthetic(work / f"src-{v}", size_bytes=a.size_mib << 20,
                                                            seed=seed))
            shutil.rmtree(work / f"src-{v}")
        tier.configure(repo, dirs={"warm": warm})
        hot = repo.layout.version_dir("m", "1.0.0")
        nbytes = sum(f.stat().st_size for f in hot.rglob("*") if f.is_file())
        demote = _timed(lambda: tier.demote(repo, "m", "1.0.0"))
        promote = _timed(lambda: tier.promote(repo, "m", "1.0.0"))
        dest = warm / "cp-baseline"

        def baseline() -> None:
            subprocess.run(["cp", "-r", str(hot), str(dest)], check=True)
            subprocess.run(["sync", "-f", str(dest)], check=True)
            files = sorted(str(f) for f in dest.rglob("*") if f.is_file())
            subprocess.run(["sha256sum", *files], check=True, capture_output=True)

        cp = _timed(baseline)
        mib = nbytes / (1 << 20)
        nfiles = len(list(hot.rglob("*")))
        print(f"| move ({mib:.0f} MiB, {nfiles} files) | MiB/s | vs cp + sync + sha256sum |")
        print("|---|---|---|")
        print(f"| cp -r + sync + sha256sum (hot -> warm) | {mib / cp:.0f} | 1.00 |")
        print(f"| airlock tier demote (hot -> warm) | {mib / demote:.0f} | {cp / demote:.2f} |")
        print(f"| airlock tier promote (warm -> hot) | {mib / promote:.0f} | {cp / promote:.2f} |")
        repo.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if a.warm:
            shutil.rmtree(a.warm / "m", ignore_errors=True)
            shutil.rmtree(a.warm / "cp-baseline", ignore_errors=True)


if __name__ == "__main__":
    main()
