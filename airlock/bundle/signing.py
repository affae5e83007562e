"""GPG signing and fail-closed verification of the manifest bytes (python-gnupg over real gpg)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import gnupg

from airlock.errors import SignatureError


@dataclass
class Trust:
    """Pinned signer fingerprints (primary keys; signatures by their valid subkeys are accepted) and
    where their public keys are: a keyring file (imported into a throwaway GNUPGHOME, so the
    caller's keyring is never touched) or an existing GNUPGHOME."""

    fingerprints: list[str]
    gnupghome: Path | None = None
    keyring: Path | None = None

    def pinned(self) -> set[str]:
        return {normalise_fpr(f) for f in self.fingerprints}


@dataclass
class SignerInfo:
    fingerprint: str
    primary_fingerprint: str
    username: str | None
    signed_at: str | None
    details: dict[str, str] = field(default_factory=dict)


def normalise_fpr(fpr: str) -> str:
    return "".join(fpr.split()).upper().removeprefix("0X")


def _gpg(home: Path) -> gnupg.GPG:
    return gnupg.GPG(gnupghome=str(home))


@contextlib.contextmanager
def verification_home(trust: Trust) -> Iterator[Path]:
    if trust.keyring is not None:
        keyring = Path(trust.keyring)
        if not keyring.is_file():
            raise SignatureError(f"{keyring}: trusted keyring not found", path=str(keyring),
                                 rule="no-keyring")
        tmp = Path(tempfile.mkdtemp(prefix="airlock-gpg-"))
        try:
            os.chmod(tmp, 0o700)
            result = _gpg(tmp).import_keys(keyring.read_bytes())
            if not result.fingerprints:
                raise SignatureError(f"{keyring}: no public key could be imported", path=str(keyring),
                                     rule="no-keyring")
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    home = trust.gnupghome or (Path(os.environ["GNUPGHOME"]) if os.environ.get("GNUPGHOME") else None)
    if home is None or not Path(home).is_dir():
        raise SignatureError("no trusted keyring given (--keyring FILE or --gnupghome DIR)",
                             rule="no-keyring")
    yield Path(home)


def verify_signature(data: bytes, signature: bytes | None, trust: Trust, *, name: str = "MANIFEST.json"
                     ) -> SignerInfo:
    """Verify the detached ``signature`` over exactly ``data``; fail closed on anything but one good
    signature by a valid (unexpired, unrevoked) key whose primary fingerprint is pinned."""
    sig_name = f"{name}.asc"
    pinned = trust.pinned()
    if not pinned:
        raise SignatureError(f"{sig_name}: no pinned signer fingerprint given", path=sig_name,
                             rule="no-trust")
    if signature is None:
        raise SignatureError(f"{sig_name}: no signature", path=sig_name, rule="no-signature")
    if not signature.strip():
        raise SignatureError(f"{sig_name}: empty signature", path=sig_name, rule="no-signature")
    # only a detached, armoured signature: an inline-signed or clearsigned message carries its own data
    if (not signature.lstrip().startswith(b"-----BEGIN PGP SIGNATURE-----")
            or signature.count(b"-----BEGIN PGP") != 1):
        raise SignatureError(f"{sig_name}: not a detached ASCII-armoured signature", path=sig_name,
                             rule="bad-signature")
    with verification_home(trust) as home, tempfile.TemporaryDirectory(prefix="airlock-sig-") as td:
        sig_path = Path(td) / "sig.asc"
        sig_path.write_bytes(signature)
        result = _gpg(home).verify_data(str(sig_path), data)
    problems = [p.get("status", "") for p in result.problems]
    if result.key_status:
        raise SignatureError(f"{sig_name}: {result.key_status} (key {result.key_id})", path=sig_name,
                             rule="key-expired" if "expired" in result.key_status else "key-revoked")
    if any(s == "no public key" for s in problems):
        raise SignatureError(f"{sig_name}: signer key {result.key_id} is not in the trusted keyring",
                             path=sig_name, rule="unknown-signer")
    if len(result.sig_info) > 1:
        raise SignatureError(f"{sig_name}: {len(result.sig_info)} signatures; exactly one is accepted",
                             path=sig_name, rule="bad-signature")
    if not result.valid or problems or not result.fingerprint:
        status = result.status or "no valid signature"
        raise SignatureError(f"{sig_name}: {status}", path=sig_name, rule="bad-signature")
    fpr = normalise_fpr(result.fingerprint)
    primary = normalise_fpr(result.pubkey_fingerprint or result.fingerprint)
    if primary not in pinned and fpr not in pinned:
        raise SignatureError(f"{sig_name}: signed by {primary}, which is not a pinned signer", path=sig_name,
                             rule="untrusted-signer")
    return SignerInfo(fingerprint=fpr, primary_fingerprint=primary, username=result.username,
                      signed_at=result.sig_timestamp)


def read_passphrase(passphrase_file: Path | None) -> str | None:
    """The passphrase comes from a file (or $AIRLOCK_GPG_PASSPHRASE_FILE), never a command line."""
    path = passphrase_file or (Path(os.environ["AIRLOCK_GPG_PASSPHRASE_FILE"])
                               if os.environ.get("AIRLOCK_GPG_PASSPHRASE_FILE") else None)
    if path is None:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SignatureError(f"{path}: cannot read passphrase file ({exc.strerror})", path=str(path),
                             rule="passphrase") from exc
    return text.rstrip("\r\n")


def sign_bytes(data: bytes, signer: str, *, gnupghome: Path | None = None,
               passphrase_file: Path | None = None) -> bytes:
    """Detached, ASCII-armoured signature over ``data`` by the key with fingerprint ``signer``."""
    home = gnupghome or (Path(os.environ["GNUPGHOME"]) if os.environ.get("GNUPGHOME") else None)
    gpg = gnupg.GPG(gnupghome=str(home)) if home else gnupg.GPG()
    fpr = normalise_fpr(signer)
    secret = {normalise_fpr(k["fingerprint"]) for k in gpg.list_keys(secret=True)}
    if fpr not in secret:
        raise SignatureError(f"signer {fpr}: no secret key with this fingerprint in the keyring",
                             path=str(home) if home else None, rule="signer")
    # python-gnupg sends --passphrase-fd 0 for any non-None passphrase but writes only a non-empty one,
    # so an empty string would make gpg read the first line of the data as the passphrase.
    passphrase = read_passphrase(passphrase_file) or None
    result = gpg.sign(data, keyid=fpr, detach=True, binary=False, passphrase=passphrase,
                      extra_args=["--digest-algo", "SHA512"])
    if not result.data:
        raise SignatureError(f"signer {fpr}: gpg could not sign ({result.status})", rule="signer")
    sig = bytes(result.data)
    with tempfile.TemporaryDirectory(prefix="airlock-selfcheck-") as td:
        exported = gpg.export_keys(fpr)
        keyring = Path(td) / "signer.asc"
        keyring.write_text(exported)
        verify_signature(data, sig, Trust([fpr], keyring=keyring))
    return sig
