"""Backups with real restic of a host with two versions installed from real signed bundles: a second
backup after the delta update adds little (dedup); retention forgets; the host's root is destroyed
(rm -rf) and restored: byte-identical versions, kept manifests and deltas, the same active version,
the audit chain intact, `airlock model verify` (signatures re-checked) ok; the restore drill; a
tampered pack file is refused by `restic check` and by the restore; bad input changes nothing."""

from __future__ import annotations

import configparser
import json
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from airlock.crypto.providers import ProviderRegistry
from airlock.repo import audit, check_loadable
from airlock.repo.lock import repo_lock
from tests.backup.conftest import PASSWORD, Host, install
from tests.backup.rgw import Rgw, start_rgw
from tests.monitoring.render import LOCAL, run_playbook
from tests.provision.ceph_cluster import running
from tests.repo.conftest import cli
from tests.support import file_hashes, flip_byte, require_tool, tree_state

AIRLOCK = str(Path(sys.executable).parent / "airlock")


@dataclass
class BackedUp:
    first: dict[str, Any]
    second: dict[str, Any]


def _create(h: Host, *extra: str) -> dict[str, Any]:
    r = h.airlock("backup", "create", "--root", str(h.root), "--repo", str(h.repo), "--password-file",
                  str(h.password), "--json", *extra)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def backed_up(host: Host) -> BackedUp:
    first = _create(host)
    install(host.root, host.delta, host.keys, host.keyring)  # the delta update: 1.1.0 becomes active
    second = _create(host, "--keep-last", "1", "--check-read-data-subset", "100%")
    return BackedUp(first, second)


def _repo_view(root: Path) -> dict[str, str]:
    """Every file of the model repository but the catalog and the audit log (compared apart)."""
    return {k: v for k, v in file_hashes(root / "model_repo").items()
            if not k.startswith("metadata/") and k != "update_history.log"}


def test_backup_destroy_restore_verify(host: Host, backed_up: BackedUp, tmp_path: Path) -> None:
    first, second = backed_up.first, backed_up.second
    assert first["ok"] and first["checked"] and first["active"] == {"m": "1.0.0"}
    assert second["active"] == {"m": "1.1.0"} and second["forgotten"] == [first["snapshot"][:8]]
    # dedup: 1.1.0's model differs from 1.0.0's in one small layer at its start; restic's chunks
    # (8 MiB at most) of the 16 MiB tensor after it are stored once
    new_model = (host.root / "model_repo" / "m" / "1.1.0" / "model.safetensors").stat().st_size
    assert new_model > 16 << 20 and second["bytes_added"] < 0.6 * new_model, second
    # the password went through a pipe: never on restic's command line nor in its environment
    spy = host.spy.read_text()
    assert PASSWORD not in spy and "RESTIC_PASSWORD_FILE=/dev/fd/" in spy and "RESTIC_PASSWORD=" not in spy

    records = audit.records(host.root / "model_repo" / "update_history.log")
    # docs/backup.md: 'started' before the snapshot (so in it), the outcome with the snapshot id after
    assert [(r["action"], r["result"]) for r in records][-2:] == [("backup", "started"), ("backup", "ok")]
    assert records[-1]["details"]["snapshot"] == second["snapshot"]
    assert records[-1]["details"]["audit_head"] == second["audit_head"] == {
        "seq": records[-2]["seq"], "hash": audit.line_hash(
            (host.root / "model_repo" / "update_history.log").read_bytes().splitlines()[-2])}
    before = _repo_view(host.root)
    log_before = (host.root / "model_repo" / "update_history.log").read_bytes().splitlines()
    assert len(before) > 6 and any(k.endswith(".aldelta") for k in before)  # versions, manifests, delta

    shutil.rmtree(host.root)  # the disk is gone
    r = host.airlock("backup", "restore", "--repo", str(host.repo), "--root", str(host.root),
                     "--password-file", str(host.password), "--trust", host.fpr, "--keyring",
                     str(host.keyring), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(r.stdout)
    assert res["verified"] and res["active"] == {"m": "1.1.0"}
    assert res["snapshot"].startswith(second["snapshot"])

    assert _repo_view(host.root) == before  # byte-identical versions, kept manifests and deltas
    assert os.readlink(host.root / "model_repo" / "m" / "current") == "1.1.0"
    log_after = (host.root / "model_repo" / "update_history.log").read_bytes().splitlines()
    # the chain up to and including the backup's 'started' record, then the restore's own record (the
    # live 'backup ok' record naming the snapshot came after it)
    assert log_after[:-1] == log_before[:-1] and json.loads(log_after[-1])["action"] == "restore"
    assert (json.loads(log_after[-2])["action"], json.loads(log_after[-2])["result"]) == ("backup", "started")
    assert host.airlock("audit", "verify", "--root", str(host.root)).returncode == 0
    v = host.airlock("model", "verify", "--root", str(host.root), "--trust", host.fpr, "--keyring",
                     str(host.keyring), "--json")
    assert v.returncode == 0, v.stdout[-2000:]
    assert json.loads(v.stdout)["signatures_checked"]
    listed = json.loads(host.airlock("model", "list", "--root", str(host.root), "--json").stdout)
    assert listed["models"][0]["active"] == "1.1.0" and listed["models"][0]["previous"] == "1.0.0"
    # would serve again: the loadability gate run before Triton loads a version passes on current
    assert check_loadable(host.root / "model_repo" / "m" / "current", model="m").tensors > 0
    db = sqlite3.connect(host.root / "model_repo" / "metadata" / "model_catalog.db")
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()

    # the restore drill: onto a scratch root, compared with the live host, audited there
    scratch = tmp_path / "scratch"
    d = host.airlock("backup", "drill", "--root", str(host.root), "--repo", str(host.repo), "--password-file",
                     str(host.password), "--scratch", str(scratch), "--json")
    assert d.returncode == 0, d.stdout + d.stderr
    rep = json.loads(d.stdout)
    assert rep["ok"] and rep["compare"]["identical"] and rep["compare"]["files_compared"] == len(before)
    assert rep["compare"]["active_live"] == {"m": "1.1.0"} and not scratch.exists()
    last = audit.records(host.root / "model_repo" / "update_history.log", 1)[0]
    assert last["action"] == "restore-drill" and last["result"] == "ok"


def test_tampered_pack_refused(host: Host, backed_up: BackedUp, tmp_path: Path) -> None:
    bad = tmp_path / "tampered-repo"
    shutil.copytree(host.repo, bad)
    pack = max((p for p in (bad / "data").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    flip_byte(pack, pack.stat().st_size // 2)  # inside the biggest pack: a model's data
    pw = ["--password-file", str(host.password)]
    c = host.airlock("backup", "check", "--repo", str(bad), *pw)
    assert c.returncode == 13 and "tampered" in c.stderr, c.stderr
    target = tmp_path / "restored"
    r = host.airlock("backup", "restore", "--repo", str(bad), "--root", str(target), *pw)
    assert r.returncode == 13, r.stderr
    assert not target.exists() and not list(tmp_path.glob(".restored.restoring-*"))  # nothing left behind
    assert host.airlock("backup", "check", "--repo", str(host.repo), *pw).returncode == 0  # the original


def test_kill_9_during_backup_and_restore(host: Host, backed_up: BackedUp, tmp_path: Path) -> None:
    """kill -9 right after restic wrote a snapshot (before retention, check, audit) and inside a restore
    (after restic, before the rename): the live root is untouched but for the staging directory the
    next backup clears, the restore target never appears half-restored, and re-runs succeed."""
    repo = ["--repo", str(tmp_path / "repo"), "--password-file", str(host.password)]
    killed = cli(host.root, "backup", "create", "--root", str(host.root), *repo,
                 fault="backup.create.after-snapshot", env=host.env)
    assert killed.returncode == -9
    assert host.airlock("backup", "create", "--root", str(host.root), *repo).returncode == 0
    assert not (host.root / ".airlock-backup").exists()
    target = tmp_path / "restored"
    for point in ("backup.restore.after-restic", "backup.restore.before-rename"):
        killed = cli(host.root, "backup", "restore", "--root", str(target), *repo, fault=point, env=host.env)
        assert killed.returncode == -9 and not target.exists()
        assert list(tmp_path.glob(".restored.restoring-*"))  # what the killed restore left beside it
    r = host.airlock("backup", "restore", "--root", str(target), *repo, "--no-verify")
    assert r.returncode == 0, r.stderr
    assert not list(tmp_path.glob(".restored.restoring-*")) and _repo_view(target) == _repo_view(host.root)


def test_bad_input_changes_nothing(host: Host, backed_up: BackedUp, tmp_path: Path) -> None:
    state = tree_state(host.root)
    loose = tmp_path / "loose.pw"
    loose.write_text(PASSWORD)
    loose.chmod(0o644)
    fresh = tmp_path / "never-created"
    r = host.airlock("backup", "create", "--root", str(host.root), "--repo", str(fresh), "--password-file",
                     str(loose))
    assert r.returncode == 34 and "chmod 0600" in r.stderr and not fresh.exists(), r.stderr

    wrong = tmp_path / "wrong.pw"
    wrong.write_text("not the password")
    wrong.chmod(0o600)
    r = host.airlock("backup", "list", "--repo", str(host.repo), "--password-file", str(wrong))
    assert r.returncode == 35 and "password" in r.stderr, r.stderr

    busy = tmp_path / "busy"
    (busy / "x").mkdir(parents=True)
    r = host.airlock("backup", "restore", "--repo", str(host.repo), "--root", str(busy), "--password-file",
                     str(host.password), "--json")
    assert r.returncode == 30 and json.loads(r.stdout)["rule"] == "restore-target"
    assert sorted(p.name for p in busy.iterdir()) == ["x"]

    r = host.airlock("backup", "restore", "--repo", str(tmp_path / "nothing"), "--root", str(tmp_path / "t"),
                     "--password-file", str(host.password))
    assert r.returncode == 60 and "no restic repository" in r.stderr and "Traceback" not in r.stderr
    # an install holding the repository's exclusive lock: the backup waits for it, then gives up (exit 32)
    with repo_lock(host.root / "model_repo" / "metadata" / ".lock", 5):
        r = host.airlock("backup", "create", "--root", str(host.root), "--repo", str(host.repo),
                         "--password-file", str(host.password), "--lock-timeout", "1")
    assert r.returncode == 32 and "lock" in r.stderr, r.stderr
    assert tree_state(host.root) == state  # refused commands wrote nothing, not even an audit record

    listed = host.airlock("backup", "list", "--repo", str(host.repo), "--password-file", str(host.password),
                          "--json")
    assert listed.returncode == 0 and len(json.loads(listed.stdout)["snapshots"]) == 1  # retention kept 1


def test_password_wrapped_by_key_provider(host: Host, backed_up: BackedUp, tmp_path: Path) -> None:
    """The restic password made and wrapped by a key provider (the development key-file provider here);
    the key provider config is backed up, the key directory it names is not, and a config holding a
    secret inline is refused."""
    keydir, confdir = tmp_path / "dev-keys", tmp_path / "etc"
    confdir.mkdir(mode=0o700)
    conf = confdir / "keys.yaml"
    conf.write_text(yaml.safe_dump({"providers": {"dev": {"type": "keyfile", "dir": str(keydir),
                                                          "allow_development_keyfile": True}}}))
    conf.chmod(0o600)
    ProviderRegistry.load(conf).get("dev").generate("backup-kek")
    wrapped = confdir / "restic.pw.wrapped"
    r = host.airlock("backup", "password", "--key", "dev:backup-kek", "--out", str(wrapped),
                     "--keys-config", str(conf))
    assert r.returncode == 0 and wrapped.stat().st_mode & 0o777 == 0o600, r.stderr
    opened = ["--repo", str(tmp_path / "repo"), "--password-wrapped", str(wrapped), "--keys-config",
              str(conf)]
    r = host.airlock("backup", "create", "--root", str(host.root), *opened, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    keys = json.loads(r.stdout)["keys_config"]
    assert keys["included"] and keys["not_included"] == [str(keydir)]
    out = tmp_path / "restored-keys.yaml"
    r = host.airlock("backup", "restore", "--root", str(tmp_path / "r"), *opened, "--keys-config-out",
                     str(out), "--no-verify", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert out.read_bytes() == conf.read_bytes() and not list((tmp_path / "r").rglob("*.kek"))
    assert host.airlock("backup", "list", "--repo", str(tmp_path / "repo"), "--password-file",
                        str(host.password)).returncode == 35  # the other password does not open it

    inline = {"providers": {"hsm": {"type": "pkcs11", "token_label": "t", "pin": "1234"}}}
    conf.write_text(yaml.safe_dump(inline))
    r = host.airlock("backup", "create", "--root", str(host.root), "--repo", str(tmp_path / "repo2"),
                     "--password-file", str(host.password), "--keys-config", str(conf))
    assert r.returncode == 34 and "inline" in r.stderr and not (tmp_path / "repo2").exists()


def test_role_units_verify_and_run(host: Host, backed_up: BackedUp, tmp_path: Path) -> None:
    """roles/backup rendered by playbooks/backup.yml: the units pass ``systemd-analyze verify``; the
    service's ExecStart, run by hand (systemd is not PID 1 here), takes a real backup with the
    retention policy, and the password never appears in the unit."""
    units = tmp_path / "units"
    units.mkdir()
    ev = {"backup_manage_services": False, "backup_unit_dir": str(units), "backup_airlock": AIRLOCK,
          "backup_root": str(host.root), "backup_repo": str(host.repo), "backup_password": PASSWORD,
          "backup_password_file": str(tmp_path / "role.pw"), "backup_cache_dir": str(tmp_path / "cache"),
          "backup_keep_last": 2, "backup_check_read_data_subset": "50%"}
    run_playbook(tmp_path / "play", "backup.yml", {"appliances": {"app": LOCAL}}, ev)
    service, timer = units / "airlock-backup.service", units / "airlock-backup.timer"
    tool = require_tool("systemd-analyze", "apt-get install systemd")
    r = subprocess.run([tool, "verify", "--man=no", service.name, timer.name], cwd=units, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert PASSWORD not in service.read_text() and (tmp_path / "role.pw").stat().st_mode & 0o777 == 0o600
    cp = configparser.ConfigParser(interpolation=None, strict=False)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(timer.read_text())
    assert cp["Timer"]["OnCalendar"] == "daily" and cp["Timer"]["Unit"] == service.name
    exec_start = next(ln.split("=", 1)[1] for ln in service.read_text().splitlines()
                      if ln.startswith("ExecStart="))
    assert "--keep-last 2" in exec_start and "--check-read-data-subset 50%%" in exec_start
    run = subprocess.run(shlex.split(exec_start.replace("%%", "%")), capture_output=True, text=True,
                         timeout=300, env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert run.returncode == 0, run.stderr
    snaps = json.loads(host.airlock("backup", "list", "--repo", str(host.repo), "--password-file",
                                    str(host.password), "--json").stdout)["snapshots"]
    assert len(snaps) == 2


def test_restore_drill_playbook(host: Host, backed_up: BackedUp, tmp_path: Path) -> None:
    """playbooks/restore-drill.yml on a local-connection host: drill ok, model and audit verify of the
    restored scratch root ok, scratch removed, the report on the control node, audited on the host."""
    scratch, reports = tmp_path / "scratch", tmp_path / "reports"
    run_playbook(tmp_path / "play", "restore-drill.yml", {"appliances": {"app": LOCAL}},
                 {"restore_drill_airlock": AIRLOCK, "airlock_root": str(host.root),
                  "backup_repo": str(host.repo),
                  "backup_password_file": str(host.password), "restore_drill_scratch": str(scratch),
                  "restore_drill_report_dir": str(reports), "restore_drill_trust": [host.fpr],
                  "restore_drill_keyring": str(host.keyring)})
    rep = json.loads((reports / "app.json").read_text())
    assert rep["passed"] and rep["ok"] and rep["model_verify_rc"] == 0 and rep["audit_verify_rc"] == 0
    assert rep["compare"]["identical"] and not scratch.exists()
    last = audit.records(host.root / "model_repo" / "update_history.log", 1)[0]
    assert last["action"] == "restore-drill" and last["result"] == "ok"


@pytest.fixture(scope="module")
def rgw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rgw]:
    with running(tmp_path_factory.mktemp("ceph"), [], extra_tools=("radosgw", "radosgw-admin")) as cluster:
        yield start_rgw(cluster)


@pytest.mark.slow
def test_backup_to_ceph_rgw(host: Host, backed_up: BackedUp, rgw: Rgw, tmp_path: Path) -> None:
    """The same backup into S3 on Ceph's RADOS Gateway (real single-node Ceph): created, checked with
    all data read, restored into an empty root byte-identical; the S3 keys come from a 0600 file."""
    cred = tmp_path / "s3.cred"
    cred.write_text(f"access_key_id={rgw.access_key}\nsecret_access_key={rgw.secret_key}\n")
    cred.chmod(0o600)
    s3 = ["--repo", f"s3:{rgw.endpoint}/airlock-backups", "--password-file", str(host.password),
          "--s3-credentials", str(cred)]
    r = host.airlock("backup", "create", "--root", str(host.root), *s3, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    argv = [ln for ln in host.spy.read_text().splitlines() if ln.startswith("--json")]  # restic's argv
    assert argv and not any(rgw.secret_key in ln or PASSWORD in ln for ln in argv)
    assert host.airlock("backup", "check", *s3).returncode == 0
    target = tmp_path / "restored"
    r = host.airlock("backup", "restore", "--root", str(target), *s3, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert _repo_view(target) == _repo_view(host.root)
    assert os.readlink(target / "model_repo" / "m" / "current") == "1.1.0"


def test_warm_tier_version_is_referenced(host: Host, backed_up: BackedUp, tmp_path: Path) -> None:
    """A version demoted to the warm tier (airlock tier) is backed up as a reference to its warm
    directory, not copied: the restored root has no hot copy, its catalog points at the warm copy,
    and it verifies while the warm tier is there."""
    warm = tmp_path / "warm"
    warm.mkdir()
    assert host.airlock("tier", "configure", "--root", str(host.root), "--warm", str(warm)).returncode == 0
    r = host.airlock("tier", "demote", "m", "1.0.0", "--root", str(host.root))
    assert r.returncode == 0, r.stderr
    repo = ["--repo", str(tmp_path / "repo"), "--password-file", str(host.password)]
    r = host.airlock("backup", "create", "--root", str(host.root), *repo, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["referenced_only"] == ["m 1.0.0"]
    target = tmp_path / "restored"
    r = host.airlock("backup", "restore", "--root", str(target), *repo, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (target / "model_repo" / "m" / "1.0.0").exists()
    assert _repo_view(target) == _repo_view(host.root)
    status = json.loads(host.airlock("tier", "status", "--root", str(target), "--json").stdout)
    where = {(v["version"], v["location"]) for v in status["versions"]}
    assert where >= {("1.0.0", "warm"), ("1.1.0", "hot")}
