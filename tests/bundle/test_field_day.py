"""The field engineer's day: cheap checks before gigabytes are copied (signer key present, passphrase
right, SemVer, a loadable model directory, --owner resolved), each a one-line error that says what
to fix, and nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from airlock.bundle import build_bundle
from airlock.errors import ManifestError, SignatureError
from tests.bundle.conftest import BundleFactory, Keys
from tests.bundle.field import airlock, write_spec
from tests.repo.models import make_model

GIB = 1 << 30


@pytest.fixture
def huge_model(tmp_path: Path) -> Path:
    """A model whose copy would take a while: 4 GiB of sparse weights (nothing on disk)."""
    src = make_model(tmp_path / "huge")
    with open(src / "model-00002-of-00002.safetensors", "wb") as fh:
        fh.truncate(4 * GIB)
    return src


def _leftovers(where: Path) -> list[str]:
    return sorted(p.name for p in where.iterdir() if p.name.startswith((".building", ".airlock")))


def test_unknown_signer_refused_before_copying(keys: Keys, huge_model: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yml", [{"name": "m", "version": "1.0.0", "path": str(huge_model)}],
                      sequence=1)
    t = time.monotonic()
    r = airlock("bundle", "build", str(spec), "-o", str(tmp_path / "out"), "--signer", "AB" * 20,
                "--gnupghome", str(keys.home))
    assert r.returncode == 10 and "no secret key" in r.stderr, r.stderr
    assert time.monotonic() - t < 20  # 4 GiB were not read first
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_wrong_or_missing_passphrase_said_so(huge_model: Path, tmp_path: Path) -> None:
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    gpg = ["gpg", "--batch", "--homedir", str(home), "--pinentry-mode", "loopback"]
    subprocess.run([*gpg, "--passphrase", "right", "--quick-gen-key", "P <p@airlock.test>", "ed25519", "sign",
                    "never"], check=True, capture_output=True)
    out = subprocess.run([*gpg, "--with-colons", "--list-keys"], check=True, capture_output=True, text=True)
    fpr = next(line.split(":")[9] for line in out.stdout.splitlines() if line.startswith("fpr:"))
    spec = write_spec(tmp_path / "s.yml", [{"name": "m", "version": "1.0.0", "path": str(huge_model)}],
                      sequence=1)
    (tmp_path / "wrong").write_text("wrong\n")
    try:
        with pytest.raises(SignatureError, match="wrong passphrase"):
            build_bundle(spec, tmp_path / "out", signer=fpr, gnupghome=home,
                         passphrase_file=tmp_path / "wrong")
        assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []
        (tmp_path / "right").write_text("right\n")
        model = make_model(tmp_path / "small")
        small = write_spec(tmp_path / "small.yml", [{"name": "m", "version": "1.0.0", "path": str(model)}],
                           sequence=1)
        build_bundle(small, tmp_path / "ok", signer=fpr, gnupghome=home, passphrase_file=tmp_path / "right")
        assert (tmp_path / "ok" / "MANIFEST.json.asc").is_file()
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False)


@pytest.mark.parametrize("version, words", [("1.0", "not a SemVer version"),
                                            ("v1.0.0", "not a SemVer version"), ("1.0.0-rc.1", None)])
def test_semver_checked_in_the_spec(keys: Keys, tmp_path: Path, version: str, words: str | None) -> None:
    src = make_model(tmp_path / "m")
    spec = write_spec(tmp_path / "s.yml", [{"name": "m", "version": version, "path": str(src)}], sequence=1)
    r = airlock("bundle", "build", str(spec), "-o", str(tmp_path / "out"), "--signer", keys.fpr["signer"],
                "--gnupghome", str(keys.home))
    if words is None:
        assert r.returncode == 0, r.stderr
    else:
        assert r.returncode == 11 and words in r.stderr and "1.0.0" in r.stderr
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("drop, words", [("config.json", "no config.json"),
                                         ("model.safetensors", "no weights file"),
                                         ("tokenizer.json", "no tokenizer")])
def test_model_directory_checked(keys: Keys, tmp_path: Path, drop: str, words: str) -> None:
    src = make_model(tmp_path / "m")
    (src / drop).unlink()
    spec = write_spec(tmp_path / "s.yml", [{"name": "m", "version": "1.0.0", "path": str(src)}], sequence=1)
    with pytest.raises(ManifestError, match=words):
        build_bundle(spec, tmp_path / "out", signer=keys.fpr["signer"], gnupghome=keys.home)
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_unknown_owner_refused_before_staging(keys: Keys, tmp_path: Path) -> None:
    src = make_model(tmp_path / "m")
    spec = write_spec(tmp_path / "s.yml", [{"name": "m", "version": "1.0.0", "path": str(src)}], sequence=1)
    build_bundle(spec, tmp_path / "b", signer=keys.fpr["signer"], gnupghome=keys.home)
    root = tmp_path / "appliance"
    r = airlock("model", "install-bundle", str(tmp_path / "b"), "--trust", keys.fpr["signer"], "--keyring",
                str(keys.keyring("signer")), "--owner", "no-such-user-here", root=root)
    assert r.returncode == 30 and "unknown owner" in r.stderr and "--owner" in r.stderr, r.stderr
    assert not (root / "model_repo" / "update_packages" / "staged").exists()
    assert not os.path.exists(root / "model_repo" / "m")


def test_packed_tar_accepted_everywhere(keys: Keys, tmp_path: Path) -> None:
    import yaml

    from airlock.bundle import pack_bundle

    src = make_model(tmp_path / "src-1" / "model", extra_bytes=300_000)
    spec = tmp_path / "s.yml"  # weights split into parts: staging from the tar reassembles them
    spec.write_text(yaml.safe_dump({"compatible": "appliance-test", "sequence": 1, "split_size": 100_000,
                                    "models": [{"name": "minilm", "version": "1.0.0", "path": str(src)}]}))
    bundle = tmp_path / "b"
    build_bundle(spec, bundle, signer=keys.fpr["signer"], gnupghome=keys.home)
    assert (bundle / "models/minilm/1.0.0/model.safetensors.part002").exists()
    tar = tmp_path / "usb" / "minilm.tar"
    tar.parent.mkdir()
    pack_bundle(bundle, tar)
    trust = ("--trust", keys.fpr["signer"], "--keyring", str(keys.keyring("signer")))
    r = airlock("bundle", "inspect", str(tar), *trust)
    assert r.returncode == 0 and "model minilm 1.0.0" in r.stdout, r.stderr
    r = airlock("bundle", "stage", str(tar), "--to", str(tmp_path / "st"), *trust, "--json")
    assert r.returncode == 0, r.stderr
    staged = tmp_path / "st" / "models/minilm/1.0.0"
    assert (staged / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()
    r = airlock("preflight", "--bundle", str(tar), *trust, "--root", str(tmp_path / "root"), "--json")
    assert r.returncode in (0, 14) and json.loads(r.stdout)["checks"], r.stderr
    r = airlock("model", "install-bundle", str(tar), *trust, root=tmp_path / "root")
    assert r.returncode == 0 and "installed minilm 1.0.0 (active)" in r.stdout, r.stderr
    r = airlock("model", "verify", "minilm", root=tmp_path / "root")
    assert r.returncode == 0, r.stdout + r.stderr


def test_wrong_path_guidance(factory: BundleFactory, keys: Keys, tmp_path: Path) -> None:
    from airlock.bundle import pack_bundle

    usb = tmp_path / "usb"
    usb.mkdir()
    bundle = factory.build()
    bundle.rename(usb / "minilm-1.0.0")
    pack_bundle(usb / "minilm-1.0.0", usb / "minilm-1.0.0.tar")
    trust = ("--trust", keys.fpr["signer"], "--keyring", str(keys.keyring("signer")))
    for cmd in (("bundle", "verify"), ("bundle", "inspect"), ("model", "install-bundle")):
        r = airlock(*cmd, str(usb), *trust, root=tmp_path / "root")
        assert r.returncode == 13, r.stderr
        assert "bundles found here: minilm-1.0.0/, minilm-1.0.0.tar" in " ".join(r.stderr.split())
        r = airlock(*cmd, str(usb / "minilm-1.0.0" / "MANIFEST.json"), *trust, root=tmp_path / "root")
        assert r.returncode == 11 and "pass its directory" in r.stderr, r.stderr
    assert not (tmp_path / "root" / "model_repo" / "update_packages" / "staged").exists()


def test_trust_errors_teach(factory: BundleFactory, keys: Keys, tmp_path: Path) -> None:
    bundle = factory.build()
    signer = keys.fpr["signer"]
    ring = str(keys.keyring("signer"))

    def verify(*args: str) -> str:
        r = airlock("bundle", "verify", str(bundle), *args)
        assert r.returncode == 10, r.stdout + r.stderr
        return " ".join(r.stderr.split())

    said = verify("--trust", signer[-16:], "--keyring", ring)
    assert "short key ID" in said and "full 40-hex fingerprint" in said
    typo = signer[:-1] + ("0" if signer[-1] != "0" else "1")
    said = verify("--trust", typo, "--keyring", ring)
    assert f"pinned: {typo}" in said and signer not in said  # echoes the pin, not the signer to copy
    said = verify("--trust", signer, "--keyring", str(keys.home))
    assert "is a directory" in said and "--gnupghome" in said
    said = verify("--trust", signer, "--keyring", str(keys.home / "pubring.kbx"))
    assert "keybox" in said and f"--gnupghome {keys.home}" in said
    secret = tmp_path / "secret.asc"
    secret.write_bytes(keys.gpg("--armor", "--export-secret-keys", signer))
    r = airlock("bundle", "verify", str(bundle), "--trust", signer, "--keyring", str(secret))
    assert r.returncode == 0 and "warning" in r.stderr and "secret keys" in r.stderr, r.stderr
    assert "full 40-hex fingerprint" in " ".join(airlock("bundle", "verify", "--help").stdout.split())


def test_progress_on_a_terminal_and_silent_in_json(keys: Keys, tmp_path: Path) -> None:
    import shlex
    import sys

    from airlock.repo import Repository
    from tests.bundle.field import airlock_env
    from tests.support import require_tool

    require_tool("script", "apt-get install bsdutils")
    src = make_model(tmp_path / "m", extra_bytes=2_000_000)
    spec = write_spec(tmp_path / "s.yml", [{"name": "m", "version": "1.0.0", "path": str(src)}], sequence=1)
    build_bundle(spec, tmp_path / "b", signer=keys.fpr["signer"], gnupghome=keys.home)
    root = tmp_path / "appliance"
    cmd = [sys.executable, "-c", "from airlock.cli import main; main()", "model", "install-bundle",
           str(tmp_path / "b"), "--trust", keys.fpr["signer"], "--keyring", str(keys.keyring("signer"))]
    tty = subprocess.run(["script", "-qec", shlex.join(cmd), "/dev/null"], env=airlock_env(root),
                         capture_output=True, text=True, timeout=300)
    assert tty.returncode == 0, tty.stdout
    assert "staging" in tty.stdout and "installed m 1.0.0 (active)" in tty.stdout  # a bar, then the line
    ticks: list[int] = []
    repo = Repository(root)
    assert repo.verify("m", progress=ticks.append)["ok"]
    repo.close()
    assert sum(ticks) == sum(p.stat().st_size for p in src.iterdir())  # model verify counts every byte
    r = airlock("model", "install-bundle", str(tmp_path / "b"), "--trust", keys.fpr["signer"], "--keyring",
                str(keys.keyring("signer")), "--json", root=tmp_path / "other")
    assert r.returncode == 0 and r.stderr == "" and json.loads(r.stdout)["space"]["install_bytes"] > 0
