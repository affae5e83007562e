"""Full installs: layout, sealing, hard links, idempotence, SemVer, plan writes nothing, loadability."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from airlock.errors import RepositoryError, TensorFormatError, UnsafePathError
from airlock.repo import Provenance, Repository, SemVer, check_loadable
from tests.repo.conftest import Versions, assert_same_tree, cli, hashes, leftovers
from tests.repo.models import make_model
from tests.support import require_root


def test_install_layout_modes_and_catalog(repo: Repository, versions: Versions) -> None:
    plan = repo.install_version("m", "1.0.0", versions.src["1.0.0"],
                                provenance=Provenance(description="base", dependencies={"torch": "2.13"}))
    assert plan.changed
    lay = repo.layout
    vdir = lay.version_dir("m", "1.0.0")
    assert_same_tree(vdir, versions.src["1.0.0"])
    assert os.readlink(lay.current("m")) == "1.0.0"  # relative symlink
    assert stat.S_IMODE(vdir.stat().st_mode) == 0o700
    assert all(stat.S_IMODE((vdir / f).stat().st_mode) == 0o444 for f in hashes(vdir))
    assert lay.catalog.exists() and lay.audit_log.exists() and lay.packages.is_dir()
    row = repo.catalog().version("m", "1.0.0")
    assert row is not None and row.state == "active" and row.dependencies == {"torch": "2.13"}
    assert {r: f.sha256 for r, f in row.files.items()} == hashes(versions.src["1.0.0"])
    assert repo.state()["models"]["m"] == {"active": "1.0.0", "previous": None, "current": "1.0.0",
                                           "versions": {"1.0.0": "active"}}
    assert leftovers(lay.root) == []


def test_second_install_is_a_no_op_and_different_content_is_refused(repo: Repository, versions: Versions,
                                                                    tmp_path: Path) -> None:
    repo.install_version("m", "1.0.0", versions.src["1.0.0"])
    log_before = repo.layout.audit_log.read_bytes()
    again = repo.install_version("m", "1.0.0", versions.src["1.0.0"])
    assert not again.changed
    assert repo.layout.audit_log.read_bytes() == log_before  # nothing recorded: nothing happened
    with pytest.raises(RepositoryError, match="different content"):
        repo.install_version("m", "1.0.0", versions.src["1.1.0"])
    assert_same_tree(repo.layout.version_dir("m", "1.0.0"), versions.src["1.0.0"])
    # the CLI says the same: exit 0 and "no change", then exit 30
    r = cli(repo.root, "model", "install", "m", "1.0.0", str(versions.src["1.0.0"]), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["changed"] is False
    r = cli(repo.root, "model", "install", "m", "1.0.0", str(versions.src["1.2.0"]))
    assert r.returncode == 30 and "different content" in r.stderr


def test_unchanged_files_are_hard_links(repo: Repository, versions: Versions) -> None:
    repo.install_version("m", "1.0.0", versions.src["1.0.0"])
    plan = repo.install_version("m", "1.1.0", versions.src["1.1.0"])
    assert {f.relpath: f.how for f in plan.files} == {"config.json": "link", "tokenizer.json": "link",
                                                      "model.safetensors": "copy"}
    v1, v2 = repo.layout.version_dir("m", "1.0.0"), repo.layout.version_dir("m", "1.1.0")
    for rel in ("config.json", "tokenizer.json"):
        assert (v1 / rel).stat().st_ino == (v2 / rel).stat().st_ino
    assert (v1 / "model.safetensors").stat().st_ino != (v2 / "model.safetensors").stat().st_ino
    assert plan.bytes_linked == sum((v1 / r).stat().st_size for r in ("config.json", "tokenizer.json"))
    assert repo.state()["models"]["m"]["previous"] == "1.0.0"


def test_plan_writes_nothing_and_carries_a_diff(tmp_path: Path, versions: Versions) -> None:
    repo = Repository(tmp_path / "root")
    plan = repo.plan_install("m", "1.0.0", versions.src["1.0.0"])
    assert not (tmp_path / "root").exists()
    assert plan.changed and "active: None -> 1.0.0" in plan.diff and "+ model.safetensors" in plan.diff
    repo.install_version("m", "1.0.0", versions.src["1.0.0"])
    snap = hashes(repo.layout.repo)
    plan2 = repo.plan_install("m", "1.1.0", versions.src["1.1.0"])
    assert "= config.json" in plan2.diff and "hard link to 1.0.0/config.json" in plan2.diff
    assert "bytes needed" in plan2.diff and plan2.bytes_needed > 0
    assert hashes(repo.layout.repo) == snap
    r = cli(repo.root, "model", "install", "m", "1.1.0", str(versions.src["1.1.0"]), "--check")
    assert r.returncode == 0 and "active: 1.0.0 -> 1.1.0" in r.stdout
    assert hashes(repo.layout.repo) == snap and not repo.layout.version_dir("m", "1.1.0").exists()


@pytest.mark.parametrize("bad", ["1.0", "01.0.0", "1.0.0-", "v1.0.0", "1.0.0+", "../1.0.0", "1.0.0/x"])
def test_semver_is_strict(repo: Repository, versions: Versions, bad: str) -> None:
    with pytest.raises(RepositoryError, match="SemVer"):
        repo.plan_install("m", bad, versions.src["1.0.0"])


def test_semver_ordering() -> None:
    order = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2",
             "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.0.10", "2.0.0+build.5"]
    assert sorted(reversed(order), key=lambda v: SemVer.parse(v).key()) == order


@pytest.mark.parametrize("name", ["metadata", "update_packages", "../x", ".hidden", "a/b", ""])
def test_model_names_are_checked(repo: Repository, versions: Versions, name: str) -> None:
    with pytest.raises(RepositoryError, match="model name"):
        repo.install_version(name, "1.0.0", versions.src["1.0.0"])


def _break(src: Path, tmp: Path, how: str) -> Path:
    d = tmp / how
    shutil.copytree(src, d)
    cfg = json.loads((d / "config.json").read_text())
    if how == "vocab":
        cfg["vocab_size"] += 1
    elif how == "layers":
        cfg["num_hidden_layers"] = 3
    elif how == "hidden":
        cfg["hidden_size"] = 48
    elif how == "header":
        with open(d / "model.safetensors", "r+b") as fh:
            fh.seek(8)
            fh.write(b"[")
    (d / "config.json").write_text(json.dumps(cfg))
    return d


@pytest.mark.parametrize("how,rule", [("vocab", "loadable-shape"), ("layers", "loadable-layers"),
                                      ("hidden", "loadable-shape"), ("header", None)])
def test_unloadable_version_is_refused_and_changes_nothing(
        repo: Repository, versions: Versions, tmp_path: Path, how: str, rule: str | None) -> None:
    repo.install_version("m", "1.0.0", versions.src["1.0.0"])
    snap = hashes(repo.layout.repo / "m")
    with pytest.raises(TensorFormatError) as err:
        repo.install_version("m", "1.1.0", _break(versions.src["1.1.0"], tmp_path, how))
    if rule:
        assert err.value.rule == rule
    assert hashes(repo.layout.repo / "m") == snap
    assert os.readlink(repo.layout.current("m")) == "1.0.0" and leftovers(repo.root) == []
    failures = [h for h in repo.history("m") if h["result"] == "failed"]
    assert failures and failures[-1]["action"] == "install"


def test_loadability_report_and_torch_check(versions: Versions, tmp_path: Path) -> None:
    rep = check_loadable(versions.src["1.0.0"], use_torch=True)
    assert rep.layers == 2 and rep.embedding == ("embeddings.word_embeddings.weight", [64, 32])
    assert {"embedding", "layers", "dtype", "torch"} <= set(rep.checks)
    sharded = make_model(tmp_path / "s", layers=2)
    (sharded / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"embeddings.word_embeddings.weight": "other.safetensors"}}))
    with pytest.raises(TensorFormatError, match=r"mapped to other\.safetensors"):
        check_loadable(sharded)


def test_symlink_in_source_is_refused(repo: Repository, versions: Versions, tmp_path: Path) -> None:
    d = tmp_path / "src"
    shutil.copytree(versions.src["1.0.0"], d)
    (d / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(UnsafePathError):
        repo.install_version("m", "1.0.0", d)
    assert not repo.layout.version_dir("m", "1.0.0").exists()


def test_owner_and_group_applied_as_root(tmp_path: Path, versions: Versions) -> None:
    require_root("chown of installed versions")
    import grp
    import pwd

    repo = Repository(tmp_path / "root", owner="nobody", group="nogroup")
    repo.install_version("m", "1.0.0", versions.src["1.0.0"])
    vdir = repo.layout.version_dir("m", "1.0.0")
    uid, gid = pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
    for p in [vdir, *(vdir / f for f in hashes(vdir))]:
        st = p.stat()
        assert (st.st_uid, st.st_gid) == (uid, gid)
    assert repo.verify("m")["ok"]
    os.chown(vdir / "config.json", 0, 0)
    report = repo.verify("m")
    assert not report["ok"] and report["versions"][0]["problems"][0]["kind"] == "owner"


def test_tampered_link_source_is_copied_not_linked(repo: Repository, versions: Versions) -> None:
    repo.install_version("m", "1.0.0", versions.src["1.0.0"])
    tok = repo.layout.version_dir("m", "1.0.0") / "tokenizer.json"
    os.chmod(tok, 0o644)
    tok.write_text(tok.read_text().replace("t1", "tX"))
    repo.install_version("m", "1.1.0", versions.src["1.1.0"])
    new = repo.layout.version_dir("m", "1.1.0")
    assert_same_tree(new, versions.src["1.1.0"])
    assert (new / "tokenizer.json").stat().st_ino != tok.stat().st_ino


def test_queries_on_an_empty_root_fail_clearly(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "nothing")
    assert repo.list_models() == [] and repo.state()["models"] == {}
    for call in (lambda: repo.plan_rollback("m"), lambda: repo.plan_activate("m", "1.0.0"),
                 lambda: repo.verify("m"), lambda: repo.plan_prune("m")):
        with pytest.raises(RepositoryError, match="no model repository"):
            call()
    assert not (tmp_path / "nothing").exists()


def test_tensor_names_are_unique_per_directory_not_per_model(tmp_path: Path) -> None:
    """A diffusers-style model (unet/, vae/) reuses tensor names across components: loadable. Two
    shards of one checkpoint (one directory) holding the same name are refused."""
    import numpy as np
    from safetensors.numpy import save_file

    model = tmp_path / "pipe"
    for part in ("unet", "vae"):
        (model / part).mkdir(parents=True)
        save_file({"conv_in.weight": np.ones((4, 4), np.float32)}, str(model / part / "model.safetensors"))
    rep = check_loadable(model)
    assert (rep.files, rep.tensors) == (2, 2)
    save_file({"conv_in.weight": np.zeros((4, 4), np.float32)}, str(model / "vae" / "extra.safetensors"))
    with pytest.raises(TensorFormatError, match=r"also present in vae/") as err:
        check_loadable(model)
    assert err.value.rule == "loadable-duplicate"
