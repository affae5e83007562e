"""A host root with two versions of a model installed from real signed bundles (a full bundle, then
a delta bundle; real gpg), its audit history, a private restic password file and a wrapper that
records how restic was started (to prove the password is never on a command line)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from airlock.bundle import build_bundle
from tests.gpg import Keys
from tests.repo.conftest import cli
from tests.repo.models import make_model
from tests.support import require_tool

PASSWORD = "correct horse battery staple 7f3a"


@dataclass
class Host:
    root: Path
    repo: Path
    password: Path
    keyring: Path
    fpr: str
    spy: Path  # restic's argv and environment, one line each, per run
    env: dict[str, str]
    delta: Path  # the signed delta bundle 1.0.0 -> 1.1.0, installed by the test that backs up twice
    keys: Keys

    def airlock(self, *args: str, root: Path | None = None, timeout: float = 180):  # type: ignore[no-untyped-def]
        return cli(root or self.root, *args, env=self.env, timeout=timeout)


def _bundle(tmp: Path, keys: Keys, name: str, model: dict[str, object], sequence: int) -> Path:
    spec = tmp / f"{name}.yml"
    spec.write_text(yaml.safe_dump({"compatible": "appliance-test", "sequence": sequence, "models": [model]}))
    build_bundle(spec, tmp / name, signer=keys.fpr["signer"], gnupghome=keys.home)
    return tmp / name


def fine_tune(base: Path) -> tuple[Path, Path]:
    """1.0.0 with a 16 MiB tensor after the small layers, and 1.1.0 with one small layer changed: the
    big tensor's bytes are unchanged, so restic's chunks of it are stored once."""
    from safetensors.numpy import load_file, save_file

    v1 = make_model(base / "src-1.0.0", extra_bytes=16 << 20)
    v2 = base / "src-1.1.0"
    shutil.copytree(v1, v2)
    tensors = load_file(str(v1 / "model.safetensors"))
    tensors["encoder.layer.1.output.dense.weight"] = tensors["encoder.layer.1.output.dense.weight"] * 1.01
    (v2 / "model.safetensors").unlink()
    save_file(tensors, str(v2 / "model.safetensors"))
    return v1, v2


def install(root: Path, bundle: Path, k: Keys, ring: Path) -> None:
    r = cli(root, "model", "install-bundle", str(bundle), "--trust", k.fpr["signer"], "--keyring", str(ring))
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Iterator[Host]:
    restic = require_tool("restic", "apt-get install restic (scripts/apt-packages.txt)")
    base = tmp_path_factory.mktemp("backup")
    v1, v2 = fine_tune(base)
    full = _bundle(base, keys, "full", {"name": "m", "version": "1.0.0", "path": str(v1)}, 5)
    delta = _bundle(base, keys, "delta", {"name": "m", "version": "1.1.0", "from_version": "1.0.0",
                                          "delta": {"old": str(v1), "new": str(v2)}}, 6)
    ring = keys.keyring("signer")
    root = base / "root"
    install(root, full, keys, ring)
    secrets = base / "secrets"
    secrets.mkdir(mode=0o700)
    pw = secrets / "restic.pw"
    pw.write_text(PASSWORD + "\n")
    pw.chmod(0o600)
    spy = base / "restic-spy.log"
    wrapper = base / "restic-wrapper"
    wrapper.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$*\" >> {spy}\nenv >> {spy}\nexec {restic} \"$@\"\n")
    wrapper.chmod(0o755)
    yield Host(root, base / "restic-repo", pw, ring, keys.fpr["signer"], spy,
               {"AIRLOCK_RESTIC": str(wrapper)}, delta, keys)
    shutil.rmtree(base / "restic-repo", ignore_errors=True)
