"""Real gpg keys in a throwaway GNUPGHOME (ed25519, no passphrase), and small real bundles."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from airlock.bundle import Trust, build_bundle
from tests.support import require_tool

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


def _fingerprint(keys: Keys, uid: str) -> str:
    out = keys.gpg("--with-colons", "--list-keys", uid).decode()
    return next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    require_tool("gpg", "apt-get install gnupg")
    base = tmp_path_factory.mktemp("gpg")
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
    yield k
    for h in (home, side):
        subprocess.run(["gpgconf", "--homedir", str(h), "--kill", "gpg-agent"], check=False,
                       capture_output=True)


BLOCK = 4096


def make_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def payload(n: int, seed: int = 0) -> bytes:
    import random

    return random.Random(seed).randbytes(n)


@dataclass
class BundleFactory:
    keys: Keys
    tmp: Path
    _n: list[int] = field(default_factory=lambda: [0])

    def spec(self, *, sequence: int = 5, rollback: bool = False, compatible: str = "appliance-test",
             split_size: int = 10_000, model_files: dict[str, bytes] | None = None,
             extra: dict[str, bytes] | None = None) -> Path:
        self._n[0] += 1
        work = self.tmp / f"src-{self._n[0]}"
        make_tree(work / "model", model_files or {
            "config.json": b'{"hidden": 8}\n',
            "model.safetensors": payload(3 * BLOCK + 123, 1),
            "big.bin": payload(25_000, 2),  # split into 3 parts at 10_000
        })
        spec: dict[str, object] = {
            "compatible": compatible, "sequence": sequence, "rollback": rollback, "block_size": BLOCK,
            "split_size": split_size,
            "models": [{"name": "minilm", "version": "1.0.0", "path": "model",
                        "golden": {"input": "hello", "expected": [0.1, 0.2], "tolerance": 0.01}}],
        }
        if extra:
            make_tree(work / "extra", extra)
            spec["files"] = [{"src": f"extra/{rel}", "dest": f"files/{rel}"} for rel in extra]
        path = work / "bundle.yml"
        path.write_text(yaml.safe_dump(spec))
        return path

    def build(self, name: str = "bundle", **kw: object) -> Path:
        out = self.tmp / f"{name}-{self._n[0] + 1}"
        build_bundle(self.spec(**kw), out, signer=self.keys.fpr["signer"], gnupghome=self.keys.home)  # type: ignore[arg-type]
        return out


@pytest.fixture
def factory(keys: Keys, tmp_path: Path) -> BundleFactory:
    return BundleFactory(keys, tmp_path)


@pytest.fixture
def trust(keys: Keys) -> Trust:
    return keys.trust(["signer"], "signer")


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under root with (mode, size): to prove nothing changed outside staging."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_size)
    return out


Run = Callable[..., subprocess.CompletedProcess[str]]


def airlock_cmd() -> list[str]:
    exe = Path(shutil.which("airlock") or Path(__file__).resolve().parents[2] / ".venv/bin/airlock")
    return [str(exe)]
