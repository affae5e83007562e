"""Small real signed bundles for the Ansible tests: a throwaway GnuPG key, a full bundle of a tiny
BERT-shaped model 1.0.0 and a delta bundle to 1.1.0 (a partial fine-tune), built with the engine."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from airlock.bundle import Trust, build_bundle, stage_bundle
from airlock.repo import Repository
from tests.repo.models import make_model

MODEL = "tiny"
PROFILE = "airlock-test-cpu"


@dataclass
class Bundles:
    full: Path
    delta: Path
    fingerprint: str
    keyring: Path
    gnupghome: Path
    old: Path
    new: Path


def _gpg(home: Path, *args: str) -> bytes:
    return subprocess.run(["gpg", "--batch", "--yes", "--no-tty", "--homedir", str(home), *args],
                          check=True, capture_output=True).stdout


def make_bundles(base: Path) -> Bundles:
    home = base / "gnupg"
    home.mkdir(mode=0o700, parents=True)
    _gpg(home, "--passphrase", "", "--quick-gen-key", "Airlock Test <release@airlock.test>", "ed25519",
         "sign", "never")
    fpr = next(line.split(":")[9] for line in _gpg(home, "--with-colons", "--list-keys").decode().splitlines()
               if line.startswith("fpr:"))
    keyring = base / "trusted.asc"
    keyring.write_bytes(_gpg(home, "--armor", "--export", fpr))
    old = make_model(base / "src" / "1.0.0")
    new = make_model(base / "src" / "1.1.0", change_layer=1, seed=3)
    specs = {
        "full": {"compatible": PROFILE, "sequence": 1, "bundle_id": "test-full",
                 "models": [{"name": MODEL, "version": "1.0.0", "path": str(old), "description": "tiny"}]},
        "delta": {"compatible": PROFILE, "sequence": 2, "bundle_id": "test-delta",
                  "models": [{"name": MODEL, "version": "1.1.0", "from_version": "1.0.0",
                              "delta": {"old": str(old), "new": str(new)}}]},
    }
    out = {}
    for kind, spec in specs.items():
        path = base / f"{kind}.yml"
        path.write_text(yaml.safe_dump(spec))
        out[kind] = base / f"bundle-{kind}"
        build_bundle(path, out[kind], signer=fpr, gnupghome=home)
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False,
                   capture_output=True)
    return Bundles(out["full"], out["delta"], fpr, keyring, home, old, new)


def trust_of(b: Bundles) -> Trust:
    return Trust(fingerprints=[b.fingerprint], keyring=b.keyring)


def install_host(root: Path, b: Bundles, work: Path) -> Repository:
    """A host that installed the full bundle (1.0.0, sequence 1) then the delta bundle (1.1.0, 2),
    through the engine (staging, then the repository); the caller closes the repository."""
    repo = Repository(root, lock_timeout=5)
    for name, bundle in (("full", b.full), ("delta", b.delta)):
        staged = stage_bundle(bundle, work / f"stage-{root.name}-{name}", trust_of(b),
                              installed_sequence=repo.installed_sequence())
        repo.install_from_bundle(staged)
    return repo
