"""Small real bundles built from a spec (payloads with fixed seeds), signed with the ``keys`` fixture's
signer: the ``factory`` fixture in tests/conftest.py."""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from airlock.bundle import Trust, build_bundle
from airlock.bundle.manifest import MANIFEST_NAME, SIGNATURE_NAME
from tests.gpg import Keys
from tests.support import REPO

BLOCK = 4096


def make_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def payload(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


@dataclass
class BundleFactory:
    keys: Keys
    tmp: Path
    _n: list[int] = field(default_factory=lambda: [0])

    def spec(self, *, sequence: int = 5, rollback: bool = False, compatible: str = "appliance-test",
             split_size: int = 10_000, model_files: dict[str, bytes] | None = None,
             extra: dict[str, bytes] | None = None, block_size: int = BLOCK, compress: bool = False) -> Path:
        self._n[0] += 1
        work = self.tmp / f"src-{self._n[0]}"
        make_tree(work / "model", model_files or {
            "config.json": b'{"hidden": 8}\n',
            "model.safetensors": payload(3 * BLOCK + 123, 1),
            "big.bin": payload(25_000, 2),  # split into 3 parts at 10_000
        })
        spec: dict[str, object] = {
            "compatible": compatible, "sequence": sequence, "rollback": rollback, "block_size": block_size,
            "split_size": split_size,
            "models": [{"name": "minilm", "version": "1.0.0", "path": "model",
                        "golden": {"input": "hello", "expected": [0.1, 0.2], "tolerance": 0.01}}],
        }
        if compress:
            spec["compress"] = True
        if extra:
            make_tree(work / "extra", extra)
            spec["files"] = [{"src": f"extra/{rel}", "dest": f"files/{rel}"} for rel in extra]
        path = work / "bundle.yml"
        path.write_text(yaml.safe_dump(spec))
        return path

    def build(self, name: str = "bundle", **kw: object) -> Path:
        out = self.tmp / f"{name}-{self._n[0] + 1}"
        build_bundle(self.spec(**kw), out, signer=self.keys.fpr["signer"], gnupghome=self.keys.home)  # type: ignore[arg-type]
        return out


def airlock_cmd() -> list[str]:
    exe = Path(shutil.which("airlock") or REPO / ".venv/bin/airlock")
    return [str(exe)]


def build_model_bundle(tmp: Path, keys: Keys, name: str, model: dict[str, object], sequence: int,
                       rollback: bool = False) -> Path:
    """A bundle of one ``model`` entry (a full version's path, or a delta's old/new), profile
    appliance-test, signed by the signer, built into ``tmp/name``."""
    spec = tmp / f"{name}.yml"
    spec.write_text(yaml.safe_dump({"compatible": "appliance-test", "sequence": sequence, "block_size": 4096,
                                    "rollback": rollback, "models": [model]}))
    out = tmp / name
    build_bundle(spec, out, signer=keys.fpr["signer"], gnupghome=keys.home)
    return out


def signer_trust(keys: Keys) -> Trust:
    """Trust in the signer only (what the ``trust`` fixture gives)."""
    return keys.trust(["signer"], "signer")


# the minilm bundle's physical names, and a manifest re-signed as an attacker holding the key would
CFG = "models/minilm/1.0.0/config.json"
ST = "models/minilm/1.0.0/model.safetensors"
BIG = "models/minilm/1.0.0/big.bin"


def canonical(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


def resign(keys: Keys, bundle: Path, data: bytes) -> None:
    """An attacker holding the signing key (or a buggy builder): the checks after the signature hold."""
    (bundle / MANIFEST_NAME).write_bytes(data)
    (bundle / SIGNATURE_NAME).write_bytes(keys.sign(data, "signer"))
