"""Issue 21 items 4 and 7: which file a ciphertext is (model, relative path) is bound into format
version 2, every path that hands out plaintext compares with the catalog's plaintext hashes, key slots
are MACed under a key derived from the data key, and version-1 files stay readable."""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from airlock.crypto import (
    EncryptedFormatError,
    decrypt_file,
    encrypt_file,
    encrypt_stream,
    read_encrypted_header,
    rotate_file,
)
from airlock.crypto.format import MAX_GENERATION, KeySlot
from airlock.crypto.providers import KeyRef
from airlock.crypto.tree import decrypt_tree, encrypt_tree
from airlock.errors import AirlockError, IntegrityError
from airlock.repo import Repository, check_loadable
from tests.crypto.conftest import KeyEnv, airlock_cli
from tests.repo.conftest import Versions

KEY = "dev:k1"


@pytest.fixture
def erepo(tmp_path: Path, keyfile_env: KeyEnv, versions: Versions) -> Iterator[Repository]:
    r = Repository(tmp_path / "root", lock_timeout=5, keys=keyfile_env.registry)
    r.install_version("m", "1.0.0", versions.src["1.0.0"], encrypt=KEY)
    r.install_version("m", "1.1.0", versions.src["1.1.0"], encrypt=KEY)
    yield r
    r.close()


def _put(path: Path, data: bytes) -> None:
    """Replace a sealed (0444 in a 0700 directory) file's bytes, as an attacker with the disk would."""
    tmp = path.with_name(".x")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o444)
    os.replace(tmp, path)


def _refused_everywhere(env: KeyEnv, vdir: Path, model: str, expected: dict[str, tuple[int, str]],
                        tmp_path: Path, what: str) -> None:
    """keys verify, keys decrypt (directory and file), decrypt_tree and the loadability check."""
    conf = ("--config", str(env.config))
    proc = airlock_cli("keys", "verify", str(vdir), "--json", *conf)
    assert proc.returncode == 13, (what, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    out = tmp_path / f"plain-{what}"
    proc = airlock_cli("keys", "decrypt", "-i", str(vdir), "-o", str(out), *conf)
    assert proc.returncode == 13 and not out.exists(), (what, proc.stderr)
    one = tmp_path / f"one-{what}"
    name = "model.safetensors" if what == "older" else "config.json"
    proc = airlock_cli("keys", "decrypt", "-i", str(vdir / name), "-o", str(one), *conf)
    assert proc.returncode == 13 and not one.exists(), (what, proc.stderr)
    proc = airlock_cli("keys", "decrypt", "-i", str(vdir / name), "-o", "-", *conf)
    assert proc.returncode == 13 and proc.stdout == "", (what, proc.stderr)
    with pytest.raises((EncryptedFormatError, IntegrityError)):
        decrypt_tree(vdir, out, env.registry, model=model, expect=expected)
    assert not out.exists()
    with pytest.raises(AirlockError):
        check_loadable(vdir, keys=env.registry, model=model, expected=expected)


def test_swapped_ciphertexts_refused(erepo: Repository, keyfile_env: KeyEnv, versions: Versions,
                                     tmp_path: Path) -> None:
    vdir = erepo.layout.version_dir("m", "1.1.0")
    expected = {r: (f.size, f.sha256) for r, f in erepo.catalog().version("m", "1.1.0").files.items()}
    # intact: every consumer hands out the plaintext
    assert airlock_cli("keys", "verify", str(vdir), "--config", str(keyfile_env.config)).returncode == 0
    check_loadable(vdir, keys=keyfile_env.registry, model="m", expected=expected)
    a, b = (vdir / "config.json").read_bytes(), (vdir / "tokenizer.json").read_bytes()
    _put(vdir / "config.json", b)
    _put(vdir / "tokenizer.json", a)
    _refused_everywhere(keyfile_env, vdir, "m", expected, tmp_path, "swap")
    # the bound identity alone catches it, with no catalog: decrypt_tree of the tree as found
    with pytest.raises(EncryptedFormatError, match=r"belongs to m:tokenizer\.json, not m:config\.json"):
        decrypt_tree(vdir, tmp_path / "bare", keyfile_env.registry)
    assert not erepo.verify("m", "1.1.0")["ok"]


def test_older_version_ciphertext_refused(erepo: Repository, keyfile_env: KeyEnv,
                                          tmp_path: Path) -> None:
    """Same model and path (bound identity matches: unchanged files are hard-linked between versions),
    so only the catalog's plaintext hash tells 1.0.0's valid ciphertext from 1.1.0's."""
    old = erepo.layout.version_dir("m", "1.0.0") / "model.safetensors"
    vdir = erepo.layout.version_dir("m", "1.1.0")
    expected = {r: (f.size, f.sha256) for r, f in erepo.catalog().version("m", "1.1.0").files.items()}
    _put(vdir / "model.safetensors", old.read_bytes())
    _refused_everywhere(keyfile_env, vdir, "m", expected, tmp_path, "older")
    assert not erepo.verify("m", "1.1.0")["ok"]


def test_ciphertext_of_another_model_refused(keyfile_env: KeyEnv, versions: Versions,
                                             tmp_path: Path) -> None:
    reg = keyfile_env.registry
    encrypt_tree(versions.src["1.0.0"], tmp_path / "a", reg.get("dev"), "k1", model="alpha")
    encrypt_tree(versions.src["1.0.0"], tmp_path / "b", reg.get("dev"), "k1", model="beta")
    _put(tmp_path / "a" / "config.json", (tmp_path / "b" / "config.json").read_bytes())
    with pytest.raises(EncryptedFormatError, match=r"belongs to beta:config\.json, not alpha:config\.json"):
        decrypt_tree(tmp_path / "a", tmp_path / "out", reg, model="alpha")
    with pytest.raises(EncryptedFormatError, match="different models"):
        decrypt_tree(tmp_path / "a", tmp_path / "out", reg)
    assert not (tmp_path / "out").exists()
    assert read_encrypted_header(tmp_path / "b" / "config.json").identity is not None


def test_version_1_files_still_readable_and_rotatable(keyfile_env: KeyEnv, tmp_path: Path) -> None:
    reg = keyfile_env.registry
    data = os.urandom(70_000)
    out = io.BytesIO()
    encrypt_stream(io.BytesIO(data), out, reg.get("dev"), "k1", chunk_size=16384, version=1)
    old = tmp_path / "v1.enc"
    old.write_bytes(out.getvalue())
    hdr = read_encrypted_header(old)
    assert hdr.fixed.version == 1 and hdr.identity is None and hdr.active.mac == b""
    decrypt_file(old, tmp_path / "v1.out", reg)
    assert (tmp_path / "v1.out").read_bytes() == data
    assert rotate_file(old, reg, KeyRef("dev", "k2")).action == "rewrapped"
    decrypt_file(old, tmp_path / "v1.again", reg)
    assert (tmp_path / "v1.again").read_bytes() == data
    assert read_encrypted_header(old).key_id == "k2"


def _slot_key(env: KeyEnv, path: Path) -> tuple[bytes, bytes, int]:
    """(data key, raw header, offset of slot A), unwrapped with the development KEK."""
    hdr = read_encrypted_header(path)
    return (env.registry.get(hdr.provider).unwrap(hdr.key_id, hdr.active.wrapped), hdr.raw_fixed,
            hdr.fixed.slot_offset(0))


def test_key_slots_authenticated(keyfile_env: KeyEnv, tmp_path: Path) -> None:
    """Restoring the pre-rotation slot relabelled with a higher generation (the slot's own digest is
    recomputed, as anyone can) is refused: the slot MAC needs the data key."""
    reg = keyfile_env.registry
    src = tmp_path / "p"
    src.write_bytes(os.urandom(30_000))
    enc = tmp_path / "p.enc"
    encrypt_file(src, enc, reg.get("dev"), "k1")
    before = enc.read_bytes()
    rotate_file(enc, reg, KeyRef("dev", "k2"))
    old_slot = read_encrypted_header_bytes(before).slots[0]
    assert old_slot is not None and old_slot.generation == 1
    relabelled = KeySlot(3, old_slot.provider, old_slot.key_id, old_slot.wrapped, old_slot.mac)
    raw = bytearray(enc.read_bytes())
    at = read_encrypted_header(enc).fixed.slot_offset(0)
    raw[at : at + 1024] = relabelled.pack(1024)
    enc.write_bytes(bytes(raw))
    with pytest.raises(EncryptedFormatError, match="fails its MAC"):
        decrypt_file(enc, tmp_path / "out", reg)
    assert not (tmp_path / "out").exists()


def read_encrypted_header_bytes(blob: bytes):  # type: ignore[no-untyped-def]
    from airlock.crypto.format import parse_header

    return parse_header(blob[: 64 << 10])


def test_generation_overflow_clean_error(keyfile_env: KeyEnv, tmp_path: Path) -> None:
    reg = keyfile_env.registry
    src = tmp_path / "p"
    src.write_bytes(b"x" * 5000)
    enc = tmp_path / "p.enc"
    encrypt_file(src, enc, reg.get("dev"), "k1")
    key, raw_header, at = _slot_key(keyfile_env, enc)
    slot = read_encrypted_header(enc).active
    top = KeySlot(MAX_GENERATION, slot.provider, slot.key_id, slot.wrapped).sealed(key, raw_header)
    raw = bytearray(enc.read_bytes())
    raw[at : at + 1024] = top.pack(1024)
    enc.write_bytes(bytes(raw))
    decrypt_file(enc, tmp_path / "ok", reg)  # still a valid file
    proc = airlock_cli("keys", "rotate", "-p", str(enc), "-k", "dev:k2", "--audit-log",
                       str(tmp_path / "audit.log"), "--config", str(keyfile_env.config), "--json")
    assert proc.returncode == 13 and "Traceback" not in proc.stderr
    assert json.loads(proc.stdout)["rule"] == "encrypted-format" and "maximum" in proc.stdout
    assert read_encrypted_header(enc).key_id == "k1"
    assert hashlib.sha256(enc.read_bytes()).digest() == hashlib.sha256(bytes(raw)).digest()
    assert struct.unpack(">I", bytes(raw[at + 4 : at + 8]))[0] == MAX_GENERATION


def test_restored_pre_rotation_file_refused(erepo: Repository, keyfile_env: KeyEnv, tmp_path: Path) -> None:
    """Rotation moves the catalog to the new key; a file (or its slots) restored from before the
    rotation still opens under the old KEK if that KEK is around, and is refused because its key
    slot is not under the key the catalog records."""
    target = erepo.layout.version_dir("m", "1.1.0") / "model.safetensors"
    before = target.read_bytes()
    conf = ("--config", str(keyfile_env.config))
    airlock_cli("keys", "rotate", "--root", str(erepo.root), "-k", "dev:k2", *conf, check=True)
    assert erepo.verify("m")["ok"]
    _put(target, before)  # the attacker's backup: valid, same plaintext, wrapped under k1
    report = erepo.verify("m", "1.1.0")
    assert not report["ok"] and "catalog records dev:k2" in report["versions"][0]["problems"][0]["actual"]
    proc = airlock_cli("keys", "verify", str(target), *conf)
    assert proc.returncode == 13 and "catalog records dev:k2" in proc.stderr


def test_symlink_swap_rollback_checks_the_target(erepo: Repository, keyfile_env: KeyEnv) -> None:
    """A rollback to a present encrypted version is a symlink swap: it first checks (from the
    headers, no key needed) that every file is bound to its place, under the catalog's key and of
    the catalog's size; swapped ciphertexts are refused and current stays where it was."""
    erepo.activate("m", "1.1.0")
    v0 = erepo.layout.version_dir("m", "1.0.0")
    a, b = (v0 / "config.json").read_bytes(), (v0 / "tokenizer.json").read_bytes()
    _put(v0 / "config.json", b)
    _put(v0 / "tokenizer.json", a)
    with pytest.raises(EncryptedFormatError, match=r"belongs to m:tokenizer\.json"):
        erepo.rollback("m", to="1.0.0")
    assert erepo.link_target("m") == "1.1.0"
    _put(v0 / "config.json", a)
    _put(v0 / "tokenizer.json", b)
    erepo.rollback("m", to="1.0.0")
    assert erepo.link_target("m") == "1.0.0"
