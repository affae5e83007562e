"""Operating-system errors at the CLI and module boundary, for real: a full disk (a small tmpfs), a
non-root user (``setpriv`` to nobody), Ctrl-C mid-stage (SIGINT at a paused fault point), a
read-only file system; each one line with its documented exit code and what to do, valid JSON with
--json, an audit record where a repository was touched, never a traceback. (The stick pulled
mid-stage is in tests/bundle/test_fat32.py.)"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from airlock.bundle import build_bundle
from airlock.errors import from_exception, from_os_error
from airlock.repo import Repository
from tests.ansible.modules import run_module
from tests.bundle.field import airlock, airlock_env, paused_at, write_spec
from tests.gpg import Keys
from tests.repo.models import Versions, make_model
from tests.support import require_root, require_tool

MIB = 1 << 20


@pytest.mark.parametrize(("exc", "what", "code", "says"), [
    (OSError(errno.ENOTCONN, "Transport endpoint is not connected", "/media/usb/b"), None, 36,
     "re-run to resume"),
    (OSError(errno.EIO, "Input/output error"), None, 36, "plug it back in"),
    (OSError(errno.ENODEV, "No such device"), None, 36, "re-run to resume"),
    (OSError(errno.ESTALE, "Stale file handle"), None, 36, "re-run to resume"),
    (OSError(errno.ENOSPC, "No space left on device", "/"), None, 31, "use --stage-dir"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), None, 31, "free space"),
    (OSError(errno.EACCES, "Permission denied", "/srv/airlock"), None, 37, "run as root"),
    (OSError(errno.EPERM, "Operation not permitted"), None, 37, "run as root"),
    (OSError(errno.EPERM, "Operation not permitted"), "chmod", 38, "does not support"),
    (OSError(errno.EOPNOTSUPP, "Operation not supported"), None, 38, "does not support"),
    (OSError(errno.ENOSYS, "Function not implemented"), None, 38, "does not support"),
    (OSError(errno.EROFS, "Read-only file system"), None, 37, "read-only"),
])
def test_os_error_table(exc: OSError, what: str | None, code: int, says: str) -> None:
    err = from_os_error(exc, what=what)
    assert err.exit_code == code and says in str(err)
    assert json.loads(json.dumps(err.as_dict()))["exit_code"] == code
    if exc.filename:
        assert err.path == exc.filename and str(err).startswith(exc.filename)


def test_interrupt_and_bugs_are_one_line() -> None:
    assert from_exception(KeyboardInterrupt()).exit_code == 130
    bug = from_exception(ValueError("boom"))
    assert bug.exit_code == 1 and bug.rule == "internal" and "boom" in str(bug) and "\n" not in str(bug)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    require_root("mounting a size-limited tmpfs for a real ENOSPC")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def big_bundle(tmp_path: Path, keys: Keys) -> Path:
    src = make_model(tmp_path / "model", extra_bytes=3 * MIB, seed=5)
    spec = write_spec(tmp_path / "big.yml", [{"name": "m", "version": "1.0.0", "path": str(src)}], sequence=1,
                      block_size=256 * 1024)
    build_bundle(spec, tmp_path / "big", signer=keys.fpr["signer"], gnupghome=keys.home)
    return tmp_path / "big"


def _trust(keys: Keys) -> tuple[str, ...]:
    return ("--trust", keys.fpr["signer"], "--keyring", str(keys.keyring("signer")))


def _staged(root: Path) -> list[str]:
    d = root / "model_repo" / "update_packages" / "staged"
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_no_space_refused_before_staging_then_stage_dir(tmpfs: Path, big_bundle: Path, keys: Keys,
                                                        tmp_path: Path) -> None:
    root = tmpfs / "root"
    r = airlock("model", "install-bundle", str(big_bundle), *_trust(keys), root=root)
    assert r.returncode == 31, r.stderr
    line = " ".join(r.stderr.split())
    assert "more needed" in line and "staged copy" in line and "--stage-dir" in line and "MiB" in line
    assert _staged(root) == []  # refused before a byte was staged
    r = airlock("model", "install-bundle", str(big_bundle), *_trust(keys), "--json", root=root)
    doc = json.loads(r.stdout)
    assert r.returncode == 31 and doc["ok"] is False and doc["exit_code"] == 31
    r = airlock("model", "install-bundle", str(big_bundle), *_trust(keys), "--check", root=root)
    assert r.returncode == 31 and "CHECK MODE: nothing written" in r.stderr
    # the staged copy on another disk: the small one only holds the installed version
    r = airlock("model", "install-bundle", str(big_bundle), *_trust(keys), "--stage-dir",
                str(tmp_path / "other-disk"), root=root)
    assert r.returncode == 0, r.stderr
    assert "installed m 1.0.0 (active)" in r.stdout
    assert list((tmp_path / "other-disk").iterdir()) == []  # removed after install


def test_enospc_mid_stage(tmpfs: Path, big_bundle: Path, keys: Keys) -> None:
    root = tmpfs / "root"
    subprocess.run(["dd", "if=/dev/zero", f"of={tmpfs / 'filler'}", "bs=1M", "count=3"], check=True,
                   capture_output=True)
    r = airlock("model", "install-bundle", str(big_bundle), *_trust(keys), "--json", root=root,
                AIRLOCK_TEST_SKIP_PREFLIGHT="1")
    doc = json.loads(r.stdout)
    assert r.returncode == 31 and doc["exit_code"] == 31 and doc["rule"] == "disk-space-enospc", r.stdout
    assert "--stage-dir" in doc["message"]
    assert _staged(root) == []  # a failed install-bundle leaves no staged copy behind


def test_not_root(versions: Versions) -> None:
    require_root("switching to the nobody user")
    require_tool("setpriv", "apt-get install util-linux")
    base = Path(tempfile.mkdtemp(prefix="airlock-nobody-"))
    try:
        base.chmod(0o755)
        src = make_model(base / "model")
        root = base / "appliance"
        root.mkdir(mode=0o755)  # root's, as /srv/airlock is
        cmd = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-c",
               "from airlock.cli import main; main()", "model", "install", "m", "1.0.0", str(src)]
        env = airlock_env(root, HOME="/tmp")
        r = subprocess.run([*cmd, "--json"], env=env, capture_output=True, text=True, timeout=120)
        assert "Traceback" not in r.stderr, r.stderr
        doc = json.loads(r.stdout)
        assert r.returncode == 37 and doc["rule"] == "permission" and "run as root" in doc["message"]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 37 and "run as root" in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) <= 3  # one message (wrapped at most)
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


def test_sigint_mid_stage_is_audited_and_resumes(big_bundle: Path, keys: Keys, versions: Versions,
                                                 tmp_path: Path) -> None:
    root = tmp_path / "appliance"
    repo = Repository(root)
    repo.install_version("other", "1.0.0", versions.src["1.0.0"])  # a repository to audit into
    repo.close()
    args = ("model", "install-bundle", str(big_bundle), *_trust(keys))
    with paused_at("stage-mid-copy", *args, "--json", root=root, tmp=tmp_path) as run:
        run.interrupt()
    r = run.finish()
    assert r.returncode == 130, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert doc["rule"] == "interrupted" and "re-run" in doc["message"]
    repo = Repository(root)
    last = repo.history(None, 100)[-1]
    assert (last["action"], last["result"]) == ("install-bundle", "interrupted")
    repo.audit_verify()
    repo.close()
    assert _staged(root) == ["big"]  # kept for the re-run
    r = airlock(*args, root=root)
    assert r.returncode == 0, r.stderr
    assert "resumed" in r.stdout and "blocks reused" in r.stdout and "installed m 1.0.0 (active)" in r.stdout
    assert _staged(root) == []


@pytest.mark.parametrize("args", [
    ("bundle", "build", "--bogus"),
    ("model", "install-bundle"),
    ("preflight", "--min-ram-gib", "lots"),
    ("model", "prune", "m", "--keep", "x"),
])
def test_usage_errors_exit_2(args: tuple[str, ...], tmp_path: Path) -> None:
    r = airlock(*args, root=tmp_path)
    assert r.returncode == 2, r.stderr


def test_read_only_root_module_and_cli(tmp_path: Path, big_bundle: Path, keys: Keys) -> None:
    require_root("mounting a read-only tmpfs")
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], check=True)
    try:
        r = airlock("model", "install", "m", "1.0.0", str(tmp_path / "model"), "--json", root=ro / "airlock")
        doc = json.loads(r.stdout)
        assert r.returncode == 37 and doc["rule"] == "read-only", r.stdout
        res = run_module("airlock_model", {"root": str(ro / "airlock"), "bundle": str(big_bundle),
                                           "trust": [keys.fpr["signer"]],
                                           "keyring": str(keys.keyring("signer")), "state": "active"})
        assert res["failed"] and res["airlock_error"]["exit_code"] == 37, res
        assert "read-only" in res["msg"] and "Traceback" not in json.dumps(res)
        assert os.listdir(ro) == []
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)


def test_one_default_root_and_airlock_root_honoured(tmp_path: Path) -> None:
    from airlock.provision import preflight, requirements
    from airlock.repo.layout import DEFAULT_ROOT

    assert preflight.DEFAULT_ROOT == requirements.DEFAULT_ROOT == str(DEFAULT_ROOT)
    r = airlock("preflight", "--json", root=tmp_path / "appliance")
    hot = next(c for c in json.loads(r.stdout)["checks"] if c["name"] == "disk:hot")
    assert hot["details"]["path"] == str(tmp_path / "appliance")
    r = airlock("model", "list", "--json", root=tmp_path / "appliance")
    assert r.returncode in (0, 30)  # the same root: nothing installed there yet


def test_preflight_refuses_a_root_the_user_cannot_write() -> None:
    require_root("switching to the nobody user")
    base = Path(tempfile.mkdtemp(prefix="airlock-nobody-"))
    try:
        base.chmod(0o755)
        cmd = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-c",
               "from airlock.cli import main; main()", "preflight", "--json"]
        env = airlock_env(base / "appliance", HOME="/tmp")
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        hot = next(c for c in json.loads(r.stdout)["checks"] if c["name"] == "disk:hot")
        assert r.returncode == 14 and hot["status"] == "fail" and "run as root" in hot["message"], r.stdout
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


def test_check_mode_banner(versions: Versions, tmp_path: Path) -> None:
    root = tmp_path / "appliance"
    for v in ("1.0.0", "1.1.0"):
        assert airlock("model", "install", "m", v, str(versions.src[v]), root=root).returncode == 0
    before = sorted(str(p) for p in root.rglob("*"))
    for args in (("install", "m", "1.2.0", str(versions.src["1.2.0"])), ("rollback", "m"),
                 ("activate", "m", "1.0.0"), ("prune", "m", "--keep", "1")):
        r = airlock("model", *args, "--check", root=root)
        assert r.returncode == 0 and "CHECK MODE: nothing written" in r.stderr, (args, r.stderr)
    after = sorted(str(p) for p in root.rglob("*"))
    assert after == before
