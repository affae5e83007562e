"""Issue 21 items 2, 5, 6 and 9: rotation the repository follows (catalog records the new key, updates
and rollbacks use it, re-encryption under fresh data keys, Vault min_decryption_version), the
plaintext workspace (tmpfs by statfs magic, no disk fallback, crash leftovers swept), ownership and
mode of every secret and config, and file modes restored by a re-run rotation as a non-root owner."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from airlock.crypto import (
    KeyProviderError,
    KeyRef,
    ProviderRegistry,
    WrongKeyError,
    encrypt_file,
    is_encrypted,
    read_encrypted_header,
)
from airlock.crypto.rotate import encrypted_files
from airlock.crypto.tree import plaintext_workspace, sweep_workspaces
from airlock.crypto.workspace import WorkspaceError, require_ram_fs, sweep_dead
from airlock.hashing import tree_files
from airlock.repo import Repository
from tests.crypto.conftest import REPO, KeyEnv, airlock_cli
from tests.crypto.vault_edge_mock import TransitEdgeMock
from tests.repo.conftest import Versions, cli, hashes


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    return int(proc.stdout)


def _repo_files(root: Path) -> list[Path]:
    return list(encrypted_files(root / "model_repo"))


def test_catalog_follows_rotation_and_reencrypt(keyfile_env: KeyEnv, versions: Versions,
                                                tmp_path: Path) -> None:
    root = tmp_path / "root"
    env = {"AIRLOCK_KEYS_CONFIG": str(keyfile_env.config)}
    conf = ("--config", str(keyfile_env.config))
    assert cli(root, "model", "install", "m", "1.0.0", str(versions.src["1.0.0"]), "--encrypt", "dev:k1",
               env=env).returncode == 0
    step1, step2 = (str(versions.deltas[k]) for k in (("1.0.0", "1.1.0"), ("1.1.0", "1.2.0")))
    assert cli(root, "model", "update", "m", step1, env=env).returncode == 0
    rot = airlock_cli("keys", "rotate", "--root", str(root), "-k", "dev:k2", "--json", *conf, check=True)
    report = json.loads(rot.stdout)
    assert sorted(report["catalog_versions"]) == ["m 1.0.0", "m 1.1.0"]
    # every stored file, the kept delta included, now opens under k2 only; the catalog says so
    assert {read_encrypted_header(p).key_id for p in _repo_files(root)} == {"k2"}
    assert any("update_packages" in str(p) for p in _repo_files(root))
    (keyfile_env.keydir / "k1.kek").unlink()  # the old KEK is retired
    r = Repository(root, lock_timeout=5, keys=keyfile_env.registry)
    assert {r.show("m", v)["key_ref"] for v in ("1.0.0", "1.1.0")} == {"dev:k2"}
    # the next update takes the source's key from the catalog: k2, and works without k1
    assert cli(root, "model", "update", "m", step2, env=env).returncode == 0
    assert r.show("m", "1.2.0")["key_ref"] == "dev:k2"
    v2 = r.layout.version_dir("m", "1.2.0")
    assert {read_encrypted_header(v2 / rel).key_id for rel in tree_files(v2)} == {"k2"}
    # a rollback rebuilt from the kept (encrypted) deltas uses the current key too
    assert cli(root, "model", "prune", "m", "--keep", "2", env=env).returncode == 0
    proc = cli(root, "model", "rollback", "m", "--to", "1.0.0", env=env)
    assert proc.returncode == 0, proc.stderr
    v0 = r.layout.version_dir("m", "1.0.0")
    assert {read_encrypted_header(v0 / rel).key_id for rel in tree_files(v0)} == {"k2"}
    assert r.verify("m")["ok"]
    # compromised k2: re-encrypt under fresh data keys wrapped by k3 (not merely re-wrapped)
    keyfile_env.registry.get("dev").generate("k3")
    before = {p: read_encrypted_header(p).fixed.commitment for p in _repo_files(root)}
    links = {p for p in before if p.stat().st_nlink > 1}
    proc = airlock_cli("keys", "reencrypt", "--root", str(root), "-k", "dev:k3", "--json", *conf, check=True)
    assert json.loads(proc.stdout)["counts"].get("reencrypted", 0) >= 1
    after = {p: read_encrypted_header(p) for p in _repo_files(root)}
    assert set(after) == set(before)
    for p, hdr in after.items():
        assert hdr.key_id == "k3" and hdr.fixed.commitment != before[p]  # a new data key
        assert hdr.identity is not None and hdr.identity.path  # bound to its place
    assert all(p.stat().st_nlink > 1 for p in links)  # hard links between versions kept
    assert all(oct(p.stat().st_mode & 0o777) == "0o444" for p in after)
    (keyfile_env.keydir / "k2.kek").unlink()
    r2 = Repository(root, lock_timeout=5, keys=ProviderRegistry.load(keyfile_env.config))
    assert {r2.show("m", v)["key_ref"] for v in ("1.0.0", "1.1.0", "1.2.0")} == {"dev:k3"}
    assert r2.verify("m")["ok"]
    for v in ("1.0.0", "1.2.0"):
        out = tmp_path / f"plain-{v}"
        assert airlock_cli("keys", "decrypt", "-i", str(r2.layout.version_dir("m", v)), "-o", str(out),
                           *conf).returncode == 0
        assert hashes(out) == hashes(versions.src[v])
    # a re-run finds nothing left to do
    again = json.loads(airlock_cli("keys", "reencrypt", "--root", str(root), "-k", "dev:k3", "--json", *conf,
                                   check=True).stdout)
    assert set(again["counts"]) == {"unchanged"}
    r.close()
    r2.close()


def test_vault_rewrap_raises_min_decryption_version(all_env: KeyEnv, vault: TransitEdgeMock,
                                                    versions: Versions, tmp_path: Path) -> None:
    import hvac

    root = tmp_path / "root"
    r = Repository(root, lock_timeout=5, keys=all_env.registry)
    r.install_version("m", "1.0.0", versions.src["1.0.0"], encrypt="vault:t1")
    r.close()
    old_wrapped = read_encrypted_header(_repo_files(root)[0]).active.wrapped
    assert old_wrapped.startswith(b"vault:v1:")
    hvac.Client(url=vault.url, token=vault.state.token).secrets.transit.rotate_key(name="t1")
    proc = airlock_cli("keys", "rotate", "--root", str(root), "-k", "vault:t1", "--rewrap-latest", "--json",
                       "--config", str(all_env.config), env=all_env.env, check=True)
    assert json.loads(proc.stdout)["min_decryption_version"] == 2
    assert "POST /v1/transit/keys/t1/config" in vault.state.requests
    assert {read_encrypted_header(p).active.wrapped[:9] for p in _repo_files(root)} == {b"vault:v2:"}
    with pytest.raises(WrongKeyError):  # a copy of an old slot no longer opens anything
        all_env.registry.get("vault").unwrap("t1", old_wrapped)
    r = Repository(root, lock_timeout=5, keys=ProviderRegistry.load(all_env.config))
    assert r.verify("m")["ok"]
    r.close()


def test_workspace_must_be_tmpfs_and_leftovers_swept(keyfile_env: KeyEnv, versions: Versions,
                                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert require_ram_fs(Path("/dev/shm")) == Path("/dev/shm")
    with pytest.raises(WorkspaceError, match="not on tmpfs"):
        require_ram_fs(tmp_path)  # a disk directory (ext4 here)
    with pytest.raises(WorkspaceError), plaintext_workspace(tmp_path):
        pass
    assert not list(tmp_path.glob("airlock-plain-*"))
    # a disk "mounted" where /dev/shm should be: an encrypted update refuses, changes nothing
    root = tmp_path / "root"
    r = Repository(root, lock_timeout=5, keys=keyfile_env.registry)
    r.install_version("m", "1.0.0", versions.src["1.0.0"], encrypt="dev:k1")
    disk = tmp_path / "fake-shm"
    disk.mkdir()
    monkeypatch.setattr("airlock.crypto.tree.TMPFS", disk)
    with pytest.raises(WorkspaceError):
        r.update_from_delta("m", versions.deltas[("1.0.0", "1.1.0")])
    assert not list(disk.iterdir()) and not r.layout.version_dir("m", "1.1.0").exists()
    r.close()
    monkeypatch.undo()
    # crash leftovers of every temporary name, from a dead process, swept; a live one's kept
    dead, live = _dead_pid(), os.getpid()
    names = [f".w.bin.airlock-tmp-{dead}-0a1b", f".crypto-staging-{dead}-out-x1", f"airlock-plain-{dead}-q"]
    for name in names:
        (tmp_path / name).mkdir() if "tmp-" not in name else (tmp_path / name).write_bytes(b"plain")
    (tmp_path / f".w.bin.airlock-tmp-{live}-0a1b").write_bytes(b"in use")
    assert sorted(p.name for p in sweep_dead(tmp_path)) == sorted(names)
    assert (tmp_path / f".w.bin.airlock-tmp-{live}-0a1b").exists()
    shm = Path("/dev/shm") / f"airlock-plain-{dead}-leftover"
    shm.mkdir()
    assert shm in sweep_workspaces()
    # keys decrypt sweeps beside its output before writing
    enc = tmp_path / "p.enc"
    src = tmp_path / "p"
    src.write_bytes(b"x" * 1000)
    encrypt_file(src, enc, keyfile_env.registry.get("dev"), "k1")
    stale = tmp_path / "out" / f".p.out.airlock-tmp-{dead}-ffff"
    stale.parent.mkdir()
    stale.write_bytes(b"plaintext of a killed decrypt")
    airlock_cli("keys", "decrypt", "-i", str(enc), "-o", str(tmp_path / "out" / "p.out"), "--config",
                str(keyfile_env.config), check=True)
    assert not stale.exists()


def test_secrets_and_config_owner_and_mode(all_env: KeyEnv, vault: TransitEdgeMock, tmp_path: Path) -> None:
    conf = yaml.safe_load(all_env.config.read_text())
    src = tmp_path / "p"
    src.write_bytes(b"y" * 100)

    def refused(match: str, ref: str = "dev:k1") -> None:
        proc = airlock_cli("keys", "encrypt", "-i", str(src), "-o", str(tmp_path / "p.enc"), "-k", ref,
                           "--config", str(all_env.config), env=all_env.env)
        assert proc.returncode == 34 and match in proc.stderr, proc.stderr
        assert not (tmp_path / "p.enc").exists()

    os.chmod(all_env.config, 0o666)  # anyone could point it at another PKCS#11 library or Vault
    refused("writable by group/others")
    os.chmod(all_env.config, 0o644)
    os.chmod(all_env.keydir, 0o777)  # anyone could substitute a KEK
    refused("key directory")
    os.chmod(all_env.keydir, 0o700)
    os.chown(all_env.keydir / "k1.kek", 65534, 65534)
    refused("belongs to uid 65534")
    os.chown(all_env.keydir / "k1.kek", 0, 0)
    token = Path(conf["providers"]["vault"]["token_file"])
    os.chown(token, 65534, 65534)
    refused("belongs to uid 65534", "vault:t1")
    os.chown(token, 0, 0)
    airlock_cli("keys", "encrypt", "-i", str(src), "-o", str(tmp_path / "p.enc"), "-k", "vault:t1",
                "--config", str(all_env.config), env=all_env.env, check=True)
    # http:// Vault: refused (token and data keys in clear), unless a loopback test server is allowed
    for url, allow in ((vault.url, False), ("http://vault.example:8200", True)):
        reg = ProviderRegistry({"providers": {"v": {"type": "vault", "url": url, "token_env": "PATH",
                                                    "allow_insecure_http": allow}}})
        with pytest.raises(KeyProviderError, match="http:// sends the token"):
            reg.get("v")
    conf["providers"]["vault"].pop("allow_insecure_http")
    all_env.config.write_text(yaml.safe_dump(conf))
    proc = airlock_cli("keys", "providers", "--config", str(all_env.config), env=all_env.env)
    assert proc.returncode == 34 and "http://" in proc.stdout
    assert ProviderRegistry({"providers": {"v": {"type": "vault", "url": "https://vault.example:8200",
                                                 "token_env": "PATH"}}}).get("v").url.startswith("https")


# as root the rotation runs as the unprivileged user nobody (setpriv, util-linux); otherwise as us
AS_OWNER = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
OWNER_UID = 65534 if os.geteuid() == 0 else os.geteuid()


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """A directory owned by the non-root user the rotation runs as."""
    d = Path(tempfile.mkdtemp(prefix="airlock-nobody-"))
    os.chmod(d, 0o755)
    if os.geteuid() == 0:
        os.chown(d, OWNER_UID, OWNER_UID)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_rotation_restores_modes_as_non_root_owner(nobody_dir: Path) -> None:
    """Killed after a 0444 file was made owner-writable (0644): the re-run restores 0444."""
    def as_nobody(*args: str, fault: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "AIRLOCK_FAULT"}
        if fault:
            env["AIRLOCK_FAULT"] = fault
        cmd = [*AS_OWNER, sys.executable, "-c", "from airlock.cli import main; main()", *args]
        return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=120)

    keydir = nobody_dir / "keys"
    config = nobody_dir / "keys.yaml"
    setup = (f"import yaml, pathlib; from airlock.crypto import ProviderRegistry, encrypt_file\n"
             f"pathlib.Path({str(config)!r}).write_text(yaml.safe_dump({{'providers': {{'dev': {{'type': "
             f"'keyfile', 'dir': {str(keydir)!r}, 'allow_development_keyfile': True}}}}}}))\n"
             f"reg = ProviderRegistry.load(pathlib.Path({str(config)!r}))\n"
             "reg.get('dev').generate('k1'); reg.get('dev').generate('k2')\n"
             f"d = pathlib.Path({str(nobody_dir)!r}) / 'model'; d.mkdir()\n"
             "for n in ('a.bin', 'b.bin'):\n"
             "    (d.parent / n).write_bytes(n.encode() * 5000)\n"
             "    encrypt_file(d.parent / n, d / n, reg.get('dev'), 'k1'); (d / n).chmod(0o444)\n")
    subprocess.run([*AS_OWNER, sys.executable, "-c", setup], check=True, cwd=REPO, capture_output=True)
    model = nobody_dir / "model"
    args = ("keys", "rotate", "-p", str(model), "-k", "dev:k2", "--audit-log", str(nobody_dir / "audit.log"),
            "--config", str(config))
    killed = as_nobody(*args, fault="crypto.rotate.old-wiped")
    assert killed.returncode == -9, killed.stderr
    assert oct((model / "a.bin").stat().st_mode & 0o777) == "0o644"  # left owner-writable by the kill
    done = as_nobody(*args)
    assert done.returncode == 0, done.stderr
    for name in ("a.bin", "b.bin"):
        assert oct((model / name).stat().st_mode & 0o777) == "0o444", name
        assert read_encrypted_header(model / name).key_id == "k2"
        assert (model / name).stat().st_uid == OWNER_UID
    assert all(is_encrypted(p) for p in model.iterdir())
    assert KeyRef.parse("dev:k2").key_id == "k2"


def test_rotate_root_seals_legacy_plaintext_kept_deltas(keyfile_env: KeyEnv, versions: Versions,
                                                        tmp_path: Path) -> None:
    """A repository from before issue 21 kept plaintext deltas of encrypted versions: the next
    ``keys rotate --root`` encrypts them (under the new key) and rollback still works from them."""
    root = tmp_path / "root"
    r = Repository(root, lock_timeout=5, keys=keyfile_env.registry)
    r.install_version("m", "1.0.0", versions.src["1.0.0"], encrypt="dev:k1")
    r.update_from_delta("m", versions.deltas[("1.0.0", "1.1.0")])
    r.update_from_delta("m", versions.deltas[("1.1.0", "1.2.0")])
    kept = r.layout.model_packages("m") / "m-1.0.0-1.1.0.aldelta"
    assert is_encrypted(kept)
    os.replace(shutil.copy(versions.deltas[("1.0.0", "1.1.0")], tmp_path / "legacy"), kept)  # as before
    os.chmod(kept, 0o444)
    proc = airlock_cli("keys", "rotate", "--root", str(root), "-k", "dev:k2", "--json", "--config",
                       str(keyfile_env.config), check=True)
    assert json.loads(proc.stdout)["sealed_deltas"] == [str(kept)]
    assert is_encrypted(kept) and read_encrypted_header(kept).key_id == "k2"
    assert oct(kept.stat().st_mode & 0o777) == "0o444"
    r.prune("m", keep=2)
    assert not r.layout.version_dir("m", "1.0.0").exists()
    assert r.rollback("m", to="1.0.0").rebuild  # through both (now encrypted) kept deltas
    assert r.verify("m")["ok"]
    r.close()
