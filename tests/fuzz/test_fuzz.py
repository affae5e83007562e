"""The fuzz targets in the test suite: every regression input (a past finding or a hand-made hostile
case) replays without a traceback, and each target runs for a few seconds under atheris (coverage
guided) without a finding. `make fuzz` runs them for long (FUZZ_SECONDS per target)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.targets import TARGETS

HERE = Path(__file__).parent
REGRESSIONS = HERE / "regressions"
SHORT = int(os.environ.get("AIRLOCK_FUZZ_SHORT_SECONDS", "4"))


def _regressions() -> list[tuple[str, Path]]:
    return [(d.name, f) for d in sorted(REGRESSIONS.iterdir()) if d.is_dir() for f in sorted(d.iterdir())]


@pytest.mark.parametrize(("target", "path"), _regressions(),
                         ids=lambda v: v if isinstance(v, str) else v.name)
def test_regression_replays_cleanly(target: str, path: Path) -> None:
    TARGETS[target].run(path.read_bytes())


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_seeds_are_accepted_or_refused_cleanly(target: str) -> None:
    if target == "manifest_struct":
        pytest.importorskip("atheris", reason="pip install atheris (in the test extras)")
    for seed in TARGETS[target].seeds():
        TARGETS[target].run(seed)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_short_fuzz_run_finds_nothing(target: str, tmp_path: Path) -> None:
    pytest.importorskip("atheris", reason="pip install atheris (in the test extras)")
    corpus = tmp_path / "corpus"
    proc = subprocess.run([sys.executable, "-m", "tests.fuzz.run", target, "--seconds", str(SHORT),
                           "--corpus", str(corpus), "--artifacts", str(tmp_path / "crashes")],
                          capture_output=True, text=True, timeout=SHORT + 180, cwd=HERE.parents[1],
                          env={**os.environ, "AIRLOCK_FUZZ_TMP": str(tmp_path)})
    tail = proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, tail
    assert "Done" in proc.stderr and not list((tmp_path / "crashes").iterdir()), tail


WRONG = ([1], {"a": 1}, "x", -1, 2**70, None, 1.5, True)


def _leaves(v: object, path: list[object]) -> list[list[object]]:
    out = [path]
    if isinstance(v, dict):
        for k in v:
            out += _leaves(v[k], [*path, k])
    elif isinstance(v, list):
        for i, x in enumerate(v[:3]):
            out += _leaves(x, [*path, i])
    return out


def test_delta_index_every_field_wrong_type() -> None:
    """Structure-aware sweep (it found the int64 overflow in the column layout): every field of a real
    delta index, in turn, replaced by a value of another type or out of range."""
    import copy
    import json
    import struct

    from tests.fuzz.targets import raw_index_of, real_delta

    raw = raw_index_of(real_delta())
    (n,) = struct.unpack_from("<Q", raw)
    meta, rest = json.loads(raw[8:8 + n]), raw[8 + n:]
    for path in _leaves(meta, [])[1:]:
        for value in WRONG:
            doc = copy.deepcopy(meta)
            parent = doc
            for k in path[:-1]:
                parent = parent[k]
            parent[path[-1]] = value
            body = json.dumps(doc).encode()
            TARGETS["delta_index"].run(struct.pack("<Q", len(body)) + body + rest)


def _sweep(doc: object, encode: object, target: str) -> None:
    import copy

    for path in _leaves(doc, [])[1:]:
        for value in WRONG:
            changed = copy.deepcopy(doc)
            parent = changed
            for k in path[:-1]:
                parent = parent[k]  # type: ignore[index]
            parent[path[-1]] = value  # type: ignore[index]
            TARGETS[target].run(encode(changed))  # type: ignore[operator]


def test_manifest_and_safetensors_every_field_wrong_type() -> None:
    import json

    from airlock.bundle.manifest import to_dict
    from tests.fuzz.targets import safetensors_bytes, sample_manifest

    _sweep(to_dict(sample_manifest()), lambda d: json.dumps(d).encode(), "manifest")
    header = {"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
              "b": {"dtype": "BF16", "shape": [3], "data_offsets": [16, 22]}, "__metadata__": {"k": "v"}}
    _sweep(header, lambda h: safetensors_bytes(h, bytes(22)), "safetensors")
