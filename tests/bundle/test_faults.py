"""A real kill -9 at every write boundary of build, pack and unpack (AIRLOCK_FAULT in a subprocess):
the output never appears half-made, and the next run succeeds and leaves no temp directory."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from airlock.bundle import verify_bundle
from tests.bundle.conftest import BundleFactory, Keys, airlock_cmd


def _run(*args: str, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "AIRLOCK_FAULT"}
    if fault:
        env["AIRLOCK_FAULT"] = fault
    return subprocess.run([*airlock_cmd(), *args], capture_output=True, text=True, env=env)


@pytest.mark.parametrize("fault", ["bundle-build-mid-copy", "bundle-build-before-rename"])
def test_build_killed(fault: str, factory: BundleFactory, keys: Keys, tmp_path: Path) -> None:
    spec = factory.spec()
    out = tmp_path / "out" / "bundle"
    args = ("bundle", "build", str(spec), "-o", str(out), "--signer", keys.fpr["signer"],
            "--gnupghome", str(keys.home))
    assert _run(*args, fault=fault).returncode == -9
    assert not out.exists()
    assert _run(*args).returncode == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["bundle"]  # the killed run's temp dir is gone
    verify_bundle(out, keys.trust(["signer"], "signer"))


@pytest.mark.parametrize("fault", ["unpack-mid-member", "unpack-before-rename", "pack-before-rename"])
def test_pack_unpack_killed(fault: str, factory: BundleFactory, keys: Keys, tmp_path: Path) -> None:
    bundle = factory.build()
    ring = str(keys.keyring("signer"))
    work = tmp_path / "work"
    work.mkdir()
    tar, out = work / "b.tar", work / "unpacked"
    pack = ("bundle", "pack", str(bundle), "-o", str(tar))
    unpack = ("bundle", "unpack", str(tar), "-o", str(out), "--trust", keys.fpr["signer"], "--keyring", ring)
    if fault.startswith("pack"):
        assert _run(*pack, fault=fault).returncode == -9
        assert not tar.exists()
    assert _run(*pack).returncode == 0
    if fault.startswith("unpack"):
        assert _run(*unpack, fault=fault).returncode == -9
        assert not out.exists()
    res = _run(*unpack)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in work.iterdir()) == ["b.tar", "unpacked"]
    verify_bundle(out, keys.trust(["signer"], "signer"))


def test_stage_killed_after_manifest(factory: BundleFactory, keys: Keys, tmp_path: Path) -> None:
    bundle = factory.build()
    staging = tmp_path / "work" / "staging"
    args = ("bundle", "stage", str(bundle), "--to", str(staging), "--trust", keys.fpr["signer"],
            "--keyring", str(keys.keyring("signer")))
    assert _run(*args, fault="stage-after-manifest").returncode == -9
    names = sorted(p.name for p in staging.iterdir())
    assert names == [".airlock-staging", "MANIFEST.json", "MANIFEST.json.asc"]
    assert _run(*args).returncode == 0
    staged = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
    assert staged == [".airlock-staged", ".airlock-staging", "MANIFEST.json", "MANIFEST.json.asc",
                      "models/minilm/1.0.0/big.bin",
                      "models/minilm/1.0.0/config.json", "models/minilm/1.0.0/model.safetensors"]
