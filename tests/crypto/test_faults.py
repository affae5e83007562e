"""kill -9 at the encryption write boundaries: the output never appears half-written, what is left
behind holds no plaintext, and a re-run succeeds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from airlock.crypto import ProviderRegistry, decrypt_file
from tests.crypto.conftest import REPO, KeyEnv, airlock_cli


@pytest.mark.parametrize("fault", ["crypto.encrypt.mid-stream", "crypto.file.before-rename"])
def test_kill_9_during_encrypt(keyfile_env: KeyEnv, tmp_path: Path, fault: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    src = tmp_path / "plain.bin"
    src.write_bytes(os.urandom(3 << 20))
    dst = work / "plain.enc"
    args = (
        "keys",
        "encrypt",
        "-i",
        str(src),
        "-o",
        str(dst),
        "-k",
        "dev:k1",
        "--config",
        str(keyfile_env.config),
    )
    proc = airlock_cli(*args, env={"AIRLOCK_FAULT": fault})
    assert proc.returncode == -9
    assert not dst.exists()
    leftovers = list(work.iterdir())
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".plain.enc.airlock-tmp-")
    assert leftovers[0].stat().st_mode & 0o777 == 0o600
    assert src.read_bytes()[:4096] not in leftovers[0].read_bytes()  # ciphertext only
    airlock_cli(*args, check=True)
    decrypt_file(dst, tmp_path / "back.bin", ProviderRegistry.load(keyfile_env.config))
    assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()


def test_kill_9_before_tree_rename(keyfile_env: KeyEnv, tmp_path: Path) -> None:
    plain = tmp_path / "model"
    (plain / "sub").mkdir(parents=True)
    (plain / "a.bin").write_bytes(os.urandom(100_000))
    (plain / "sub/b.json").write_text('{"x": 1}')
    out = tmp_path / "enc"
    script = (
        "import sys; from pathlib import Path; from airlock.crypto import ProviderRegistry;"
        "from airlock.crypto.tree import encrypt_tree;"
        "reg = ProviderRegistry.load(Path(sys.argv[1]));"
        "encrypt_tree(Path(sys.argv[2]), Path(sys.argv[3]), reg.get('dev'), 'k1')"
    )
    cmd = [sys.executable, "-c", script, str(keyfile_env.config), str(plain), str(out)]
    env = {**os.environ, "AIRLOCK_FAULT": "crypto.tree.before-rename"}
    assert subprocess.run(cmd, env=env, cwd=REPO).returncode == -9
    assert not out.exists()
    staged = [p for p in tmp_path.iterdir() if p.name.startswith(".crypto-staging-")]
    assert len(staged) == 1 and (staged[0] / "sub/b.json").read_bytes()[:8] == b"AIRLKENC"
    env.pop("AIRLOCK_FAULT")
    subprocess.run(cmd, env=env, cwd=REPO, check=True)
    decrypt_file(out / "a.bin", tmp_path / "a.out", ProviderRegistry.load(keyfile_env.config))
    assert (tmp_path / "a.out").read_bytes() == (plain / "a.bin").read_bytes()
