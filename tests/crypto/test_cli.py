"""`airlock keys` CLI: JSON reports, exit codes, and key material never in output, argv or core files."""

from __future__ import annotations

import base64
import json
import os
import select
import subprocess
import sys
from pathlib import Path

from cryptography.hazmat.primitives.keywrap import aes_key_unwrap

from airlock.crypto import read_encrypted_header
from airlock.crypto.format import KeySlot
from tests.crypto.conftest import REPO, KeyEnv, SoftHsm, airlock_cli
from tests.crypto.vault_edge_mock import TransitEdgeMock


def _forms(secret: bytes) -> list[bytes]:
    """The ways a key could leak into text: raw, hex (both cases), base64."""
    return [secret, secret.hex().encode(), secret.hex().upper().encode(), base64.b64encode(secret)]


def _assert_absent(blob: bytes, secrets_: dict[str, bytes], where: str) -> None:
    for name, secret in secrets_.items():
        for form in _forms(secret):
            assert form not in blob, f"{name} leaked into {where}"


def test_encrypt_inspect_verify_decrypt_json(keyfile_env: KeyEnv, tmp_path: Path) -> None:
    src = tmp_path / "model.safetensors"
    src.write_bytes(os.urandom(300_000))
    enc, out = tmp_path / "model.enc", tmp_path / "model.out"
    conf = ("--config", str(keyfile_env.config))
    rep = json.loads(
        airlock_cli(
            "keys",
            "encrypt",
            "--in",
            str(src),
            "--out",
            str(enc),
            "--key",
            "dev:k1",
            "--chunk-size",
            "65536",
            "--json",
            *conf,
            check=True,
        ).stdout
    )
    assert rep["ok"] and rep["chunks"] == 5 and rep["plaintext_size"] == 300_000 and rep["key_id"] == "k1"
    info = json.loads(airlock_cli("keys", "inspect", str(enc), "--json", check=True).stdout)
    assert (info["provider"], info["key_generation"], info["encrypted_size"]) == (
        "dev",
        1,
        enc.stat().st_size,
    )
    ver = json.loads(airlock_cli("keys", "verify", str(tmp_path), "--json", *conf, check=True).stdout)
    import hashlib

    assert ver["files"] == [
        {"path": str(enc), "size": 300_000, "sha256": hashlib.sha256(src.read_bytes()).hexdigest()}
    ]
    airlock_cli("keys", "decrypt", "--in", str(enc), "--out", str(out), *conf, check=True)
    assert out.read_bytes() == src.read_bytes()
    human = airlock_cli("keys", "providers", *conf, check=True).stdout
    assert "ok  dev (keyfile)" in human and "k1, k2" in human


def test_cli_exit_codes(keyfile_env: KeyEnv, tmp_path: Path) -> None:
    src = tmp_path / "p.bin"
    src.write_bytes(os.urandom(20_000))
    enc = tmp_path / "p.enc"
    conf = ("--config", str(keyfile_env.config))
    airlock_cli("keys", "encrypt", "-i", str(src), "-o", str(enc), "-k", "dev:k1", *conf, check=True)
    raw = bytearray(enc.read_bytes())
    raw[-5] ^= 1
    bad = tmp_path / "bad.enc"
    bad.write_bytes(raw)
    proc = airlock_cli("keys", "decrypt", "-i", str(bad), "-o", str(tmp_path / "bad.out"), "--json", *conf)
    assert proc.returncode == 13 and json.loads(proc.stdout)["rule"] == "encrypted-format"
    assert not (tmp_path / "bad.out").exists()

    wrapped = read_encrypted_header(enc).active.wrapped
    forged = bytearray(enc.read_bytes())
    at = read_encrypted_header(enc).fixed.slot_offset(0)
    forged[at : at + 1024] = KeySlot(1, "dev", "k2", wrapped, bytes(32)).pack(1024)
    bad.write_bytes(forged)
    proc = airlock_cli("keys", "decrypt", "-i", str(bad), "-o", str(tmp_path / "x"), *conf)
    assert proc.returncode == 35 and "does not unwrap" in proc.stderr
    proc = airlock_cli("keys", "decrypt", "-i", str(bad), "-o", str(tmp_path / "x"), "--json", *conf)
    assert proc.returncode == 35 and json.loads(proc.stdout)["rule"] == "wrong-key"

    (keyfile_env.keydir / "k1.kek").chmod(0o640)
    proc = airlock_cli("keys", "decrypt", "-i", str(enc), "-o", str(tmp_path / "x"), *conf)
    assert proc.returncode == 34 and "mode 0600" in proc.stderr
    proc = airlock_cli("keys", "encrypt", "-i", str(src), "-o", str(tmp_path / "y"), "-k", "nokey", *conf)
    assert proc.returncode == 34 and "PROVIDER:KEY_ID" in proc.stderr
    assert airlock_cli("keys", "inspect", str(src)).returncode == 13


def test_providers_down_exit_34(all_env: KeyEnv, vault: TransitEdgeMock) -> None:
    vault.state.sealed = True
    proc = airlock_cli("keys", "providers", "--json", "--config", str(all_env.config), env=all_env.env)
    assert proc.returncode == 34
    rep = {p["name"]: p for p in json.loads(proc.stdout)["providers"]}
    assert rep["hsm"]["available"] and rep["dev"]["available"] and not rep["vault"]["available"]
    assert "sealed" in rep["vault"]["detail"]


def test_key_material_never_in_output_argv_or_core(
    all_env: KeyEnv, softhsm: SoftHsm, vault: TransitEdgeMock, tmp_path: Path
) -> None:
    conf = ("--config", str(all_env.config))
    src = tmp_path / "w.bin"
    src.write_bytes(os.urandom(4 << 20))
    outputs = b""
    for ref in ("dev:k1", "hsm:kek-a", "vault:t1"):
        enc = tmp_path / f"w-{ref.split(':')[0]}.enc"
        for args in (
            ("keys", "encrypt", "-i", str(src), "-o", str(enc), "-k", ref, "--json"),
            ("keys", "inspect", str(enc), "--json"),
            ("keys", "verify", str(enc)),
            ("keys", "decrypt", "-i", str(enc), "-o", str(tmp_path / "w.out"), "--json"),
        ):
            extra = () if args[1] == "inspect" else conf
            proc = airlock_cli(*args, *extra, env=all_env.env, check=True)
            outputs += (proc.stdout + proc.stderr).encode()
    enc = tmp_path / "w-dev.enc"
    kek = all_env.kek_bytes("k1")
    data_key = aes_key_unwrap(kek, read_encrypted_header(enc).active.wrapped)
    rot = airlock_cli(
        "keys",
        "rotate",
        "-p",
        str(tmp_path),
        "-k",
        "dev:k2",
        "--audit-log",
        str(tmp_path / "audit.jsonl"),
        "--json",
        *conf,
        env=all_env.env,
        check=True,
    )
    outputs += (rot.stdout + rot.stderr).encode() + (tmp_path / "audit.jsonl").read_bytes()
    secrets_ = {
        "dev KEK": kek,
        "data key": data_key,
        "HSM PIN": softhsm.pin.encode(),
        "Vault token": vault.state.token.encode(),
    }
    _assert_absent(outputs, secrets_, "CLI output or audit log")

    # While a decrypt is running (blocked writing plaintext to a full pipe, so the data key is live in
    # memory) no process's command line carries a secret and the process cannot dump core.
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from airlock.cli import main; main()",
            "keys",
            "decrypt",
            "-i",
            str(enc),
            "-o",
            "-",
            *conf,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, **all_env.env},
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "decrypt produced no output"
        cmdlines = b""
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    cmdlines += Path(f"/proc/{pid}/cmdline").read_bytes() + b"\n"
                except OSError:
                    continue
        assert b"keys\x00decrypt" in cmdlines  # the scan did see the running command
        _assert_absent(cmdlines, secrets_, "/proc/*/cmdline")
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        core = next(line for line in limits.splitlines() if line.startswith("Max core file size"))
        assert core.split()[4:6] == ["0", "0"], core
        plain = proc.stdout.read()
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == 0 and plain == src.read_bytes()


def test_directory_encrypt_decrypt_and_missing_input(keyfile_env: KeyEnv, tmp_path: Path) -> None:
    import hashlib

    plain = tmp_path / "model"
    (plain / "sub").mkdir(parents=True)
    (plain / "model.safetensors").write_bytes(os.urandom(150_000))
    (plain / "sub/config.json").write_text('{"hidden": 384}')
    conf = ("--config", str(keyfile_env.config))
    rep = json.loads(
        airlock_cli(
            "keys",
            "encrypt",
            "-i",
            str(plain),
            "-o",
            str(tmp_path / "enc"),
            "-k",
            "dev:k2",
            "--json",
            *conf,
            check=True,
        ).stdout
    )
    assert rep["files"]["sub/config.json"]["sha256"] == hashlib.sha256(b'{"hidden": 384}').hexdigest()
    assert (tmp_path / "enc/model.safetensors").read_bytes()[:8] == b"AIRLKENC"
    airlock_cli(
        "keys", "decrypt", "-i", str(tmp_path / "enc"), "-o", str(tmp_path / "dec"), *conf, check=True
    )
    assert (tmp_path / "dec/model.safetensors").read_bytes() == (plain / "model.safetensors").read_bytes()
    proc = airlock_cli("keys", "decrypt", "-i", str(tmp_path / "enc"), "-o", str(tmp_path / "dec"), *conf)
    assert proc.returncode == 13 and "already exists" in proc.stderr
    proc = airlock_cli(
        "keys", "encrypt", "-i", str(tmp_path / "nope"), "-o", str(tmp_path / "x"), "-k", "dev:k1", *conf
    )
    assert proc.returncode == 1 and "no such file" in proc.stderr and "Traceback" not in proc.stderr
