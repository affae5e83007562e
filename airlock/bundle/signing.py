"""GPG signing and fail-closed verification of the manifest bytes (python-gnupg over real gpg)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import gnupg

from airlock import settings
from airlock.errors import SignatureError

# Signature policy (docs/bundle-format.md, "Signature"): what gpg alone would still accept is refused.
MIN_KEY_BITS = 2048  # RSA, DSA and Elgamal keys; configurable upward only (Trust.min_key_bits)
MIN_ECC_BITS = 255  # Ed25519 / Curve25519; NIST P-256 and brainpool 256 are 256
STRONG_DIGESTS = {8: "SHA256", 9: "SHA384", 10: "SHA512"}  # OpenPGP hash algorithm ids
WEAK_DIGESTS = {1: "MD5", 2: "SHA1", 3: "RIPEMD160", 11: "SHA224"}
BINARY_DOCUMENT = "00"  # signature class: a text-mode (01) signature survives CRLF conversion
_ECC_ALGOS = frozenset({18, 19, 22})  # ECDH, ECDSA, EdDSA


class SecurityWarning(UserWarning):
    """Something works but should not be so (shown as one ``warning:`` line by the CLI)."""


@dataclass
class Trust:
    """Pinned signer fingerprints (primary keys; signatures by their valid subkeys are accepted) and
    where their public keys are: a keyring file (imported into a throwaway GNUPGHOME, so the
    caller's keyring is never touched) or an existing GNUPGHOME. ``min_key_bits`` may be raised
    above ``MIN_KEY_BITS``, never lowered."""

    fingerprints: list[str]
    gnupghome: Path | None = None
    keyring: Path | None = None
    min_key_bits: int = MIN_KEY_BITS

    def __post_init__(self) -> None:
        if self.min_key_bits < MIN_KEY_BITS:
            raise SignatureError(f"minimum key size {self.min_key_bits} bits is below Airlock's floor of "
                                 f"{MIN_KEY_BITS} (it can only be raised)", rule="weak-policy")

    def pinned(self) -> set[str]:
        """The pinned fingerprints; a short key ID or anything but a full fingerprint is refused (a
        short ID can be forged in minutes, a typo would only ever say 'not pinned')."""
        out = set()
        for f in self.fingerprints:
            fpr = normalise_fpr(f)
            if len(fpr) not in (40, 64) or any(c not in "0123456789ABCDEF" for c in fpr):
                kind = "a short key ID" if len(fpr) in (8, 16) else "not a fingerprint"
                raise SignatureError(f"--trust {f!r} is {kind}: pin the full 40-hex fingerprint of the "
                                     "release key's primary key (gpg --fingerprint), as given by the "
                                     "release engineer", rule="trust-format")
            out.add(fpr)
        return out


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
        if keyring.is_dir():
            raise SignatureError(f"{keyring}: is a directory, not a keyring file: pass a GnuPG home with "
                                 "--gnupghome DIR, or an exported public key (gpg --armor --export FPR > "
                                 "release.asc) with --keyring FILE", path=str(keyring), rule="no-keyring")
        if not keyring.is_file():
            raise SignatureError(f"{keyring}: trusted keyring not found", path=str(keyring),
                                 rule="no-keyring")
        tmp = Path(tempfile.mkdtemp(prefix="airlock-gpg-"))
        try:
            os.chmod(tmp, 0o700)
            raw = keyring.read_bytes()
            result = _gpg(tmp).import_keys(raw)
            if not result.fingerprints:
                hint = (f": this is a GnuPG keybox; pass its directory with --gnupghome {keyring.parent}"
                        if raw[8:12] == b"KBXf" else " (expected an exported public key: gpg --armor "
                        "--export FPR > release.asc)")
                raise SignatureError(f"{keyring}: no public key could be imported{hint}", path=str(keyring),
                                     rule="no-keyring")
            if int(getattr(result, "sec_read", 0) or 0):
                warnings.warn(f"{keyring}: holds secret keys; a trusted keyring needs only public keys "
                              "(export with gpg --armor --export FPR, never --export-secret-keys) and a "
                              "secret key does not belong on the site's machines", SecurityWarning,
                              stacklevel=2)
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    home = trust.gnupghome or settings.gnupghome()
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
        keys = _key_sizes(home, result.pubkey_fingerprint or result.fingerprint)
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
    if "signature expired" in problems:
        raise SignatureError(f"{sig_name}: signature expired (made {_when(result.sig_timestamp)}, valid "
                             f"until {_when(result.expire_timestamp)}); ask for a newly signed bundle",
                             path=sig_name, rule="signature-expired")
    if not result.valid or problems or not result.fingerprint:
        status = problems[0] if problems else (result.status or "no valid signature")
        raise SignatureError(f"{sig_name}: {status}", path=sig_name, rule="bad-signature")
    fpr = normalise_fpr(result.fingerprint)
    primary = normalise_fpr(result.pubkey_fingerprint or result.fingerprint)
    if primary not in pinned and fpr not in pinned:
        raise SignatureError(f"{sig_name}: signed by key {primary[-16:]}, which is not a pinned signer "
                             f"(pinned: {', '.join(sorted(pinned))}); check the pinned fingerprint against "
                             "the release notes, not against this message", path=sig_name,
                             rule="untrusted-signer")
    _check_strength(sig_name, result.stderr or "", trust, keys, primary, fpr)
    return SignerInfo(fingerprint=fpr, primary_fingerprint=primary, username=result.username,
                      signed_at=result.sig_timestamp)


def _when(ts: str | None) -> str:
    if not ts or not ts.isdigit() or ts == "0":
        return "?"
    from datetime import UTC, datetime

    return datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _key_sizes(home: Path, primary: str | None) -> dict[str, tuple[int, int]]:
    """Fingerprint -> (algorithm id, bits) of the primary key and its subkeys, from gpg's colon list."""
    if not primary:
        return {}
    proc = subprocess.run(["gpg", "--homedir", str(home), "--batch", "--no-tty", "--with-colons",
                           "--fixed-list-mode", "--list-keys", "--", primary],
                          capture_output=True, text=True, check=False, timeout=60)
    out: dict[str, tuple[int, int]] = {}
    pending: tuple[int, int] | None = None
    for line in proc.stdout.splitlines():
        f = line.split(":")
        if f[0] in ("pub", "sub") and len(f) > 3:
            pending = (int(f[3] or 0), int(f[2] or 0))
        elif f[0] == "fpr" and pending is not None and len(f) > 9:
            out[normalise_fpr(f[9])] = pending
            pending = None
    return out


def _check_strength(sig_name: str, status: str, trust: Trust, keys: dict[str, tuple[int, int]],
                    primary: str, fpr: str) -> None:
    """Refuse digests below SHA-256, any signature class but binary document, and keys below the
    minimum size (the signing key and its primary key)."""
    lines = [ln.split()[2:] for ln in status.splitlines() if ln.startswith("[GNUPG:] VALIDSIG ")]
    if len(lines) != 1 or len(lines[0]) < 9:
        raise SignatureError(f"{sig_name}: gpg reported no single valid signature", path=sig_name,
                             rule="bad-signature")
    fields = lines[0]
    hash_algo, sig_class = int(fields[7]) if fields[7].isdigit() else -1, fields[8]
    if hash_algo not in STRONG_DIGESTS:
        name = WEAK_DIGESTS.get(hash_algo, f"algorithm {hash_algo}")
        raise SignatureError(f"{sig_name}: {name} digest; signatures must use SHA-256 or stronger",
                             path=sig_name, rule="weak-digest")
    if sig_class != BINARY_DOCUMENT:
        raise SignatureError(f"{sig_name}: signature class 0x{sig_class} (text mode or other); only a "
                             "binary document signature (0x00) is accepted", path=sig_name,
                             rule="signature-class")
    for which, key in (("signing key", fpr), ("primary key", primary)):
        if key not in keys:
            raise SignatureError(f"{sig_name}: {which} {key} not listed by gpg", path=sig_name,
                                 rule="unknown-signer")
        algo, bits = keys[key]
        least = MIN_ECC_BITS if algo in _ECC_ALGOS else trust.min_key_bits
        if bits < least:
            raise SignatureError(f"{sig_name}: {which} {key} has {bits} bits; at least {least} are "
                                 "required", path=sig_name, rule="weak-key")


def read_passphrase(passphrase_file: Path | None) -> str | None:
    """The passphrase comes from a file (or $AIRLOCK_GPG_PASSPHRASE_FILE), never a command line."""
    path = passphrase_file or settings.gpg_passphrase_file()
    if path is None:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SignatureError(f"{path}: cannot read passphrase file ({exc.strerror})", path=str(path),
                             rule="passphrase") from exc
    return text.rstrip("\r\n")


def _sign_failure(stderr: str, passphrase: str | None) -> str:
    """gpg's reason, said so that the field engineer knows what to fix."""
    reasons = [line.split("signing failed:", 1)[1].strip() for line in stderr.splitlines()
               if "signing failed:" in line]
    reason = reasons[0] if reasons else "no signature"
    if "Bad passphrase" in reason:
        return "wrong passphrase (from --passphrase-file or $AIRLOCK_GPG_PASSPHRASE_FILE)"
    if passphrase is None and ("ioctl" in reason or "passphrase" in reason.lower() or "pinentry" in reason):
        return (f"the key is protected by a passphrase and none was given ({reason}): pass "
                "--passphrase-file FILE or set $AIRLOCK_GPG_PASSPHRASE_FILE")
    return f"gpg could not sign: {reason}"


def sign_bytes(data: bytes, signer: str, *, gnupghome: Path | None = None,
               passphrase_file: Path | None = None) -> bytes:
    """Detached, ASCII-armoured signature over ``data`` by the key with fingerprint ``signer``."""
    home = gnupghome or settings.gnupghome()
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
        raise SignatureError(f"signer {fpr}: {_sign_failure(result.stderr or '', passphrase)}",
                             rule="signer")
    sig = bytes(result.data)
    with tempfile.TemporaryDirectory(prefix="airlock-selfcheck-") as td:
        exported = gpg.export_keys(fpr)
        keyring = Path(td) / "signer.asc"
        keyring.write_text(exported)
        verify_signature(data, sig, Trust([fpr], keyring=keyring))
    return sig
