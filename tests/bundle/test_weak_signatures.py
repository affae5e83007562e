"""Issue 14, class 6: signatures gpg itself still accepts but Airlock refuses. Every signature here is
made with the plain gpg CLI: SHA-1 / SHA-224 digests, a 1024-bit RSA key, text-mode (0x01)
signatures (which survive CRLF conversion), and a signature that expired; the controls pass."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from airlock.bundle.manifest import MANIFEST_NAME, SIGNATURE_NAME
from airlock.bundle.signing import MIN_KEY_BITS, Trust, verify_signature
from airlock.errors import SignatureError
from tests.bundle.conftest import BundleFactory, Keys, airlock_cmd
from tests.support import require_tool

PAST = "20200101T120000"


class Signers:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.fpr: dict[str, str] = {}

    def gpg(self, *args: str, input: bytes | None = None) -> bytes:
        cmd = ["gpg", "--batch", "--yes", "--no-tty", "--homedir", str(self.home), *args]
        return subprocess.run(cmd, input=input, check=True, capture_output=True).stdout

    def add(self, name: str, algo: str, *, past: bool = False) -> None:
        faked = ["--faked-system-time", PAST + "!"] if past else []
        self.gpg(*faked, "--passphrase", "", "--quick-gen-key", f"{name} <{name}@weak.test>", algo, "sign",
                 "never")
        out = self.gpg("--with-colons", "--list-keys", f"{name}@weak.test").decode()
        self.fpr[name] = next(ln.split(":")[9] for ln in out.splitlines() if ln.startswith("fpr:"))

    def sign(self, data: bytes, who: str, *extra: str) -> bytes:
        return self.gpg(*extra, "--local-user", self.fpr[who] + "!", "--armor", "--detach-sign", "--output",
                        "-", "-", input=data)

    def trust(self, who: str, tmp: Path, **kw: int) -> Trust:
        ring = tmp / f"{who}.asc"
        ring.write_bytes(self.gpg("--armor", "--export", self.fpr[who]))
        return Trust([self.fpr[who]], keyring=ring, **kw)


@pytest.fixture(scope="module")
def signers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Signers]:
    require_tool("gpg", "apt-get install gnupg")
    home = tmp_path_factory.mktemp("weak") / "home"
    home.mkdir(mode=0o700)
    s = Signers(home)
    s.add("rsa1024", "rsa1024")
    s.add("rsa2048", "rsa2048")
    s.add("ed25519", "ed25519")
    s.add("old", "ed25519", past=True)  # exists since 2020: can make a signature that expired
    yield s
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False,
                   capture_output=True)


DATA = b'{"a manifest":"bytes"}\n'


def _refused(data: bytes, sig: bytes, trust: Trust, rule: str) -> SignatureError:
    with pytest.raises(SignatureError) as err:
        verify_signature(data, sig, trust)
    assert err.value.rule == rule, err.value
    assert err.value.exit_code == 10
    return err.value


def test_controls_pass(signers: Signers, tmp_path: Path) -> None:
    for who in ("rsa2048", "ed25519"):
        info = verify_signature(DATA, signers.sign(DATA, who), signers.trust(who, tmp_path))
        assert info.primary_fingerprint == signers.fpr[who]
    verify_signature(DATA, signers.sign(DATA, "rsa2048", "--digest-algo", "SHA384"),
                     signers.trust("rsa2048", tmp_path))


@pytest.mark.parametrize("digest", ["SHA1", "SHA224", "RIPEMD160"])
def test_weak_digest_refused(digest: str, signers: Signers, tmp_path: Path) -> None:
    sig = signers.sign(DATA, "rsa2048", "--digest-algo", digest)
    err = _refused(DATA, sig, signers.trust("rsa2048", tmp_path), "weak-digest")
    assert digest in str(err) and "SHA-256" in str(err)


def test_rsa_1024_key_refused(signers: Signers, tmp_path: Path) -> None:
    sig = signers.sign(DATA, "rsa1024", "--digest-algo", "SHA256")
    err = _refused(DATA, sig, signers.trust("rsa1024", tmp_path), "weak-key")
    assert "1024 bits" in str(err)


def test_minimum_key_size_configurable_upward_only(signers: Signers, tmp_path: Path) -> None:
    sig = signers.sign(DATA, "rsa2048")
    _refused(DATA, sig, signers.trust("rsa2048", tmp_path, min_key_bits=3072), "weak-key")
    with pytest.raises(SignatureError) as err:
        signers.trust("rsa2048", tmp_path, min_key_bits=MIN_KEY_BITS - 1024)
    assert err.value.rule == "weak-policy"


def test_text_mode_signature_refused_even_after_crlf(signers: Signers, tmp_path: Path) -> None:
    text = b'{"a":1}\n{"b":2}\n'
    sig = signers.sign(text, "ed25519", "--textmode")
    trust = signers.trust("ed25519", tmp_path)
    _refused(text, sig, trust, "signature-class")
    _refused(text.replace(b"\n", b"\r\n"), sig, trust, "signature-class")  # gpg alone would accept this


def test_expired_signature_says_expired(signers: Signers, tmp_path: Path) -> None:
    sig = signers.sign(DATA, "old", "--faked-system-time", PAST + "!", "--default-sig-expire", "1d")
    err = _refused(DATA, sig, signers.trust("old", tmp_path), "signature-expired")
    assert "expired" in str(err) and "valid until 2020-01-02" in str(err)
    assert "signature valid" not in str(err)


def test_cli_expired_and_weak(signers: Signers, factory: BundleFactory, keys: Keys, tmp_path: Path) -> None:
    """End to end through `airlock bundle verify`: exit 10, one line naming the reason."""
    bundle = factory.build()
    data = (bundle / MANIFEST_NAME).read_bytes()
    ring = tmp_path / "ring.asc"
    cases = {"expired": ("old", ["--faked-system-time", PAST + "!", "--default-sig-expire", "1d"]),
             "SHA1": ("rsa2048", ["--digest-algo", "SHA1"]), "1024 bits": ("rsa1024", []),
             "0x01": ("ed25519", ["--textmode"])}
    for word, (who, extra) in cases.items():
        os.chmod(bundle / SIGNATURE_NAME, 0o644)
        (bundle / SIGNATURE_NAME).write_bytes(signers.sign(data, who, *extra))
        ring.write_bytes(signers.gpg("--armor", "--export", signers.fpr[who]))
        r = subprocess.run([*airlock_cmd(), "bundle", "verify", str(bundle), "--trust", signers.fpr[who],
                            "--keyring", str(ring)], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "AIRLOCK_PROFILE_FILE": "/nonexistent"})
        assert r.returncode == 10, r.stderr
        assert word in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
