"""Small real bundles built from a spec (payloads with fixed seeds), signed with the ``keys`` fixture's
signer: the ``factory`` fixture in tests/conftest.py."""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from airlock.bundle import build_bundle
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
             extra: dict[str, bytes] | None = None) -> Path:
        self._n[0] += 1
        work = self.tmp / f"src-{self._n[0]}"
        make_tree(work / "model", model_files or {
            "config.json": b'{"hidden": 8}\n',
            "model.safetensors": payload(3 * BLOCK + 123, 1),
            "big.bin": payload(25_000, 2),  # split into 3 parts at 10_000
        })
        spec: dict[str, object] = {
            "compatible": compatible, "sequence": sequence, "rollback": rollback, "block_size": BLOCK,
            "split_size": split_size,
            "models": [{"name": "minilm", "version": "1.0.0", "path": "model",
                        "golden": {"input": "hello", "expected": [0.1, 0.2], "tolerance": 0.01}}],
        }
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
