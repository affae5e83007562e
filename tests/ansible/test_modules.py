"""The Airlock modules run for real on localhost: staging, check mode, idempotence, clear failures."""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

import pytest
import yaml

from airlock.crypto import ProviderRegistry, is_encrypted
from tests.ansible.modules import run_module
from tests.crypto.softhsm import SoftHsm
from tests.fleet.bundles import Bundles
from tests.support import tree_state


def trust(b: Bundles) -> dict[str, object]:
    return {"trust": [b.fingerprint], "keyring": str(b.keyring)}


def test_bundle_check_mode_verifies_and_writes_nothing(bundles: Bundles, tmp_path: Path) -> None:
    root = tmp_path / "root"
    r = run_module("airlock_bundle", {"src": str(bundles.full), "root": str(root), **trust(bundles)},
                   check=True)
    assert not r.get("failed"), r
    assert r["changed"] and r["path"] == str(bundles.full) and r["bundle_id"] == "test-full"
    assert not root.exists()


def test_bundle_stage_then_unchanged(bundles: Bundles, tmp_path: Path) -> None:
    args = {"src": str(bundles.full), "root": str(tmp_path / "root"), **trust(bundles)}
    first = run_module("airlock_bundle", args)
    assert first["changed"] and first["counters"]["files_copied"] == 3
    assert Path(first["path"], "MANIFEST.json").read_bytes() == (bundles.full / "MANIFEST.json").read_bytes()
    again = run_module("airlock_bundle", args)
    assert not again["changed"] and again["counters"]["files_copied"] == 0


def test_bundle_with_unpinned_signer_is_refused_and_nothing_staged(bundles: Bundles, tmp_path: Path) -> None:
    r = run_module("airlock_bundle", {"src": str(bundles.full), "root": str(tmp_path / "root"),
                                      "trust": ["0" * 40], "keyring": str(bundles.keyring)})
    assert r["failed"] and r["airlock_error"]["error"] == "SignatureError"
    staged = tmp_path / "root" / "model_repo" / "update_packages" / "staged" / "bundle-full"
    assert not (staged / "models").exists()


def test_bundle_tampered_payload_is_refused(bundles: Bundles, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(bundles.full, bad)
    cfg = next(bad.rglob("config.json"))
    cfg.write_bytes(cfg.read_bytes().replace(b"32", b"33", 1))
    r = run_module("airlock_bundle", {"src": str(bad), "root": str(tmp_path / "root"), **trust(bundles)})
    assert r["failed"] and r["airlock_error"]["error"] == "IntegrityError"
    assert "config.json" in r["msg"]


def test_model_check_diff_install_idempotent(bundles: Bundles, tmp_path: Path) -> None:
    root = tmp_path / "root"
    staged = run_module("airlock_bundle", {"src": str(bundles.full), "root": str(root),
                                           **trust(bundles)})["path"]
    args = {"root": str(root), "bundle": staged, "state": "active", **trust(bundles)}
    before = tree_state(root)
    plan = run_module("airlock_model", args, check=True, diff=True)
    assert plan["changed"] and plan["models"] == {"tiny": {"from": None, "to": "1.0.0"}}
    assert "+ model.safetensors (25088 bytes, copy)" in plan["plans"][0]["diff"]
    assert tree_state(root) == before
    done = run_module("airlock_model", args)
    assert done["changed"] and (root / "model_repo" / "tiny" / "current").resolve().name == "1.0.0"
    assert not Path(staged).exists()  # installed: the staged copy is removed (issue 16 item 5)
    again = run_module("airlock_model", {**args, "bundle": str(bundles.full)})
    assert not again["changed"] and not Path(staged).exists()  # installed already: nothing staged
    settled = tree_state(root)
    info = run_module("airlock_model_info", {"root": str(root), "verify": True, "loadable": True,
                                             "expected": {"tiny": "1.0.0"}, **trust(bundles)})
    assert info["airlock_repo"]["models"]["tiny"]["active"] == "1.0.0" and info["drift"] == []
    wrong = run_module("airlock_model_info", {"root": str(root), "verify": True,
                                              "expected": {"tiny": "9.9.9"}})
    assert [(d["rule"], d["expected"], d["found"]) for d in wrong["drift_items"]] == \
        [("expected-version", "9.9.9", "1.0.0")]
    assert wrong["drift"] == [f"tiny 1.0.0: {root}/model_repo/tiny/current: expected-version "
                              "(expected 9.9.9, found 1.0.0)"]
    assert not wrong["signatures_checked"] and "signatures NOT checked" in wrong["verify_warnings"][0]
    assert tree_state(root) == settled  # the two checks above wrote nothing


def test_manual_rollback_is_recorded_as_rolled_back(bundles: Bundles, tmp_path: Path) -> None:
    """rollback=true marks the version left rolled_back (an operator's decision, still good: activate
    rolls forward); failed=true (the update role's rescue) marks it failed; a repeated rollback is ok."""
    root = tmp_path / "root"
    for b in (bundles.full, bundles.delta):
        staged = run_module("airlock_bundle", {"src": str(b), "root": str(root), **trust(bundles)})["path"]
        assert not run_module("airlock_model", {"root": str(root), "bundle": staged, "state": "active",
                                                **trust(bundles)}).get("failed")
    args = {"root": str(root), "name": "tiny", "rollback": True}
    first = run_module("airlock_model", args)
    assert first["changed"] and (root / "model_repo" / "tiny" / "current").resolve().name == "1.0.0"
    info = run_module("airlock_model_info", {"root": str(root)})
    assert info["airlock_repo"]["models"]["tiny"]["versions"]["1.1.0"] == "rolled_back"
    assert not run_module("airlock_model", args)["changed"]
    assert run_module("airlock_model", {"root": str(root), "name": "tiny", "version": "1.1.0",
                                        "state": "active"})["changed"]  # rolled forward
    assert run_module("airlock_model", {**args, "failed": True})["changed"]
    info = run_module("airlock_model_info", {"root": str(root)})
    assert info["airlock_repo"]["models"]["tiny"]["versions"]["1.1.0"] == "failed"


def test_model_argument_errors_are_clear(tmp_path: Path) -> None:
    r = run_module("airlock_model", {"root": str(tmp_path), "name": "tiny", "state": "active"})
    assert r["failed"] and "version is required" in r["msg"]
    r = run_module("airlock_model", {"root": str(tmp_path), "state": "pruned"})
    assert r["failed"] and "name" in r["msg"]


def test_info_on_a_missing_repository(tmp_path: Path) -> None:
    r = run_module("airlock_model_info", {"root": str(tmp_path / "none")})
    assert not r["changed"] and r["airlock_repo"]["exists"] is False
    assert not (tmp_path / "none").exists()


def test_missing_engine_names_the_library(tmp_path: Path) -> None:
    system = shutil.which("python3", path="/usr/bin")
    if system is None:
        pytest.fail("/usr/bin/python3 is needed to run a module without the engine")
    # no PYTHONPATH to the checkout: the system Python must not find the engine (it is importable
    # from the source tree without its third-party dependencies since the engine imports lazily)
    r = run_module("airlock_model_info", {"root": str(tmp_path)}, python=system,
                   env={"PYTHONPATH": str(tmp_path / "nothing-here")})
    assert r["failed"] and "airlock" in r["msg"] and "Failed to import" in r["msg"]


def test_model_encrypted_at_rest_install_update_verify(bundles: Bundles, tmp_path: Path,
                                                       softhsm: SoftHsm) -> None:
    """O(encrypt) stores versions encrypted under a real SoftHSM2 key, O(keys_config) lets the
    modules read them back: install, delta update and drift check; without keys a clear failure."""
    config = tmp_path / "keys.yaml"
    config.write_text(yaml.safe_dump({"providers": {"hsm": softhsm.provider_config()}}))
    ProviderRegistry.load(config).get("hsm").generate("models-kek")
    env = {"SOFTHSM2_CONF": str(softhsm.conf), "AIRLOCK_KEYS_CONFIG": str(tmp_path / "no-default.yaml")}
    root = tmp_path / "root"
    keys = {"keys_config": str(config), "encrypt": "hsm:models-kek"}
    for bundle in (bundles.full, bundles.delta):
        args = {"root": str(root), "bundle": str(bundle), "state": "active", **trust(bundles), **keys}
        done = run_module("airlock_model", args, env=env)
        assert not done["failed"] and done["changed"], done
        assert not run_module("airlock_model", args, env=env)["changed"]
    weights = root / "model_repo" / "tiny" / "1.1.0" / "model.safetensors"
    assert (root / "model_repo" / "tiny" / "current").resolve().name == "1.1.0"
    assert is_encrypted(weights)
    info = run_module("airlock_model_info", {"root": str(root), "verify": True, "keys_config": str(config),
                                             **trust(bundles)}, env=env)
    assert not info["failed"] and info["drift"] == [], info
    blind = run_module("airlock_model_info", {"root": str(root), "verify": True}, env=env)
    assert blind["failed"] and "keys" in blind["msg"], blind
    missing = run_module("airlock_model_info",
                         {"root": str(root), "keys_config": str(tmp_path / "none.yaml")}, env=env)
    assert missing["failed"] and "key provider config" in missing["msg"], missing


def test_old_state_rolled_back_still_rolls_back_with_a_deprecation(bundles: Bundles, tmp_path: Path) -> None:
    root = tmp_path / "root"
    for b in (bundles.full, bundles.delta):
        assert not run_module("airlock_model", {"root": str(root), "bundle": str(b), "state": "active",
                                                **trust(bundles)}).get("failed")
    old = run_module("airlock_model", {"root": str(root), "name": "tiny", "state": "rolled_back"})
    assert old["changed"] and old["models"] == {"tiny": {"from": "1.1.0", "to": "1.0.0"}}, old
    shown = " ".join(old["ansible_output"].split())  # the warning is wrapped to the terminal's width
    assert "DEPRECATION WARNING" in shown and "state=rolled_back is an action, not a state" in shown, shown
    both = run_module("airlock_model", {"root": str(root), "name": "tiny", "rollback": True,
                                        "bundle": str(bundles.full), **trust(bundles)})
    assert both["failed"] and "rollback=true takes no bundle" in both["msg"]
    pruned = run_module("airlock_model", {"root": str(root), "name": "tiny", "rollback": True,
                                          "state": "pruned"})
    assert pruned["failed"] and "rollback=true goes with state=active" in pruned["msg"]
    assert (root / "model_repo" / "tiny" / "current").resolve().name == "1.0.0"


def test_info_never_writes_and_takes_only_the_readers_lock(bundles: Bundles, tmp_path: Path) -> None:
    """airlock_model_info (state, audit anchor, full verify) changes not one byte, mode or owner; it
    runs beside another reader's shared lock and waits for a writer's exclusive one."""
    root = tmp_path / "root"
    for b in (bundles.full, bundles.delta):
        assert not run_module("airlock_model", {"root": str(root), "bundle": str(b), "state": "active",
                                                **trust(bundles)}).get("failed")
    head = run_module("airlock_model_info", {"root": str(root)})["airlock_repo"]["audit_head"]
    before = tree_state(root)
    lock = os.open(root / "model_repo" / "metadata" / ".lock", os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_SH)  # another reader (verify, a receipt) is running
        for extra in ({}, {"audit_anchor": head}, {"verify": True, "loadable": True, **trust(bundles)}):
            r = run_module("airlock_model_info", {"root": str(root), "lock_timeout": 2, **extra})
            assert not r["failed"] and not r["changed"], r
            assert r["airlock_repo"]["models"]["tiny"]["active"] == "1.1.0"
            assert r.get("drift", []) == [], r
        fcntl.flock(lock, fcntl.LOCK_EX)  # a writer is installing: the reader waits, then gives up
        busy = run_module("airlock_model_info", {"root": str(root), "lock_timeout": 1})
        assert busy["failed"] and busy["airlock_error"]["error"] == "LockBusyError", busy
    finally:
        os.close(lock)
    assert tree_state(root) == before
