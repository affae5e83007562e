"""Serving fixtures: the real MiniLM pair in an Airlock-layout repository and one real tritonserver."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.support import orphans_under, require_triton

_require_triton = require_triton  # the old name, for modules not moved yet


@pytest.fixture(scope="module", autouse=True)
def _no_orphaned_backend_stubs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests kill tritonserver with SIGKILL; its python-backend stubs can outlive it (one was found
    running 40 minutes later). After each module, kill those of this session's directories."""
    yield
    for pid in orphans_under(b"triton_python_backend_stub", str(tmp_path_factory.getbasetemp())):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@dataclass(frozen=True)
class Pair:
    old: Path
    new: Path


@pytest.fixture(scope="session")
def minilm_pair() -> Pair:
    from airlock.fixtures import ensure_minilm_pair

    pair = ensure_minilm_pair()
    return Pair(Path(pair.old), Path(pair.new))


@pytest.fixture(scope="session")
def goldens(minilm_pair: Pair) -> dict[str, dict]:
    from airlock.serving.golden import golden_record

    return {"1.0.0": golden_record(minilm_pair.old), "1.1.0": golden_record(minilm_pair.new)}


@pytest.fixture(scope="session")
def airlock_root(tmp_path_factory: pytest.TempPathFactory, minilm_pair: Pair) -> Path:
    """An Airlock root with the pair installed as immutable versions (files 0444)."""
    root = tmp_path_factory.mktemp("airlock")
    for version, src in (("1.0.0", minilm_pair.old), ("1.1.0", minilm_pair.new)):
        dst = root / "store" / version
        shutil.copytree(src, dst)
        for f in dst.rglob("*"):
            if f.is_file():
                f.chmod(0o444)
    return root


def add_model(root: Path, name: str, current: str = "1.0.0") -> Path:
    """A model named ``name`` in the Airlock layout, its versions hard-linked from the shared store."""
    model = root / "model_repo" / name
    for version in ("1.0.0", "1.1.0"):
        if not (model / version).exists():
            shutil.copytree(root / "store" / version, model / version, copy_function=_link)
    link = model / "current"
    if link.is_symlink():
        link.unlink()
    link.symlink_to(current)
    return model


def _link(src: str, dst: str) -> None:
    import os

    os.link(src, dst)


@pytest.fixture(scope="session")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """One real tritonserver (explicit model control, loopback, free ports) for the whole session."""
    _require_triton()
    from airlock.serving.server import ServerConfig, TritonServer

    base = tmp_path_factory.mktemp("triton")
    (base / "models").mkdir()
    server = TritonServer(ServerConfig(base / "models", base / "work"))
    with server:
        yield server


def ids() -> np.ndarray:
    from airlock.serving.golden import DEFAULT_INPUT_IDS

    return np.asarray(DEFAULT_INPUT_IDS, dtype=np.int64)


def two_llm_versions(root: Path, name: str, settings: dict[str, object]) -> Path:
    """``<root>/model_repo/<name>``: 1.0.0 and 1.1.0, two small DeepSeek-shaped models (seeds 0 and 1,
    each with its WordLevel tokenizer.json), read-only, ``current`` -> 1.0.0, serving ``settings``."""
    from airlock.fixtures.synthetic import generate_synthetic
    from airlock.serving.settings import configure

    model = root / "model_repo" / name
    for version, seed in (("1.0.0", 0), ("1.1.0", 1)):
        generate_synthetic(model / version, size_bytes=12 << 20, seed=seed)
        for f in (model / version).iterdir():
            f.chmod(0o444)
    (model / "current").symlink_to("1.0.0")
    configure(root, name, settings)
    return model
