"""Fixtures: a development key-file provider, the Vault transit edge mock, and a provider config file
for the CLI (the real SoftHSM2 token per test, ``softhsm``, is in tests/conftest.py). Secrets go into
files (mode 0600) or env, never argv."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from airlock.crypto import ProviderRegistry
from tests.crypto.softhsm import SoftHsm
from tests.crypto.softhsm import write_secret as _write_secret
from tests.crypto.vault_edge_mock import TransitEdgeMock

REPO = Path(__file__).resolve().parents[2]
__all__ = ["REPO", "KeyEnv", "SoftHsm", "airlock_cli"]


@dataclass
class KeyEnv:
    """A provider config on disk plus the secrets behind it, for API and CLI tests."""

    config: Path
    registry: ProviderRegistry
    keydir: Path
    env: dict[str, str]

    def kek_bytes(self, key_id: str) -> bytes:
        return (self.keydir / f"{key_id}.kek").read_bytes()


@pytest.fixture
def keyfile_env(tmp_path: Path) -> KeyEnv:
    keydir = tmp_path / "dev-keys"
    conf = {"providers": {"dev": {"type": "keyfile", "dir": str(keydir), "allow_development_keyfile": True}}}
    config = tmp_path / "keys.yaml"
    config.write_text(yaml.safe_dump(conf))
    reg = ProviderRegistry.load(config)
    for key_id in ("k1", "k2"):
        reg.get("dev").generate(key_id)
    return KeyEnv(config, reg, keydir, {})


@pytest.fixture
def vault() -> Iterator[TransitEdgeMock]:
    with TransitEdgeMock(secrets.token_hex(16)) as mock:
        yield mock


@pytest.fixture
def all_env(tmp_path: Path, softhsm: SoftHsm, vault: TransitEdgeMock, keyfile_env: KeyEnv) -> KeyEnv:
    """Config with all three providers: dev (key files k1, k2), hsm (kek-a, kek-b), vault (t1, t2)."""
    token_file = _write_secret(tmp_path / "vault.token", vault.state.token)
    conf = yaml.safe_load(keyfile_env.config.read_text())
    conf["providers"]["hsm"] = softhsm.provider_config()
    conf["providers"]["vault"] = {
        "type": "vault",
        "url": vault.url,
        "allow_insecure_http": True,  # the edge mock is a loopback http server
        "token_file": str(token_file),
        "timeout": 5,
    }
    keyfile_env.config.write_text(yaml.safe_dump(conf))
    reg = ProviderRegistry.load(keyfile_env.config)
    for ref in ("hsm:kek-a", "hsm:kek-b", "vault:t1", "vault:t2"):
        prov, key_id = ref.split(":")
        reg.get(prov).generate(key_id)
    return KeyEnv(keyfile_env.config, reg, keyfile_env.keydir, {"SOFTHSM2_CONF": str(softhsm.conf)})


def airlock_cli(
    *args: str, env: dict[str, str] | None = None, check: bool = False, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess (``python -m`` of the console entry)."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    full_env.pop("AIRLOCK_FAULT", None) if "AIRLOCK_FAULT" not in (env or {}) else None
    proc = subprocess.run(
        [sys.executable, "-c", "from airlock.cli import main; main()", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=REPO,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"airlock {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def __getattr__(name: str) -> object:
    """Fixtures that moved to tests/conftest.py, under their old import path for modules not moved
    yet (a module that imports one registers it again for itself: drop the import instead)."""
    if name in ("softhsm",):
        import tests.conftest

        return getattr(tests.conftest, name)
    raise AttributeError(name)
