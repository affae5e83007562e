"""A throwaway release-signing key for the embedded demo (a real release key lives offline)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import gnupg

DEMO_UID = "Airlock Demo Release <release@airlock.invalid>"


def ensure_demo_key(gnupghome: Path) -> str:
    """Create (once) an unprotected ed25519 signing key in ``gnupghome``; return its fingerprint."""
    gnupghome.mkdir(parents=True, exist_ok=True)
    os.chmod(gnupghome, 0o700)
    gpg = gnupg.GPG(gnupghome=str(gnupghome))
    for key in gpg.list_keys(secret=True):
        if DEMO_UID in key.get("uids", []):
            return str(key["fingerprint"])
    subprocess.run(
        ["gpg", "--homedir", str(gnupghome), "--batch", "--pinentry-mode", "loopback", "--passphrase", "",
         "--quick-gen-key", DEMO_UID, "ed25519", "sign", "never"],
        check=True, capture_output=True,
    )
    for key in gpg.list_keys(secret=True):
        if DEMO_UID in key.get("uids", []):
            return str(key["fingerprint"])
    raise RuntimeError(f"gpg did not create the demo key in {gnupghome}")


def export_public_key(gnupghome: Path, fingerprint: str, dest: Path) -> Path:
    """The public key a field engineer imports as the pinned trust anchor."""
    gpg = gnupg.GPG(gnupghome=str(gnupghome))
    dest.write_text(gpg.export_keys(fingerprint))
    return dest
