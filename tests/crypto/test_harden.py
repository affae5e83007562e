"""Issue 21 item 3: every entry point that can hold a key is hardened (no core file, not dumpable):
the ``airlock`` root callback (model install/update/verify/rollback unwrap data keys too, not only
``airlock keys``) and the Ansible modules' shared module_utils."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from airlock.repo import Repository
from airlock.repo.lock import repo_lock
from tests.crypto.conftest import REPO, KeyEnv
from tests.repo.models import Versions

PROBE = "from airlock.crypto.harden import hardened; print('HARDENED' if hardened() else 'DUMPABLE')"


def _python(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def test_unhardened_baseline_is_dumpable() -> None:
    """The probe can fail: a plain Python process is dumpable."""
    assert _python(PROBE) == "DUMPABLE"


def test_cli_root_callback_hardens_model_commands(tmp_path: Path) -> None:
    code = ("from airlock.cli import app\n"
            f"app(['model', 'list', '--root', {str(tmp_path)!r}, '--json'], standalone_mode=False)\n" + PROBE)
    assert _python(code) == "HARDENED"


def test_module_utils_harden_ansible_modules() -> None:
    utils = str(REPO / "plugins/module_utils/airlock_common.py")
    code = ("import importlib.util\n"
            f"spec = importlib.util.spec_from_file_location('ac', {utils!r})\n"
            "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
            "assert mod.HAS_AIRLOCK\n" + PROBE)
    assert _python(code) == "HARDENED"


def test_running_model_verify_cannot_dump_core(keyfile_env: KeyEnv, versions: Versions,
                                               tmp_path: Path) -> None:
    """A real ``airlock model verify`` of an encrypted version, caught while it waits for the
    repository lock: its core limit is 0 before it unwraps any data key."""
    root = tmp_path / "root"
    repo = Repository(root, lock_timeout=5, keys=keyfile_env.registry)
    repo.install_version("m", "1.0.0", versions.src["1.0.0"], encrypt="dev:k1")
    repo.close()
    with repo_lock(repo.layout.lock):
        proc = subprocess.Popen(
            [sys.executable, "-c", "from airlock.cli import main; main()", "model", "verify", "m", "--root",
             str(root), "--keys-config", str(keyfile_env.config), "--lock-timeout", "30"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
        try:
            limits = ""
            for _ in range(200):  # until the callback ran (the command is then blocked on the lock)
                limits = Path(f"/proc/{proc.pid}/limits").read_text()
                core = next(line for line in limits.splitlines() if line.startswith("Max core file size"))
                if core.split()[4:6] == ["0", "0"]:
                    break
                time.sleep(0.05)
            assert core.split()[4:6] == ["0", "0"], core
            assert proc.poll() is None  # still waiting: nothing unwrapped yet
        except BaseException:
            proc.kill()
            raise
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
