"""A real SoftHSM2 token in a private token directory (the ``softhsm`` fixture in tests/conftest.py)."""

from __future__ import annotations

import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"


def write_secret(path: Path, value: str) -> Path:
    """A secret in a new 0600 file (never on a command line)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value)
    return path


@dataclass
class SoftHsm:
    conf: Path
    label: str
    pin: str
    pin_file: Path

    def provider_config(self) -> dict[str, object]:
        return {
            "type": "pkcs11",
            "module": SOFTHSM_MODULE,
            "token_label": self.label,
            "pin_file": str(self.pin_file),
        }


def make_softhsm(util: str, work: Path) -> SoftHsm:
    """Initialise a fresh token under ``work`` with ``softhsm2-util`` (SOFTHSM2_CONF = ``.conf``)."""
    tokendir = work / "tokens"
    tokendir.mkdir()
    conf = work / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokendir}\nobjectstore.backend = file\nlog.level = ERROR\n")
    label = f"airlock-{secrets.token_hex(4)}"
    pin, so_pin = secrets.token_hex(8), secrets.token_hex(8)
    # softhsm2-util only takes PINs as arguments; this is test setup of a throwaway token, the product
    # itself reads PINs from files. Run it once, then the PIN lives only in the 0600 file.
    subprocess.run(
        [util, "--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", so_pin],
        check=True,
        capture_output=True,
        env={**os.environ, "SOFTHSM2_CONF": str(conf)},
    )
    return SoftHsm(conf, label, pin, write_secret(work / "hsm.pin", pin))
