"""Storage tiers on a plain directory (docs/tiers.md): demote/promote verified against the signed
hashes, prune demotes, activate/rollback promote, the policy, refusals, and a real kill -9 at every
boundary of both moves (the version is in exactly one complete location after recovery)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from airlock.bundle import stage_bundle
from airlock.crypto import ProviderRegistry, is_encrypted
from airlock.errors import RepositoryError
from airlock.repo import Repository, tier
from airlock.repo import audit as audit_log
from tests.bundle.factory import build_model_bundle as _bundle
from tests.bundle.factory import signer_trust as _trust
from tests.crypto.softhsm import SoftHsm
from tests.gpg import Keys
from tests.repo.conftest import Versions, cli, hashes
from tests.support import flip_byte, tree_state

BOUNDARIES = ("mid-copy", "after-copy", "after-rename", "before-commit", "after-commit", "after-trash")


def _setup(tmp_path: Path, versions: Versions, n: int = 2) -> tuple[Repository, Path]:
    """Versions 1.0.0..(n) installed from directories (1.0.0 previous when n == 2) and a warm tier."""
    repo = Repository(tmp_path / "root", lock_timeout=5)
    for v in list(versions.src)[:n]:
        repo.install_version("m", v, versions.src[v])
    warm = tmp_path / "warm"
    warm.mkdir()
    tier.configure(repo, dirs={"warm": warm})
    return repo, warm


def _dot_entries(*dirs: Path) -> list[str]:
    return sorted(str(p) for d in dirs if d.is_dir() for p in d.iterdir() if p.name.startswith("."))


def _only_in(repo: Repository, warm: Path, version: str, where: str, want: dict[str, str]) -> None:
    """The catalog records ``where``; that copy is complete and sealed; the other one is gone."""
    row = repo.catalog().version("m", version)
    assert row is not None and row.location == where and row.state != "pruned"
    hot, cold_copy = repo.layout.version_dir("m", version), warm / "m" / version
    here, other = (hot, cold_copy) if where == "hot" else (cold_copy, hot)
    assert hashes(here) == want and not other.exists()
    assert all(stat.S_IMODE(os.stat(here / f).st_mode) == 0o444 for f in want)
    loc = tier.location_of(repo.catalog(), "m", version)
    assert loc is not None and (loc.tier, loc.path) == (where, here)


def test_demote_promote_signed_version_by_cli(tmp_path: Path, keys: Keys,
                                              versions: Versions) -> None:
    """A bundle-installed version goes to the warm tier and back, checked against its kept signed
    manifest; a copy changed in the warm tier is refused (exit 13) and stays where it was; rollback
    to a warm version promotes it, then activates it; everything is audited and verify stays clean."""
    root = tmp_path / "root"
    repo = Repository(root, lock_timeout=5)
    full = _bundle(tmp_path, keys, "full", {"name": "m", "version": "1.0.0",
                                             "path": str(versions.src["1.0.0"])}, 5)
    repo.install_from_bundle(stage_bundle(full, tmp_path / "stage", _trust(keys)))
    repo.install_version("m", "1.1.0", versions.src["1.1.0"])
    repo.close()
    warm = tmp_path / "warm"
    warm.mkdir()
    assert cli(root, "tier", "configure", "--warm", str(warm), "--keep-hot", "2", "--json").returncode == 0

    r = cli(root, "tier", "demote", "m", "1.0.0", "--json")
    assert r.returncode == 0, r.stderr
    moved = json.loads(r.stdout)
    assert moved["changed"] and moved["from"] == "hot" and moved["to"] == "warm" and moved["files"] == 3
    assert moved["verified_against"].startswith("signed-manifest:")
    _only_in(repo, warm, "1.0.0", "warm", hashes(versions.src["1.0.0"]))
    st = cli(root, "tier", "status", "--json")
    assert st.returncode == 0, st.stderr
    report = json.loads(st.stdout)
    assert {(v["version"], v["location"]) for v in report["versions"]} == {("1.0.0", "warm"),
                                                                           ("1.1.0", "hot")}
    assert report["tiers"]["warm"]["path"] == str(warm) and report["tiers"]["warm"]["versions"] == 1
    assert report["policy"] == {"keep_hot": 2, "hot_share": None}
    assert repo.verify("m")["ok"] is True  # a warm version is no missing directory

    # the active version stays hot; unknown versions and tiers are refused in one line
    for args, code, rule in ((("demote", "m", "1.1.0"), 30, "tier-active"),
                             (("demote", "m", "9.9.9"), 30, "version-missing"),
                             (("demote", "m", "1.0.0", "--to", "lukewarm"), 30, "tier")):
        bad = cli(root, "tier", *args, "--json")
        assert bad.returncode == code and json.loads(bad.stdout)["rule"] == rule, bad.stdout + bad.stderr
        assert "Traceback" not in bad.stderr

    # a copy changed in the warm tier is refused by the signed hashes, and stays the only copy
    victim = warm / "m" / "1.0.0" / "model.safetensors"  # (config.json would be linked from 1.1.0)
    os.chmod(victim, 0o644)
    data = bytearray(victim.read_bytes())
    data[-1] ^= 1
    victim.write_bytes(bytes(data))
    bad = cli(root, "tier", "promote", "m", "1.0.0", "--json")
    assert bad.returncode == 13 and json.loads(bad.stdout)["rule"] == "tier-hash", bad.stdout
    checked = cli(root, "tier", "status", "--verify", "--json")  # found at rest too, read-only
    assert checked.returncode == 13, checked.stderr
    found = {v["version"]: v.get("problems") for v in json.loads(checked.stdout)["versions"]}
    assert found["1.1.0"] is None and [p.split(":")[0] for p in found["1.0.0"]] == ["model.safetensors"]
    assert repo.catalog().version("m", "1.0.0").location == "warm"  # type: ignore[union-attr]
    assert not repo.layout.version_dir("m", "1.0.0").exists()
    assert _dot_entries(repo.layout.model_dir("m"), warm / "m") == []
    data[-1] ^= 1
    victim.write_bytes(bytes(data))

    assert cli(root, "tier", "status", "--verify").returncode == 0
    rb = cli(root, "model", "rollback", "m", "--json")
    assert rb.returncode == 0, rb.stderr
    assert os.readlink(repo.layout.current("m")) == "1.0.0"
    _only_in(repo, warm, "1.0.0", "hot", hashes(versions.src["1.0.0"]))
    actions = [(r["action"], r["result"]) for r in audit_log.records(repo.layout.audit_log, 0)]
    assert ("tier-configure", "ok") in actions and ("tier-demote", "ok") in actions
    assert ("tier-promote", "failed") in actions
    assert actions.index(("tier-promote", "ok")) < actions.index(("rollback", "ok"))
    assert repo.audit_verify().ok and repo.verify("m")["ok"] is True


def test_prune_demotes_activate_promotes_and_policy(tmp_path: Path, versions: Versions) -> None:
    """With a warm tier, prune demotes instead of deleting; activate of a warm version promotes it
    first (unchanged files hard-linked from the hot versions); the keep-hot policy demotes what is
    beyond it and its check mode moves nothing."""
    repo, warm = _setup(tmp_path, versions, n=3)  # 1.2.0 active, 1.1.0 previous
    assert any("demoted there" in n for n in repo.plan_prune("m", keep=2).notes)  # check mode says so
    plan = repo.prune("m", keep=2)
    assert plan.remove_versions == ["1.0.0"]
    _only_in(repo, warm, "1.0.0", "warm", hashes(versions.src["1.0.0"]))
    assert repo.catalog().version("m", "1.0.0").state == "staged"  # type: ignore[union-attr]

    repo.activate("m", "1.0.0")
    assert os.readlink(repo.layout.current("m")) == "1.0.0"
    _only_in(repo, warm, "1.0.0", "hot", hashes(versions.src["1.0.0"]))
    inode = {v: os.stat(repo.layout.version_dir("m", v) / "tokenizer.json").st_ino
             for v in ("1.0.0", "1.2.0")}
    assert inode["1.0.0"] == inode["1.2.0"]  # promoted by a verified hard link, not a second copy

    share = {f: tier.plan_policy(repo, repo.catalog(), tier.Policy(hot_share=f)) for f in (1e-12, 1.0)}
    assert share == {1e-12: [("m", "1.1.0")], 1.0: []}  # hot-share: the oldest unprotected first
    tier.configure(repo, keep_hot=1)  # active 1.0.0 and previous 1.2.0 stay; 1.1.0 goes
    checked = tier.apply_policy(repo, check=True)
    assert checked["demote"] == [{"model": "m", "version": "1.1.0"}] and checked["moves"] == []
    assert repo.catalog().version("m", "1.1.0").location == "hot"  # type: ignore[union-attr]
    r = cli(repo.root, "tier", "apply", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["changed"], r.stderr
    _only_in(repo, warm, "1.1.0", "warm", hashes(versions.src["1.1.0"]))
    again = tier.apply_policy(repo)
    assert again["changed"] is False
    assert tier.configure(repo, dirs={"warm": warm}, keep_hot=1)["changed"] is False
    # a tier that holds versions cannot be unset or moved
    with pytest.raises(RepositoryError, match="promote them first"):
        tier.configure(repo, dirs={"warm": None})
    repo.close()


def test_verify_checks_versions_where_they_live(tmp_path: Path, versions: Versions) -> None:
    """`model verify` of a warm or cold version re-hashes it in its tier (no missing hot directory),
    read-only; a changed byte there is drift at the tier path (exit 13); an unplugged tier is a
    warning for the whole repository and drift for that version; show/list say where the files
    are; rollback to a cold version promotes it first."""
    repo, warm = _setup(tmp_path, versions, n=3)  # 1.2.0 active, 1.1.0 previous
    cold = tmp_path / "cold"
    cold.mkdir()
    tier.configure(repo, dirs={"cold": cold})
    tier.demote(repo, "m", "1.0.0")
    tier.demote(repo, "m", "1.1.0", to="cold")
    repo.close()
    trees = (repo.root, warm, cold)
    before = [tree_state(d) for d in trees]

    def verify(*args: str) -> tuple[int, dict[str, Any]]:
        r = cli(repo.root, "model", "verify", *args, "--json")
        assert "Traceback" not in r.stderr, r.stderr
        return r.returncode, json.loads(r.stdout)

    for version, home in (("1.0.0", warm), ("1.1.0", cold)):
        rc, rep = verify("m", version)
        assert rc == 0 and rep["drift"] == [], rep["drift"]
        (v,) = rep["versions"]
        assert (v["path"], v["files"], v["ok"]) == (str(home / "m" / version), 3, True)
    rc, rep = verify()
    assert rc == 0 and len(rep["models"]["m"]["versions"]) == 3, rep["drift"]
    assert [tree_state(d) for d in trees] == before  # read-only, in every tier

    victim = warm / "m" / "1.0.0" / "model.safetensors"
    flip_byte(victim, 0)
    for args in (("m", "1.0.0"), ()):
        rc, rep = verify(*args)
        assert rc == 13 and [(d["rule"], d["path"]) for d in rep["drift"]] == [("sha256", str(victim))]
    flip_byte(victim, 0)

    cold.rename(tmp_path / "unplugged")
    rc, rep = verify()
    assert rc == 0 and any("1.1.0 (cold)" in w for w in rep["warnings"]), rep
    rc, rep = verify("m", "1.1.0")
    assert rc == 13 and rep["drift"][0]["rule"] == "tier-unavailable"
    (tmp_path / "unplugged").rename(cold)

    shown = json.loads(cli(repo.root, "model", "show", "m", "1.0.0", "--json").stdout)
    assert (shown["location"], shown["path"]) == ("warm", str(warm / "m" / "1.0.0"))
    listed = json.loads(cli(repo.root, "model", "list", "--json").stdout)["models"][0]["versions"]
    assert {v["version"]: v["location"] for v in listed} == {"1.0.0": "warm", "1.1.0": "cold", "1.2.0": "hot"}

    rb = cli(repo.root, "model", "rollback", "m", "--json")
    assert rb.returncode == 0, rb.stdout + rb.stderr
    assert os.readlink(repo.layout.current("m")) == "1.1.0" and not (cold / "m" / "1.1.0").exists()
    assert repo.catalog().version("m", "1.1.0").location == "hot"  # type: ignore[union-attr]
    assert hashes(repo.layout.version_dir("m", "1.1.0")) == hashes(versions.src["1.1.0"])
    assert verify()[0] == 0
    repo.close()


def test_configure_refuses_foreign_or_inner_directories(tmp_path: Path, versions: Versions) -> None:
    repo, warm = _setup(tmp_path, versions, n=1)
    other = Repository(tmp_path / "other", lock_timeout=5)
    other.install_version("m", "1.0.0", versions.src["1.0.0"])
    with pytest.raises(RepositoryError, match="another repository"):
        tier.configure(other, dirs={"warm": warm})
    with pytest.raises(RepositoryError, match="outside the repository"):
        tier.configure(repo, dirs={"cold": repo.layout.repo / "m"})
    r = cli(repo.root, "tier", "configure", "--cold", str(tmp_path / "absent"), "--json")
    assert r.returncode == 30 and json.loads(r.stdout)["rule"] == "tier-unavailable"
    r = cli(repo.root, "tier", "configure", "--hot-share", "1.5")
    assert r.returncode == 30 and "Traceback" not in r.stderr and "hot-share" in r.stderr
    repo.close()
    other.close()


@pytest.mark.parametrize("verb", ["demote", "promote"])
@pytest.mark.parametrize("point", BOUNDARIES)
def test_kill_at_each_boundary(tmp_path: Path, versions: Versions, verb: str, point: str) -> None:
    """kill -9 (AIRLOCK_FAULT) at each boundary of a move; after recovery the version is in exactly
    one complete location, the one the catalog records (the source before the commit, the destination
    after), with no staging or trash left in either tier; the move then completes."""
    repo, warm = _setup(tmp_path, versions)
    if verb == "promote":
        tier.demote(repo, "m", "1.0.0")
    repo.close()
    r = cli(repo.root, "tier", verb, "m", "1.0.0", fault=f"tier.{verb}.{point}")
    assert r.returncode == -9, r.stdout + r.stderr
    src, dst = ("hot", "warm") if verb == "demote" else ("warm", "hot")
    committed = point in ("after-commit", "after-trash")
    repo.recover_now()
    want = hashes(versions.src["1.0.0"])
    _only_in(repo, warm, "1.0.0", dst if committed else src, want)
    assert _dot_entries(repo.layout.model_dir("m"), warm / "m") == []
    mv = tier.move(repo, "m", "1.0.0", dst)
    assert mv.changed is not committed
    _only_in(repo, warm, "1.0.0", dst, want)
    assert repo.audit_verify().ok
    repo.close()


@pytest.mark.slow
def test_model_repo_role_applies_the_policy(tmp_path: Path, versions: Versions,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """roles/model_repo configures the warm tier and keep-hot and applies it: check mode reports
    the demotion and moves nothing; the real run demotes (a rerun is no change: configure and apply
    are idempotent, test_prune_demotes_activate_promotes_and_policy)."""
    import sys

    from tests.provision.ansible_run import REPO_ROOT, run_role

    repo = Repository(tmp_path / "root", lock_timeout=5)
    for v in versions.src:
        repo.install_version("m", v, versions.src[v])
    repo.close()
    warm = tmp_path / "warm"
    warm.mkdir()
    monkeypatch.setenv("ANSIBLE_COLLECTIONS_PATH", str(REPO_ROOT / ".collections"))
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    variables = {"model_repo_root": str(repo.root), "model_repo_tier_warm": str(warm),
                 "model_repo_keep_hot": 2,
                 "model_repo_airlock": str(Path(sys.executable).with_name("airlock")),
                 "ansible_python_interpreter": sys.executable}
    checked = run_role(tmp_path, "model_repo", variables, check=True)
    assert checked.rc == 0 and checked.recap["changed"] == 2, checked.output[-3000:]
    assert not warm.joinpath("m").exists() and repo.catalog().get_meta("tier.warm") is None
    real = run_role(tmp_path, "model_repo", variables)
    assert real.rc == 0 and real.recap["changed"] == 2, real.output[-3000:]
    _only_in(repo, warm, "1.0.0", "warm", hashes(versions.src["1.0.0"]))
    repo.close()


def test_encrypted_version_moves_as_ciphertext(tmp_path: Path, versions: Versions, softhsm: SoftHsm) -> None:
    """A version stored encrypted (real SoftHSM2 key) moves byte-for-byte as ciphertext, checked by
    its decrypted plaintext against the signed hashes; without the key providers it is refused."""
    config = tmp_path / "keys.yaml"
    config.write_text(yaml.safe_dump({"providers": {"hsm": softhsm.provider_config()}}))
    reg = ProviderRegistry.load(config)
    reg.get("hsm").generate("models-kek")
    repo = Repository(tmp_path / "root", lock_timeout=5, keys=reg)
    for v in ("1.0.0", "1.1.0"):
        repo.install_version("m", v, versions.src[v], encrypt="hsm:models-kek")
    warm = tmp_path / "warm"
    warm.mkdir()
    tier.configure(repo, dirs={"warm": warm})
    stored = hashes(repo.layout.version_dir("m", "1.0.0"))
    repo.close()
    bare = Repository(tmp_path / "root", lock_timeout=5)  # no key providers
    with pytest.raises(RepositoryError, match="no key provider"):
        tier.demote(bare, "m", "1.0.0")
    bare.close()
    mv = tier.demote(repo, "m", "1.0.0")
    assert mv.copied == 3 and hashes(warm / "m" / "1.0.0") == stored  # the same ciphertext
    assert all(is_encrypted(warm / "m" / "1.0.0" / f) for f in stored)
    tier.promote(repo, "m", "1.0.0")
    assert hashes(repo.layout.version_dir("m", "1.0.0")) == stored and not (warm / "m" / "1.0.0").exists()
    assert repo.verify("m", keys=reg)["ok"] is True
    repo.close()
