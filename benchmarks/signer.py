"""A throwaway gpg signing key for a benchmark run (the benchmarks build and verify real signed
bundles; the key lives in the run's work directory and dies with it)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def throwaway_signer(work: Path) -> tuple[str, Path, Path]:
    """(fingerprint, GNUPGHOME, exported public key) of a fresh ed25519 signing key."""
    home = work / "gnupg"
    home.mkdir(mode=0o700)
    gpg = ["gpg", "--batch", "--homedir", str(home)]
    subprocess.run([*gpg, "--passphrase", "", "--quick-gen-key", "Bench <b@airlock.test>", "ed25519", "sign",
                    "never"], check=True, capture_output=True)
    listing = subprocess.run([*gpg, "--with-colons", "--list-keys"], check=True, capture_output=True,
                             text=True)
    fpr = next(line.split(":")[9] for line in listing.stdout.splitlines() if line.startswith("fpr:"))
    ring = work / "signer.asc"
    exported = subprocess.run([*gpg, "--armor", "--export", fpr], check=True, capture_output=True)
    ring.write_bytes(exported.stdout)
    return fpr, home, ring
