"""Key providers against real components: SoftHSM2 over PKCS#11, the hvac client against the Vault
transit edge mock (no Vault/OpenBao server is installable here; see vault_edge_mock.py)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
import yaml

from airlock.crypto import (
    KeyProviderError,
    KeyRef,
    ProviderRegistry,
    WrongKeyError,
    decrypt_file,
    encrypt_file,
    open_decrypted,
    read_encrypted_header,
)
from tests.crypto.conftest import KeyEnv, SoftHsm, airlock_cli
from tests.crypto.vault_edge_mock import TransitEdgeMock


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("ref", ["hsm:kek-a", "vault:t1", "dev:k1"])
def test_round_trip_through_each_provider(all_env: KeyEnv, tmp_path: Path, ref: str) -> None:
    src = tmp_path / "weights.bin"
    src.write_bytes(os.urandom(70_000))
    key = KeyRef.parse(ref)
    encrypt_file(src, tmp_path / "w.enc", all_env.registry.get(key.provider), key.key_id, chunk_size=16384)
    hdr = read_encrypted_header(tmp_path / "w.enc")
    assert (hdr.provider, hdr.key_id) == (key.provider, key.key_id)
    # A fresh registry from the config file (as the CLI builds it) opens it.
    fresh = ProviderRegistry.load(all_env.config)
    decrypt_file(tmp_path / "w.enc", tmp_path / "w.out", fresh)
    assert (tmp_path / "w.out").read_bytes() == src.read_bytes()


def test_hsm_kek_is_non_extractable_and_unwrap_needs_the_right_key(
    all_env: KeyEnv, softhsm: SoftHsm, tmp_path: Path
) -> None:
    import pkcs11
    from pkcs11 import Attribute

    hsm = all_env.registry.get("hsm")
    wrapped = hsm.wrap("kek-a", b"\x11" * 32)
    assert len(wrapped) == 40 and b"\x11" * 8 not in wrapped
    assert hsm.unwrap("kek-a", wrapped) == b"\x11" * 32
    with pytest.raises(WrongKeyError, match="does not unwrap"):
        hsm.unwrap("kek-b", wrapped)
    with pytest.raises(KeyProviderError, match="no AES key labelled 'nope'"):
        hsm.wrap("nope", b"\x11" * 32)
    with pytest.raises(KeyProviderError, match="already exists"):
        hsm.generate("kek-a")
    lib = pkcs11.lib("/usr/lib/softhsm/libsofthsm2.so")
    with lib.get_token(token_label=softhsm.label).open(user_pin=softhsm.pin) as session:
        (kek,) = session.get_objects({Attribute.LABEL: "kek-a"})
        assert kek[Attribute.EXTRACTABLE] is False and kek[Attribute.SENSITIVE] is True
        with pytest.raises(pkcs11.PKCS11Error):
            kek[Attribute.VALUE]


def test_hsm_token_missing_or_wrong_pin_changes_nothing(
    all_env: KeyEnv, softhsm: SoftHsm, tmp_path: Path
) -> None:
    src = tmp_path / "p.bin"
    src.write_bytes(os.urandom(10_000))
    encrypt_file(src, tmp_path / "p.enc", all_env.registry.get("hsm"), "kek-a")
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(tmp_path / "p.enc", work / "p.enc")
    before = _tree_digest(work)

    wrong_pin = tmp_path / "wrong.pin"
    wrong_pin.write_text("000000")
    wrong_pin.chmod(0o600)
    conf = yaml.safe_load(all_env.config.read_text())
    conf["providers"]["hsm"]["pin_file"] = str(wrong_pin)
    conf["providers"]["gone"] = {**conf["providers"]["hsm"], "token_label": "no-such-token"}
    bad = ProviderRegistry(conf)
    with pytest.raises(KeyProviderError, match="wrong PIN"):
        decrypt_file(work / "p.enc", work / "p.out", bad)
    with pytest.raises(KeyProviderError, match="token 'no-such-token' not present"):
        encrypt_file(src, work / "new.enc", bad.get("gone"), "kek-a")
    # Token deleted from the HSM altogether (its directory removed, module re-read).
    for tok in (softhsm.conf.parent / "tokens").iterdir():
        shutil.rmtree(tok)
    with pytest.raises(KeyProviderError, match="not present"):
        decrypt_file(work / "p.enc", work / "p.out", ProviderRegistry.load(all_env.config))
    assert _tree_digest(work) == before


def test_hsm_pin_file_with_loose_mode_refused(all_env: KeyEnv, softhsm: SoftHsm) -> None:
    softhsm.pin_file.chmod(0o644)
    with pytest.raises(KeyProviderError, match="readable by group/others"):
        ProviderRegistry.load(all_env.config).get("hsm").wrap("kek-a", b"\0" * 32)


def test_vault_sealed_gives_clear_error_and_changes_nothing(
    all_env: KeyEnv, vault: TransitEdgeMock, tmp_path: Path
) -> None:
    src = tmp_path / "p.bin"
    src.write_bytes(os.urandom(9000))
    work = tmp_path / "work"
    work.mkdir()
    encrypt_file(src, work / "p.enc", all_env.registry.get("vault"), "t1")
    before = _tree_digest(work)
    vault.state.sealed = True
    with pytest.raises(KeyProviderError, match="sealed"):
        decrypt_file(work / "p.enc", work / "p.out", all_env.registry)
    with pytest.raises(KeyProviderError, match="sealed"):
        encrypt_file(src, work / "q.enc", all_env.registry.get("vault"), "t1")
    status = all_env.registry.get("vault").check()
    assert not status.available and "sealed" in status.detail
    assert _tree_digest(work) == before
    vault.state.sealed = False
    with open_decrypted(work / "p.enc", all_env.registry) as reader:
        assert reader.read() == src.read_bytes()


def test_vault_bad_token_and_wrong_key(all_env: KeyEnv, vault: TransitEdgeMock, tmp_path: Path) -> None:
    prov = all_env.registry.get("vault")
    wrapped = prov.wrap("t1", b"\x22" * 32)
    assert wrapped.startswith(b"vault:v1:")
    with pytest.raises(WrongKeyError):
        prov.unwrap("t2", wrapped)
    os.environ["AIRLOCK_TEST_BAD_TOKEN"] = "not-the-token"
    try:
        bad = ProviderRegistry(
            {
                "providers": {
                    "vault": {"type": "vault", "url": vault.url, "token_env": "AIRLOCK_TEST_BAD_TOKEN",
                              "allow_insecure_http": True}
                }
            }
        )
        with pytest.raises(KeyProviderError, match="may not decrypt"):
            bad.get("vault").unwrap("t1", wrapped)
    finally:
        del os.environ["AIRLOCK_TEST_BAD_TOKEN"]
    down = ProviderRegistry(
        {
            "providers": {
                "vault": {"type": "vault", "url": "http://127.0.0.1:9", "token_env": "PATH", "timeout": 2,
                          "allow_insecure_http": True}
            }
        }
    )
    with pytest.raises(KeyProviderError, match="cannot reach Vault"):
        down.get("vault").unwrap("t1", wrapped)


def test_provider_checks(all_env: KeyEnv) -> None:
    statuses = {n: all_env.registry.get(n).check() for n in all_env.registry.names()}
    assert all(s.available for s in statuses.values()), statuses
    assert {"kek-a", "kek-b"} <= set(statuses["hsm"].keys)
    assert statuses["vault"].keys == ["t1", "t2"] and statuses["dev"].keys == ["k1", "k2"]


def test_generate_refuses_existing_keys(all_env: KeyEnv) -> None:
    for ref in ("vault:t1", "dev:k1", "hsm:kek-a"):
        key = KeyRef.parse(ref)
        with pytest.raises(KeyProviderError, match="already exists"):
            all_env.registry.get(key.provider).generate(key.key_id)
    all_env.registry.get("vault").generate("t3")
    assert "t3" in all_env.registry.get("vault").check().keys


@pytest.mark.parametrize(
    ("label", "template", "match"),
    [
        ("kek-open", {"EXTRACTABLE": True, "SENSITIVE": False, "WRAP": True, "UNWRAP": True},
         "CKA_EXTRACTABLE=True"),
        ("kek-wrap-only", {"EXTRACTABLE": False, "SENSITIVE": True, "WRAP": True, "UNWRAP": False},
         "CKA_UNWRAP=False"),
    ],
)
def test_hsm_kek_attributes_checked_before_use(all_env: KeyEnv, softhsm: SoftHsm, tmp_path: Path,
                                               label: str, template: dict[str, bool], match: str) -> None:
    """Issue 21 item 8: a KEK created outside Airlock extractable and non-sensitive, or without
    CKA_UNWRAP, is refused before anything is written (key-provider exit 34, no traceback): encrypt
    used to exit 0 with the latter and decrypt crash later."""
    import pkcs11
    from pkcs11 import Attribute, KeyType

    lib = pkcs11.lib("/usr/lib/softhsm/libsofthsm2.so")
    with lib.get_token(token_label=softhsm.label).open(rw=True, user_pin=softhsm.pin) as session:
        session.generate_key(KeyType.AES, 256, label=label, store=True,
                             template={getattr(Attribute, k): v for k, v in template.items()})
    src = tmp_path / "p.bin"
    src.write_bytes(os.urandom(10_000))
    with pytest.raises(KeyProviderError, match=match):
        encrypt_file(src, tmp_path / "p.enc", all_env.registry.get("hsm"), label)
    proc = airlock_cli("keys", "encrypt", "-i", str(src), "-o", str(tmp_path / "q.enc"), "-k", f"hsm:{label}",
                       "--config", str(all_env.config), env=all_env.env)
    assert proc.returncode == 34 and match in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "p.enc").exists() and not (tmp_path / "q.enc").exists()
    assert not list(tmp_path.glob(".*airlock-tmp*"))
