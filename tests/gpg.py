"""Real gpg keys in a throwaway GNUPGHOME (ed25519, no passphrase): a signer, an other, a revoked and
an expired key, for every package that signs or verifies bundles (the ``keys`` fixture in
tests/conftest.py)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from airlock.bundle import Trust

PAST = "20200101T000000"


@dataclass
class Keys:
    home: Path  # secret keys of every signer (never revoked here)
    fpr: dict[str, str]
    public: dict[str, Path]  # armoured public key per name ("revoked" carries its revocation)
    scratch: Path
    _n: list[int] = field(default_factory=lambda: [0])

    def gpg(self, *args: str, home: Path | None = None, input: bytes | None = None) -> bytes:
        cmd = ["gpg", "--batch", "--yes", "--no-tty", "--homedir", str(home or self.home), *args]
        return subprocess.run(cmd, input=input, check=True, capture_output=True).stdout

    def sign(self, data: bytes, who: str) -> bytes:
        """A detached armoured signature made with the plain gpg CLI."""
        extra = ["--faked-system-time", PAST.replace("0000", "1200", 1) + "!"] if who == "expired" else []
        return self.gpg(*extra, "--local-user", self.fpr[who] + "!", "--armor", "--detach-sign",
                        "--output", "-", "-", input=data)

    def keyring(self, *names: str) -> Path:
        self._n[0] += 1
        path = self.scratch / f"keyring-{self._n[0]}.asc"
        path.write_bytes(b"".join(self.public[n].read_bytes() for n in names))
        return path

    def trust(self, pinned: list[str], *in_keyring: str) -> Trust:
        return Trust([self.fpr.get(p, p) for p in pinned], keyring=self.keyring(*in_keyring))

    def homes(self) -> list[Path]:
        return [self.home, self.scratch / "side"]


def _fingerprint(keys: Keys, uid: str) -> str:
    out = keys.gpg("--with-colons", "--list-keys", uid).decode()
    return next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))


def make_keys(base: Path) -> Keys:
    """Generate the four keys under ``base`` (gpg must be installed)."""
    home = base / "home"
    home.mkdir(mode=0o700)
    k = Keys(home=home, fpr={}, public={}, scratch=base)
    for name in ("signer", "other", "revoked"):
        k.gpg("--passphrase", "", "--quick-gen-key", f"Airlock {name} <{name}@airlock.test>",
              "ed25519", "sign", "never")
        k.fpr[name] = _fingerprint(k, f"{name}@airlock.test")
    # a key that expired long ago: created and used at a faked time in the past
    k.gpg("--faked-system-time", PAST + "!", "--passphrase", "", "--quick-gen-key",
          "Airlock expired <expired@airlock.test>", "ed25519", "sign", "2d")
    k.fpr["expired"] = _fingerprint(k, "expired@airlock.test")
    for name in ("signer", "other", "expired"):
        k.public[name] = base / f"{name}.asc"
        k.public[name].write_bytes(k.gpg("--armor", "--export", k.fpr[name]))
    # the revoked key's public part, with its revocation certificate applied, exported from a side home
    side = base / "side"
    side.mkdir(mode=0o700)
    k.gpg("--import", home=side, input=k.gpg("--armor", "--export", k.fpr["revoked"]))
    rev = (home / "openpgp-revocs.d" / f"{k.fpr['revoked']}.rev").read_text()
    rev = rev.replace(":-----BEGIN PGP PUBLIC KEY BLOCK-----", "-----BEGIN PGP PUBLIC KEY BLOCK-----")
    k.gpg("--import", home=side, input=rev.encode())
    k.public["revoked"] = base / "revoked.asc"
    k.public["revoked"].write_bytes(k.gpg("--armor", "--export", k.fpr["revoked"], home=side))
    return k


def kill_agents(keys: Keys) -> None:
    for h in keys.homes():
        subprocess.run(["gpgconf", "--homedir", str(h), "--kill", "gpg-agent"], check=False,
                       capture_output=True)
