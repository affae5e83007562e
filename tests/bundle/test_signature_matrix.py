"""{no key, wrong key, expired, revoked, right key not pinned, right key pinned} x {no, bad, good sig}:
exactly one cell verifies. Plus subkeys, double signatures and a missing keyring."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from airlock.bundle import Trust, verify_bundle
from airlock.bundle.manifest import MANIFEST_NAME, SIGNATURE_NAME
from airlock.errors import SignatureError
from tests.bundle.conftest import BundleFactory, Keys

# key state -> (who signs, pinned, keys in the trusted keyring)
KEY_STATES: dict[str, tuple[str, list[str], list[str]]] = {
    "no-key": ("signer", ["signer"], ["other"]),
    "wrong-key": ("other", ["signer"], ["signer", "other"]),
    "expired-key": ("expired", ["expired"], ["expired"]),
    "revoked-key": ("revoked", ["revoked"], ["revoked"]),
    "right-key-not-pinned": ("signer", ["other"], ["signer", "other"]),
    "right-key-pinned": ("signer", ["signer"], ["signer"]),
}
GOOD_SIG_RULE = {
    "no-key": "unknown-signer", "wrong-key": "untrusted-signer", "expired-key": "key-expired",
    "revoked-key": "key-revoked", "right-key-not-pinned": "untrusted-signer",
}


@pytest.fixture(scope="module")
def base_bundle(keys: Keys, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return BundleFactory(keys, tmp_path_factory.mktemp("matrix")).build()


@pytest.mark.parametrize("sig_state", ["no-sig", "bad-sig", "good-sig"])
@pytest.mark.parametrize("key_state", list(KEY_STATES))
def test_signature_matrix(key_state: str, sig_state: str, keys: Keys, base_bundle: Path,
                          tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    shutil.copytree(base_bundle, bundle)
    who, pinned, ring = KEY_STATES[key_state]
    data = (bundle / MANIFEST_NAME).read_bytes()
    sig_path = bundle / SIGNATURE_NAME
    if sig_state == "no-sig":
        sig_path.unlink()
    elif sig_state == "bad-sig":  # a real signature by the same key, over other bytes
        sig_path.write_bytes(keys.sign(data.replace(b'"sequence":5', b'"sequence":9'), who))
    else:
        sig_path.write_bytes(keys.sign(data, who))
    trust = keys.trust(pinned, *ring)
    if key_state == "right-key-pinned" and sig_state == "good-sig":
        report = verify_bundle(bundle, trust)
        assert report.signer.primary_fingerprint == keys.fpr["signer"]
        return
    with pytest.raises(SignatureError) as err:
        verify_bundle(bundle, trust)
    assert err.value.exit_code == 10 and err.value.path == SIGNATURE_NAME
    if sig_state == "no-sig":
        assert err.value.rule == "no-signature"
    elif sig_state == "good-sig":
        assert err.value.rule == GOOD_SIG_RULE[key_state]
    else:
        assert err.value.rule in ("bad-signature", "unknown-signer", "key-expired", "key-revoked")


def test_signing_subkey_of_a_pinned_primary_is_accepted(keys: Keys, base_bundle: Path,
                                                         tmp_path: Path) -> None:
    home = tmp_path / "g"
    home.mkdir(mode=0o700)
    keys.gpg("--passphrase", "", "--quick-gen-key", "Sub <sub@airlock.test>", "ed25519", "cert", "never",
             home=home)
    out = keys.gpg("--with-colons", "--list-keys", "sub@airlock.test", home=home).decode()
    primary = next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))
    keys.gpg("--passphrase", "", "--quick-add-key", primary, "ed25519", "sign", "never", home=home)
    out = keys.gpg("--with-colons", "--list-keys", primary, home=home).decode()
    sub = [line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:")][1]
    bundle = tmp_path / "b"
    shutil.copytree(base_bundle, bundle)
    data = (bundle / MANIFEST_NAME).read_bytes()
    (bundle / SIGNATURE_NAME).write_bytes(keys.gpg("--local-user", primary, "--armor", "--detach-sign",
                                                   "--output", "-", "-", home=home, input=data))
    ring = tmp_path / "ring.asc"
    ring.write_bytes(keys.gpg("--armor", "--export", primary, home=home))
    report = verify_bundle(bundle, Trust([primary], keyring=ring))
    assert report.signer.primary_fingerprint == primary and report.signer.fingerprint == sub
    with pytest.raises(SignatureError):
        verify_bundle(bundle, Trust([keys.fpr["signer"]], keyring=ring))
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False)


def test_two_signatures_are_refused(keys: Keys, base_bundle: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    shutil.copytree(base_bundle, bundle)
    data = (bundle / MANIFEST_NAME).read_bytes()
    both = keys.gpg("--local-user", keys.fpr["signer"] + "!", "--local-user", keys.fpr["other"] + "!",
                    "--armor", "--detach-sign", "--output", "-", "-", input=data)
    (bundle / SIGNATURE_NAME).write_bytes(both)
    with pytest.raises(SignatureError):
        verify_bundle(bundle, keys.trust(["signer"], "signer", "other"))


def test_no_keyring_fails_closed(base_bundle: Path, keys: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GNUPGHOME", raising=False)
    with pytest.raises(SignatureError) as err:
        verify_bundle(base_bundle, Trust([keys.fpr["signer"]]))
    assert err.value.rule == "no-keyring"
    with pytest.raises(SignatureError) as err:
        verify_bundle(base_bundle, Trust([], keyring=keys.keyring("signer")))
    assert err.value.rule == "no-trust"


@pytest.mark.parametrize("how", ["--sign", "--clearsign", "binary-detached"])
def test_signature_that_carries_its_own_data_is_refused(how: str, keys: Keys, base_bundle: Path,
                                                        tmp_path: Path) -> None:
    """An inline-signed or clearsigned message by the pinned key, over other bytes, must not pass for
    a detached signature of the manifest; a binary detached signature is not the format either."""
    bundle = tmp_path / "b"
    shutil.copytree(base_bundle, bundle)
    if how == "binary-detached":
        sig = keys.gpg("--local-user", keys.fpr["signer"], "--detach-sign", "--output", "-", "-",
                       input=(bundle / MANIFEST_NAME).read_bytes())
    else:
        sig = keys.gpg("--local-user", keys.fpr["signer"], "--armor", how, "--output", "-", "-",
                       input=b"harmless other content\n")
    (bundle / SIGNATURE_NAME).write_bytes(sig)
    with pytest.raises(SignatureError) as err:
        verify_bundle(bundle, keys.trust(["signer"], "signer"))
    assert err.value.rule == "bad-signature"
