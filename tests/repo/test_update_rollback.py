"""Delta updates, activation, rollback (swap and rebuild from reverse deltas after prune), retention."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from airlock.errors import IntegrityError, RepositoryError
from airlock.repo import Provenance, Repository
from tests.repo.conftest import Versions, assert_same_tree, cli, hashes, leftovers


def _three(repo: Repository, v: Versions) -> None:
    repo.install_version("m", "1.0.0", v.src["1.0.0"])
    repo.update_from_delta("m", v.deltas[("1.0.0", "1.1.0")])
    repo.update_from_delta("m", v.deltas[("1.1.0", "1.2.0")])


def test_update_from_delta_links_unchanged_and_keeps_the_delta(repo: Repository, versions: Versions) -> None:
    repo.install_version("m", "1.0.0", versions.src["1.0.0"])
    plan = repo.update_from_delta("m", versions.deltas[("1.0.0", "1.1.0")])
    assert plan.changed and plan.version == "1.1.0"
    v1, v2 = repo.layout.version_dir("m", "1.0.0"), repo.layout.version_dir("m", "1.1.0")
    assert_same_tree(v2, versions.src["1.1.0"])
    assert (v1 / "tokenizer.json").stat().st_ino == (v2 / "tokenizer.json").stat().st_ino
    assert (v1 / "config.json").stat().st_ino == (v2 / "config.json").stat().st_ino
    assert os.readlink(repo.layout.current("m")) == "1.1.0"
    kept = repo.layout.model_packages("m") / "m-1.0.0-1.1.0.aldelta"
    assert kept.read_bytes() == versions.deltas[("1.0.0", "1.1.0")].read_bytes()
    st = repo.state()["models"]["m"]
    assert (st["active"], st["previous"]) == ("1.1.0", "1.0.0")
    # the same delta again: no change
    assert not repo.update_from_delta("m", versions.deltas[("1.0.0", "1.1.0")]).changed
    assert repo.verify("m")["ok"] and leftovers(repo.root) == []


def test_update_preflight_counts_delta_and_unlinked_bytes(repo: Repository, versions: Versions) -> None:
    repo.install_version("m", "1.0.0", versions.src["1.0.0"])
    plan = repo.plan_update("m", versions.deltas[("1.0.0", "1.1.0")])
    block = os.statvfs(repo.layout.repo).f_frsize
    model = (versions.src["1.1.0"] / "model.safetensors").stat().st_size
    delta = versions.deltas[("1.0.0", "1.1.0")].stat().st_size
    assert plan.bytes_needed == -(-model // block) * block + -(-delta // block) * block
    assert plan.bytes_linked == sum((versions.src["1.1.0"] / f).stat().st_size
                                    for f in ("config.json", "tokenizer.json"))


def test_update_needs_its_source_version(repo: Repository, versions: Versions) -> None:
    repo.install_version("m", "1.0.0", versions.src["1.0.0"])
    with pytest.raises(RepositoryError, match=r"1\.1\.0, which is not installed"):
        repo.update_from_delta("m", versions.deltas[("1.1.0", "1.2.0")])
    r = cli(repo.root, "model", "update", "m", str(versions.deltas[("1.1.0", "1.2.0")]))
    assert r.returncode == 30
    failed = [h for h in repo.history("m") if h["result"] == "failed"]
    assert [h["action"] for h in failed] == ["update", "update"]
    assert "not installed" in failed[0]["details"]["message"]


def test_signed_target_hashes_must_match_the_delta(repo: Repository, versions: Versions) -> None:
    repo.install_version("m", "1.0.0", versions.src["1.0.0"])
    wrong = {rel: {"size": (versions.src["1.2.0"] / rel).stat().st_size, "sha256": sha}
             for rel, sha in hashes(versions.src["1.2.0"]).items()}
    with pytest.raises(IntegrityError, match="signed manifest"):
        repo.update_from_delta("m", versions.deltas[("1.0.0", "1.1.0")], target_files=wrong)
    assert not repo.layout.version_dir("m", "1.1.0").exists()


def test_activate_and_rollback_by_swap(repo: Repository, versions: Versions) -> None:
    repo.install_version("m", "1.0.0", versions.src["1.0.0"])
    repo.update_from_delta("m", versions.deltas[("1.0.0", "1.1.0")])
    plan = repo.rollback("m")
    assert plan.version == "1.0.0" and os.readlink(repo.layout.current("m")) == "1.0.0"
    states = repo.state()["models"]["m"]["versions"]
    assert states == {"1.0.0": "active", "1.1.0": "rolled_back"}  # an operator's rollback is no failure
    with pytest.raises(RepositoryError, match="no previous version"):
        repo.rollback("m")
    assert repo.activate("m", "1.1.0").changed
    assert not repo.activate("m", "1.1.0").changed
    r = cli(repo.root, "model", "rollback", "m", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["version"] == "1.0.0"
    r = cli(repo.root, "model", "activate", "m", "1.1.0")
    assert r.returncode == 0 and os.readlink(repo.layout.current("m")) == "1.1.0"
    actions = [h["action"] for h in repo.history("m")]
    assert "activate" in actions
    assert [h["result"] for h in repo.history("m") if h["action"] == "rollback"] == ["ok", "failed", "ok"]


def test_prune_never_removes_active_or_previous(repo: Repository, versions: Versions) -> None:
    _three(repo, versions)  # 1.2.0 active, 1.1.0 previous
    plan = repo.prune("m", keep=1)
    assert plan.remove_versions == ["1.0.0"]
    assert not repo.layout.version_dir("m", "1.0.0").exists()
    for v in ("1.1.0", "1.2.0"):
        assert_same_tree(repo.layout.version_dir("m", v), versions.src[v])  # hard links survive
    assert repo.state()["models"]["m"]["versions"]["1.0.0"] == "pruned"
    assert not repo.prune("m", keep=1).changed
    # after activating 1.0-less history: activate 1.1.0 -> previous 1.2.0, nothing else to remove
    repo.activate("m", "1.1.0")
    assert not repo.plan_prune("m", keep=1).changed
    with pytest.raises(RepositoryError):
        repo.plan_prune("m", keep=0)


def test_prune_keeps_the_newest(repo: Repository, versions: Versions) -> None:
    _three(repo, versions)
    repo.activate("m", "1.0.0")  # active 1.0.0, previous 1.2.0: 1.1.0 is the only candidate
    assert repo.plan_prune("m", keep=3).changed is False
    assert repo.plan_prune("m", keep=2).remove_versions == ["1.1.0"]
    r = cli(repo.root, "model", "prune", "m", "--keep", "2", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["remove"][0].endswith("/1.1.0")


def test_rollback_after_prune_rebuilds_from_reverse_deltas(repo: Repository, versions: Versions) -> None:
    _three(repo, versions)
    repo.prune("m", keep=2)
    assert not repo.layout.version_dir("m", "1.0.0").exists()
    plan = repo.plan_rollback("m", "1.0.0")
    assert plan.rebuild and "rebuilt from 2 delta(s)" in plan.diff
    assert not repo.layout.version_dir("m", "1.0.0").exists()  # planning wrote nothing
    repo.rollback("m", to="1.0.0")
    v0 = repo.layout.version_dir("m", "1.0.0")
    assert_same_tree(v0, versions.src["1.0.0"])
    assert os.readlink(repo.layout.current("m")) == "1.0.0"
    st = repo.state()["models"]["m"]["versions"]
    assert st == {"1.0.0": "active", "1.1.0": "previous", "1.2.0": "rolled_back"}
    report = repo.verify("m")
    assert report["ok"], report
    assert leftovers(repo.root) == []


def test_rollback_to_unknown_version(repo: Repository, versions: Versions) -> None:
    repo.install_version("m", "1.0.0", versions.src["1.0.0"])
    with pytest.raises(RepositoryError, match="never installed"):
        repo.rollback("m", to="0.9.0")


def test_list_show_history_cli(repo: Repository, versions: Versions, tmp_path: Path) -> None:
    repo.install_version("m", "1.0.0", versions.src["1.0.0"],
                         provenance=Provenance(description="base", dependencies={"cuda": "12"}))
    repo.update_from_delta("m", versions.deltas[("1.0.0", "1.1.0")])
    r = cli(repo.root, "model", "list", "--json")
    models = json.loads(r.stdout)["models"]
    assert models[0]["model"] == "m" and models[0]["active"] == "1.1.0"
    r = cli(repo.root, "model", "show", "m", "1.0.0", "--json")
    info = json.loads(r.stdout)
    assert info["dependencies"] == {"cuda": "12"} and info["files"]["config.json"]["sha256"]
    r = cli(repo.root, "model", "history", "m", "--json")
    hist = json.loads(r.stdout)["history"]
    assert [h["action"] for h in hist] == ["install", "activate", "update", "activate"]
    assert all(h["actor"].count("@") == 1 for h in hist)
    r = cli(repo.root, "model", "show", "nope")
    assert r.returncode == 30


def test_recover_removes_only_unrecorded_version_dirs(repo: Repository, versions: Versions) -> None:
    repo.install_version("m", "1.0.0", versions.src["1.0.0"])
    mdir = repo.layout.model_dir("m")
    (mdir / "9.9.9").mkdir()  # looks like a half-installed version: not in the catalog
    (mdir / "notes").mkdir()  # not a version: left alone
    (mdir / ".staging-1.1.0-abc").mkdir()
    repo.update_from_delta("m", versions.deltas[("1.0.0", "1.1.0")])
    assert not (mdir / "9.9.9").exists() and not (mdir / ".staging-1.1.0-abc").exists()
    assert (mdir / "notes").is_dir()
    recover = [h for h in repo.history() if h["action"] == "recover"]
    assert len(recover) == 1 and len(recover[0]["details"]["actions"]) == 2
