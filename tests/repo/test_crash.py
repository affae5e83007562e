"""kill -9 at every write boundary (AIRLOCK_FAULT, a real SIGKILL in a subprocess running the CLI):
afterwards the version that was serving is intact and still serving (or the new one, once the
symlink swap happened), and the next run completes and leaves a consistent repository."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from airlock.repo import Repository
from tests.repo.conftest import Versions, assert_same_tree, cli, leftovers

Setup = Callable[[Repository, Versions], None]


def _one(r: Repository, v: Versions) -> None:
    r.install_version("m", "1.0.0", v.src["1.0.0"])


def _two(r: Repository, v: Versions) -> None:
    _one(r, v)
    r.update_from_delta("m", v.deltas[("1.0.0", "1.1.0")])


def _three(r: Repository, v: Versions) -> None:
    _two(r, v)
    r.update_from_delta("m", v.deltas[("1.1.0", "1.2.0")])


def _pruned(r: Repository, v: Versions) -> None:
    _three(r, v)
    r.prune("m", keep=2)


def _args(op: str, v: Versions) -> list[str]:
    return {
        "install": ["model", "install", "m", "1.1.0", str(v.src["1.1.0"])],
        "update": ["model", "update", "m", str(v.deltas[("1.0.0", "1.1.0")])],
        "activate": ["model", "activate", "m", "1.0.0"],
        "rollback": ["model", "rollback", "m"],
        "rebuild": ["model", "rollback", "m", "--to", "1.0.0"],
        "prune": ["model", "prune", "m", "--keep", "2"],
    }[op]


SETUP: dict[str, tuple[Setup, str]] = {  # op -> (setup, version serving at the end)
    "install": (_one, "1.1.0"), "update": (_one, "1.1.0"), "activate": (_two, "1.0.0"),
    "rollback": (_two, "1.0.0"), "rebuild": (_pruned, "1.0.0"), "prune": (_three, "1.2.0"),
}

CASES = [  # (operation, fault point, version serving right after the kill)
    ("install", "repo.install.mid-copy", "1.0.0"),
    ("install", "repo.install.before-rename", "1.0.0"),
    ("install", "repo.install.after-rename", "1.0.0"),
    ("install", "repo.install.after-catalog", "1.0.0"),
    ("install", "repo.audit.after-append", "1.0.0"),
    ("install", "repo.catalog.before-commit", "1.0.0"),
    ("install", "repo.activate.before-swap", "1.0.0"),
    ("install", "repo.activate.after-swap", "1.1.0"),
    ("update", "repo.update.after-keep-delta", "1.0.0"),
    ("update", "delta.apply.mid-file", "1.0.0"),
    ("update", "delta.apply.before-rename", "1.0.0"),
    ("update", "repo.update.before-rename", "1.0.0"),
    ("update", "repo.update.after-rename", "1.0.0"),
    ("update", "repo.update.after-catalog", "1.0.0"),
    ("update", "repo.activate.before-swap", "1.0.0"),
    ("update", "repo.activate.after-swap", "1.1.0"),
    ("activate", "repo.activate.before-swap", "1.1.0"),
    ("activate", "repo.activate.after-swap", "1.0.0"),
    ("activate", "repo.activate.intent-commit", "1.1.0"),
    ("activate", "repo.catalog.before-commit", "1.0.0"),  # the swap is done; catalog follows on recovery
    ("activate", "repo.recover.before-commit", "1.1.0"),
    ("rollback", "repo.rollback.before-swap", "1.1.0"),
    ("rollback", "repo.rollback.intent-commit", "1.1.0"),
    ("rollback", "repo.rollback.after-swap", "1.0.0"),
    ("rebuild", "delta.apply.mid-file", "1.2.0"),
    ("rebuild", "delta.apply.before-rename", "1.2.0"),
    ("rebuild", "repo.rollback.before-rename", "1.2.0"),
    ("rebuild", "repo.rollback.after-rename", "1.2.0"),
    ("rebuild", "repo.rollback.after-catalog", "1.2.0"),
    ("rebuild", "repo.rollback.after-swap", "1.0.0"),
    ("prune", "repo.prune.after-trash", "1.2.0"),
    ("prune", "repo.prune.after-catalog", "1.2.0"),
]


def _present(root: Path) -> dict[str, Path]:
    mdir = root / "model_repo" / "m"
    return {d.name: d for d in mdir.iterdir()
            if d.is_dir() and not d.is_symlink() and not d.name.startswith(".")}


@pytest.mark.parametrize("op,fault,serving", CASES, ids=[f"{o}-{f}" for o, f, _ in CASES])
def test_kill9_at_write_boundary(tmp_path: Path, versions: Versions, op: str, fault: str,
                                 serving: str) -> None:
    root = tmp_path / "root"
    setup, final = SETUP[op]
    repo = Repository(root)
    setup(repo, versions)
    repo.close()
    before = set(_present(root))

    r = cli(root, *_args(op, versions), fault=fault)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr)

    # right after the crash: the serving version is complete and untouched, so is every old version
    current = root / "model_repo" / "m" / "current"
    assert os.readlink(current) == serving
    assert_same_tree(current.resolve(), versions.src[serving])
    for v in before & set(_present(root)):
        assert_same_tree(_present(root)[v], versions.src[v])

    # the next run completes (recovering first) and the repository is consistent
    r = cli(root, *_args(op, versions))
    assert r.returncode == 0, r.stderr
    assert os.readlink(current) == final
    assert_same_tree(current.resolve(), versions.src[final])
    repo = Repository(root)
    try:
        report = repo.verify("m")
        assert report["ok"], report
        assert repo.state()["models"]["m"]["active"] == final
        if op == "rollback":  # also when the swap was finished by recovery: what was left is rolled back
            assert repo.state()["models"]["m"]["versions"]["1.1.0"] == "rolled_back"
        assert repo.catalog().get_meta("pending-activation:m") is None
        repo.audit_verify()
        assert leftovers(root) == []
        for row in repo.catalog().versions("m"):
            assert (row.state == "pruned") != (root / "model_repo" / "m" / row.version).is_dir()
    finally:
        repo.close()
