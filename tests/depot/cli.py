"""The real ``airlock`` CLI for the depot tests: a run, the trust arguments, a depot import."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.bundle.factory import airlock_cmd
from tests.gpg import Keys


def airlock(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*airlock_cmd(), *args], capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, **(env or {})})


def trust_args(keys: Keys) -> list[str]:
    return ["--trust", keys.fpr["signer"], "--keyring", str(keys.keyring("signer"))]


def import_(bundle: Path, depot: Path, keys: Keys, *extra: str,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return airlock("depot", "import", str(bundle), "--depot", str(depot), *trust_args(keys), "--json", *extra,
                   env=env)
