"""Chains: shortest path over a directory of deltas (reversible ones count both ways), chained apply
through staged intermediates, and the CLI in front of both."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from airlock.delta import apply_chain, find_chain, find_chain_steps, make_delta
from airlock.errors import AirlockError
from tests.delta.helpers import nudge, rand_tensor, tree_digest, write_model

AIRLOCK = str(Path(sys.executable).parent / "airlock")


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("chain")
    rng = np.random.default_rng(3)
    w = rand_tensor(rng, "w", "BF16", (64, 32))
    versions: dict[str, Path] = {}
    data = w[3]
    for i, v in enumerate(["1.0", "1.1", "1.2", "1.3"]):
        versions[v] = write_model(root / v, {"model.safetensors": [("w", "BF16", (64, 32), data)]},
                                  {"config.json": f'{{"v": {i}}}'.encode()})
        data = nudge(data, "BF16", rng, 0.3)
    deltas = root / "deltas"
    deltas.mkdir()
    make_delta(versions["1.0"], versions["1.1"], deltas / "a.aldelta", from_version="1.0", to_version="1.1",
               level=3)
    make_delta(versions["1.1"], versions["1.2"], deltas / "b.aldelta", from_version="1.1", to_version="1.2",
               level=3)
    make_delta(versions["1.2"], versions["1.3"], deltas / "c.aldelta", from_version="1.2", to_version="1.3",
               level=3, reverse=False)
    (deltas / "README.txt").write_text("not a delta")
    return deltas, versions


def test_shortest_path_both_directions(chain: tuple[Path, dict[str, Path]]) -> None:
    deltas, _ = chain
    assert [p.name for p in find_chain(deltas, "1.0", "1.3")] == ["a.aldelta", "b.aldelta", "c.aldelta"]
    back = find_chain_steps(deltas, "1.2", "1.0")
    assert [(s.path.name, s.reverse) for s in back] == [("b.aldelta", True), ("a.aldelta", True)]
    assert find_chain(deltas, "1.1", "1.1") == []
    with pytest.raises(AirlockError, match="no chain"):
        find_chain(deltas, "1.3", "1.2")  # c.aldelta was made with --no-reverse
    with pytest.raises(AirlockError, match="no chain"):
        find_chain(deltas, "1.0", "9.9")


def test_chained_apply_forward_and_back(chain: tuple[Path, dict[str, Path]], tmp_path: Path) -> None:
    deltas, versions = chain
    apply_chain(versions["1.0"], find_chain_steps(deltas, "1.0", "1.3"), tmp_path / "v13")
    assert tree_digest(tmp_path / "v13") == tree_digest(versions["1.3"])
    apply_chain(versions["1.2"], find_chain_steps(deltas, "1.2", "1.0"), tmp_path / "v10")
    assert tree_digest(tmp_path / "v10") == tree_digest(versions["1.0"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v10", "v13"]  # intermediates removed


def test_chain_failure_leaves_nothing(chain: tuple[Path, dict[str, Path]], tmp_path: Path) -> None:
    deltas, versions = chain
    with pytest.raises(AirlockError):  # 1.1 is not the source of the first step
        apply_chain(versions["1.1"], find_chain_steps(deltas, "1.0", "1.2"), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_cli_path_and_chain_apply(chain: tuple[Path, dict[str, Path]], tmp_path: Path) -> None:
    deltas, versions = chain
    r = subprocess.run([AIRLOCK, "delta", "path", "1.0", "1.2", "--dir", str(deltas), "--json"],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert [Path(s["delta"]).name for s in report["chain"]] == ["a.aldelta", "b.aldelta"]
    r = subprocess.run([AIRLOCK, "delta", "path", "1.3", "1.0", "--dir", str(deltas)], capture_output=True,
                       text=True, check=False)
    assert r.returncode == 1 and "no chain" in r.stderr
    r = subprocess.run([AIRLOCK, "delta", "apply", str(versions["1.2"]), "--chain-dir", str(deltas),
                        "--from", "1.2", "--to", "1.0", "-o", str(tmp_path / "out")],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert tree_digest(tmp_path / "out") == tree_digest(versions["1.0"])
    # without --from the source version is recognised by its content (1.3 is only a target)
    r = subprocess.run([AIRLOCK, "delta", "apply", str(versions["1.3"]), "--chain-dir", str(deltas),
                        "--to", "1.1", "-o", str(tmp_path / "o2"), "--json"], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 1 and "no chain" in r.stdout  # 1.3 -> 1.2 is forward-only
    r = subprocess.run([AIRLOCK, "delta", "apply", str(versions["1.2"]), "--chain-dir", str(deltas),
                        "--to", "1.0", "-o", str(tmp_path / "o3"), "--json"], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0, r.stdout
    assert json.loads(r.stdout)["from_version"] == "1.2"
    assert tree_digest(tmp_path / "o3") == tree_digest(versions["1.0"])
