"""Hashing/verify/stage throughput of Airlock bundles against `sha256sum` on the same file.

    .venv/bin/python -m benchmarks.hashing [--size-mib 1024] [--work benchmarks/work/hashing]

Builds a signed bundle holding one random payload (throwaway GNUPGHOME, ed25519 key), then times,
with a warm page cache and each figure the best of --repeat runs:
  sha256sum FILE                           (what an auditor runs; coreutils' own SHA-256)
  openssl dgst -sha256 FILE                (OpenSSL's SHA-256, the same code hashlib uses)
  airlock bundle verify (CLI, end to end)  (signature + size + block hashes + whole-file sha256)
  airlock bundle stage  (CLI, end to end)  (copy while hashing into a fresh staging dir, fsync)
and prints a Markdown table with MiB/s and the ratio to sha256sum.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.signer import throwaway_signer

ROOT = Path(__file__).resolve().parents[1]
AIRLOCK = [str(ROOT / ".venv/bin/airlock")] if (ROOT / ".venv/bin/airlock").exists() else ["airlock"]


def _best(cmd: list[str], repeat: int, before: list[str] | None = None, env: dict[str, str] | None = None,
          cleanup: Path | None = None) -> float:
    best = float("inf")
    for _ in range(repeat):
        if cleanup is not None and cleanup.exists():
            shutil.rmtree(cleanup)
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks/work/hashing")
    args = ap.parse_args(argv)
    work: Path = args.work
    if work.exists():
        shutil.rmtree(work)
    (work / "src").mkdir(parents=True)
    fpr, home, _ = throwaway_signer(work)
    payload = work / "src" / "payload.bin"
    with open(payload, "wb") as fh:
        for _ in range(args.size_mib):
            fh.write(os.urandom(1 << 20))
    (work / "spec.yml").write_text("compatible: bench\nsequence: 1\nfiles:\n"
                                   "  - {src: src/payload.bin, dest: images/payload.bin}\n")
    bundle = work / "bundle"
    env = {**os.environ, "GNUPGHOME": str(home)}
    subprocess.run([*AIRLOCK, "bundle", "build", str(work / "spec.yml"), "-o", str(bundle), "--signer", fpr,
                    "--no-progress"], check=True, env=env, stdout=subprocess.DEVNULL)
    target = bundle / "images/payload.bin"
    trust = ["--trust", fpr, "--gnupghome", str(home), "--no-progress"]
    subprocess.run(["cat", str(target)], check=True, stdout=subprocess.DEVNULL)  # warm the page cache
    t_sum = _best(["sha256sum", str(target)], args.repeat)
    t_ossl = (_best(["openssl", "dgst", "-sha256", str(target)], args.repeat) if shutil.which("openssl")
              else None)
    t_verify = _best([*AIRLOCK, "bundle", "verify", str(bundle), *trust], args.repeat, env=env)
    t_stage = _best([*AIRLOCK, "bundle", "stage", str(bundle), "--to", str(work / "staging"), *trust],
                    args.repeat, env=env, cleanup=work / "staging")
    mib = args.size_mib
    rows = [("sha256sum", t_sum), ("airlock bundle verify", t_verify), ("airlock bundle stage", t_stage)]
    if t_ossl is not None:
        rows.insert(1, ("openssl dgst -sha256", t_ossl))
    print(f"| {mib} MiB payload, warm cache, best of {args.repeat} | seconds | MiB/s | vs sha256sum |")
    print("|---|---:|---:|---:|")
    for name, t in rows:
        print(f"| {name} | {t:.2f} | {mib / t:.0f} | {t_sum / t:.2f}x |")
    print(f"\ncpus: {os.cpu_count()}, python {sys.version.split()[0]}")
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False)
    shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
