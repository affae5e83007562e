"""Encrypted model versions in the repository, with a real SoftHSM2 token holding the key-encryption
key: install, verify (plaintext hashes), tamper detection, delta update, rollback after prune,
wrong/missing provider, idempotent re-install, and the CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from airlock.crypto import KeyProviderError, ProviderRegistry, is_encrypted, plaintext_sha256
from airlock.crypto.tree import decrypt_tree
from airlock.errors import RepositoryError
from airlock.hashing import sha256_file, tree_files
from airlock.repo import Repository
from tests.crypto.softhsm import SoftHsm
from tests.gpg import Keys
from tests.repo.conftest import Versions, cli, hashes
from tests.support import flip_byte

KEY = "hsm:models-kek"


@dataclass
class Hsm:
    config: Path
    keys: ProviderRegistry
    env: dict[str, str]


@pytest.fixture
def hsm(tmp_path: Path, softhsm: SoftHsm) -> Hsm:
    """A provider config naming one SoftHSM2 token (PIN in a 0600 file) with key ``models-kek``."""
    config = tmp_path / "keys.yaml"
    config.write_text(yaml.safe_dump({"providers": {"hsm": softhsm.provider_config()}}))
    reg = ProviderRegistry.load(config)
    reg.get("hsm").generate("models-kek")
    return Hsm(config, reg, {"SOFTHSM2_CONF": str(softhsm.conf)})


@pytest.fixture
def erepo(tmp_path: Path, hsm: Hsm) -> Iterator[Repository]:
    r = Repository(tmp_path / "root", lock_timeout=5, keys=hsm.keys)
    yield r
    r.close()


def _plain_hashes(d: Path, reg: ProviderRegistry) -> dict[str, str]:
    return {rel: plaintext_sha256(d / rel, reg)[1] for rel in tree_files(d)}


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under the model repository (names and content hashes) except the catalog and the
    audit log (a refused operation is recorded there as failed)."""
    repo = root / "model_repo"
    return {p.relative_to(repo).as_posix(): sha256_file(p) for p in sorted(repo.rglob("*"))
            if p.is_file() and "metadata" not in p.parts and p.name not in (".lock", "update_history.log")}


def test_install_encrypted_verify_and_tamper(erepo: Repository, versions: Versions, hsm: Hsm,
                                             tmp_path: Path) -> None:
    src = versions.src["1.0.0"]
    erepo.install_version("m", "1.0.0", src, encrypt=KEY)
    vdir = erepo.layout.version_dir("m", "1.0.0")
    # stored encrypted: every file carries the format magic and no plaintext header bytes leak
    st_header = (src / "model.safetensors").read_bytes()[:200]
    for rel in tree_files(src):
        stored = (vdir / rel).read_bytes()
        assert is_encrypted(vdir / rel)
        assert st_header[8:72] not in stored and (src / rel).read_bytes()[:64] not in stored
    # catalog keeps plaintext hashes and the key ref; plaintext decrypts to the source exactly
    row = erepo.show("m", "1.0.0")
    assert row["encrypted"] is True and row["key_ref"] == KEY
    assert {r: f["sha256"] for r, f in row["files"].items()} == hashes(src)
    assert _plain_hashes(vdir, hsm.keys) == hashes(src)
    assert erepo.state()["models"]["m"]["encrypted"] == {"1.0.0": KEY}
    # the crypto engineer's verifier agrees (real CLI, PIN only in the config's pin file)
    proc = cli(tmp_path / "root", "keys", "verify", str(vdir), "--config", str(hsm.config), "--json",
               env=hsm.env)
    assert proc.returncode == 0, proc.stderr
    assert {Path(f["path"]).name: f["sha256"] for f in json.loads(proc.stdout)["files"]} == \
        {Path(r).name: h for r, h in hashes(src).items()}
    report = erepo.verify("m")
    assert report["ok"] and report["versions"][0]["encrypted"] and report["versions"][0]["key_ref"] == KEY
    # tamper one byte of a stored chunk: verify reports that file (authentication fails)
    target = vdir / "model.safetensors"
    flip_byte(target, target.stat().st_size // 2, 1)
    report = erepo.verify("m")
    assert not report["ok"]
    prob = report["versions"][0]["problems"]
    assert [p["path"] for p in prob] == ["model.safetensors"] and prob[0]["kind"] == "decrypt"
    # verify without keys is refused with a clear error instead of reporting ciphertext hashes
    bare = Repository(tmp_path / "root", lock_timeout=5)
    with pytest.raises(RepositoryError, match="key provider config"):
        bare.verify("m")
    bare.close()


def test_delta_update_rollback_after_prune_and_idempotent(erepo: Repository, versions: Versions,
                                                          hsm: Hsm, tmp_path: Path) -> None:
    erepo.install_version("m", "1.0.0", versions.src["1.0.0"], encrypt=KEY)
    erepo.update_from_delta("m", versions.deltas[("1.0.0", "1.1.0")])  # same key ref as the source
    erepo.update_from_delta("m", versions.deltas[("1.1.0", "1.2.0")])
    for v in ("1.1.0", "1.2.0"):
        vdir = erepo.layout.version_dir("m", v)
        assert all(is_encrypted(vdir / r) for r in tree_files(vdir))
        assert erepo.show("m", v)["key_ref"] == KEY
        # byte-identical plaintext: decrypt the whole tree and compare with the real version
        out = tmp_path / f"plain-{v}"
        decrypt_tree(vdir, out, hsm.keys)
        assert hashes(out) == hashes(versions.src[v])
    assert erepo.verify("m")["ok"]
    erepo.prune("m", keep=2)
    assert not erepo.layout.version_dir("m", "1.0.0").exists()
    # rollback to the pruned 1.0.0: rebuilt from the kept reverse deltas, encrypted again
    plan = erepo.rollback("m", to="1.0.0")
    assert plan.rebuild
    v0 = erepo.layout.version_dir("m", "1.0.0")
    assert all(is_encrypted(v0 / r) for r in tree_files(v0))
    assert _plain_hashes(v0, hsm.keys) == hashes(versions.src["1.0.0"])
    assert erepo.state()["models"]["m"]["active"] == "1.0.0" and erepo.verify("m")["ok"]
    # idempotent re-install: same content, nothing written
    before = _snapshot(tmp_path / "root")
    again = erepo.install_version("m", "1.0.0", versions.src["1.0.0"], encrypt=KEY)
    assert not again.changed and _snapshot(tmp_path / "root") == before


def test_unchanged_files_linked_only_between_same_key(erepo: Repository, versions: Versions) -> None:
    erepo.install_version("m", "1.0.0", versions.src["1.0.0"], encrypt=KEY)
    plan = erepo.install_version("m", "1.1.0", versions.src["1.1.0"], encrypt=KEY)
    linked = {f.relpath for f in plan.files if f.how == "link"}
    assert linked == {"config.json", "tokenizer.json"}
    v0, v1 = (erepo.layout.version_dir("m", v) for v in ("1.0.0", "1.1.0"))
    assert (v0 / "config.json").stat().st_ino == (v1 / "config.json").stat().st_ino
    # a plaintext version never links to encrypted files (nor the other way round)
    plain = erepo.plan_install("m", "1.2.0", versions.src["1.2.0"])
    assert all(f.how == "copy" for f in plain.files)
    assert erepo.verify("m")["ok"]


def test_wrong_or_missing_provider_changes_nothing(erepo: Repository, versions: Versions, hsm: Hsm,
                                                   tmp_path: Path) -> None:
    erepo.install_version("m", "1.0.0", versions.src["1.0.0"], encrypt=KEY)
    before = _snapshot(tmp_path / "root")
    with pytest.raises(KeyProviderError, match="no key provider named 'vault'"):
        erepo.install_version("m", "1.1.0", versions.src["1.1.0"], encrypt="vault:x")
    with pytest.raises(KeyProviderError):  # a key the token does not hold
        erepo.install_version("m", "1.1.0", versions.src["1.1.0"], encrypt="hsm:no-such-key")
    bare = Repository(tmp_path / "root", lock_timeout=5)
    with pytest.raises(RepositoryError, match="no key provider config"):  # encrypted source, no keys
        bare.update_from_delta("m", versions.deltas[("1.0.0", "1.1.0")])
    bare.close()
    assert _snapshot(tmp_path / "root") == before
    assert [v["version"] for v in erepo.list_models()[0]["versions"]] == ["1.0.0"]


def test_signed_bundles_installed_encrypted(erepo: Repository, versions: Versions, hsm: Hsm,
                                            keys: Keys, tmp_path: Path) -> None:
    """A full bundle then a delta bundle, stored encrypted: plaintext equals the signed versions and
    verify checks it against the kept signed manifests' target hashes."""
    from airlock.bundle import stage_bundle
    from tests.bundle.factory import build_model_bundle as _bundle
    from tests.bundle.factory import signer_trust as _trust

    full = _bundle(tmp_path, keys, "full", {"name": "m", "version": "1.0.0",
                                            "path": str(versions.src["1.0.0"])}, 5)
    delta = _bundle(tmp_path, keys, "delta", {"name": "m", "version": "1.1.0", "from_version": "1.0.0",
                                              "delta": {"old": str(versions.src["1.0.0"]),
                                                        "new": str(versions.src["1.1.0"])}}, 6)
    staged = stage_bundle(full, tmp_path / "stage-full", _trust(keys))
    assert [p.files[0].how for p in erepo.plan_from_bundle(staged, encrypt=KEY)] == ["encrypt"]
    erepo.install_from_bundle(staged, encrypt=KEY)
    staged2 = stage_bundle(delta, tmp_path / "stage-delta", _trust(keys), installed_sequence=5)
    erepo.install_from_bundle(staged2)  # the encrypted source keeps its key ref
    for v in ("1.0.0", "1.1.0"):
        vdir = erepo.layout.version_dir("m", v)
        assert all(is_encrypted(vdir / r) for r in tree_files(vdir))
        assert _plain_hashes(vdir, hsm.keys) == hashes(versions.src[v])
    report = erepo.verify("m")
    assert report["ok"] and all(v["manifest"] and v["encrypted"] for v in report["versions"])


def test_cli_encrypted_install_update_verify(versions: Versions, hsm: Hsm, tmp_path: Path) -> None:
    root = tmp_path / "root"
    env = {**hsm.env, "AIRLOCK_KEYS_CONFIG": str(hsm.config)}
    proc = cli(root, "model", "install", "m", "1.0.0", str(versions.src["1.0.0"]), "--encrypt", KEY,
               "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    proc = cli(root, "model", "update", "m", str(versions.deltas[("1.0.0", "1.1.0")]), "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    proc = cli(root, "model", "verify", "m", "--keys-config", str(hsm.config), env=hsm.env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"encrypted ({KEY})" in proc.stdout
    # a provider the config lacks: clear error, exit code of KeyProviderError, nothing installed
    proc = cli(root, "model", "install", "m", "1.2.0", str(versions.src["1.2.0"]), "--encrypt", "nope:k",
               env=env)
    assert proc.returncode != 0 and "nope" in proc.stderr + proc.stdout
    assert not (root / "model_repo" / "models" / "m" / "1.2.0").exists()


def _dead_workspaces() -> list[Path]:
    from airlock.crypto.tree import TMPFS, WORKSPACE_PREFIX

    out = []
    for p in TMPFS.glob(f"{WORKSPACE_PREFIX}*"):
        pid = p.name[len(WORKSPACE_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            out.append(p)
    return out


@pytest.mark.parametrize(("op", "fault"), [("install", "repo.install.mid-copy"),
                                           ("install", "repo.install.before-rename"),
                                           ("update", "crypto.tree.before-rename"),
                                           ("update", "repo.update.before-rename")])
def test_kill9_encrypted(op: str, fault: str, versions: Versions, hsm: Hsm, tmp_path: Path) -> None:
    """kill -9 at a write boundary of an encrypted install/update: the serving version stays intact,
    no plaintext workspace survives the next run, and the re-run completes."""
    root = tmp_path / "root"
    env = {**hsm.env, "AIRLOCK_KEYS_CONFIG": str(hsm.config)}
    first = ["model", "install", "m", "1.0.0", str(versions.src["1.0.0"]), "--encrypt", KEY]
    if op == "update":
        assert cli(root, *first, env=env).returncode == 0
        args = ["model", "update", "m", str(versions.deltas[("1.0.0", "1.1.0")])]
    else:
        args = first
    proc = cli(root, *args, env=env, fault=fault)
    assert proc.returncode == -9, proc.stderr
    proc = cli(root, *args, env=env)  # recovers first, then does the work
    assert proc.returncode == 0, proc.stderr
    assert not _dead_workspaces()
    r = Repository(root, lock_timeout=5, keys=hsm.keys)
    want = "1.1.0" if op == "update" else "1.0.0"
    assert r.state()["models"]["m"]["active"] == want
    assert _plain_hashes(r.layout.version_dir("m", want), hsm.keys) == hashes(versions.src[want])
    assert r.verify("m")["ok"]
    r.close()


def _plaintext_markers(versions: Versions) -> dict[str, bytes]:
    """Byte strings that only plaintext derived from the model versions contains: the safetensors
    header JSON, raw tensor bytes (the start of every tensor of every version), the delta magic."""
    import struct

    from airlock.delta.container import MAGIC as DELTA_MAGIC
    from airlock.safetensors_io import read_header

    out = {"delta-magic": DELTA_MAGIC}
    for v, src in versions.src.items():
        st = src / "model.safetensors"
        raw = st.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        out[f"{v}-header-json"] = raw[8:8 + 48]
        for t in read_header(st).tensors:
            start = 8 + n + t.start
            out[f"{v}-{t.name}"] = raw[start:start + 32]
    return out


def _plaintext_under(root: Path, markers: dict[str, bytes]) -> list[str]:
    """Every (file, marker) pair where a file anywhere under ``root`` holds a marker."""
    found = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            data = p.read_bytes()
            found += [f"{p.relative_to(root)}: {name}" for name, m in markers.items() if m in data]
    return found


def test_no_plaintext_under_root(versions: Versions, hsm: Hsm, keys: Keys,
                                 tmp_path: Path) -> None:
    """Issue 21 item 1: after an encrypted install, a delta update, a rollback rebuilt from the kept
    deltas and failed encrypted bundle installs, no file under the root holds plaintext: kept deltas
    are stored encrypted (same key as their version) and a failed install-bundle --encrypt leaves
    nothing staged."""
    from tests.bundle.factory import build_model_bundle as _bundle

    root = tmp_path / "root"
    env = {**hsm.env, "AIRLOCK_KEYS_CONFIG": str(hsm.config)}
    ring = str(keys.keyring("signer"))
    full = _bundle(tmp_path, keys, "full", {"name": "m", "version": "1.0.0",
                                            "path": str(versions.src["1.0.0"])}, 5)
    delta = _bundle(tmp_path, keys, "delta", {"name": "m", "version": "1.1.0", "from_version": "1.0.0",
                                              "delta": {"old": str(versions.src["1.0.0"]),
                                                        "new": str(versions.src["1.1.0"])}}, 6)
    later = _bundle(tmp_path, keys, "later", {"name": "m", "version": "1.2.0",
                                              "path": str(versions.src["1.2.0"])}, 7)
    bundle = ["--trust", keys.fpr["signer"], "--keyring", ring]
    assert cli(root, "model", "install-bundle", str(full), *bundle, "--encrypt", KEY, env=env).returncode == 0
    assert cli(root, "model", "install-bundle", str(delta), *bundle, env=env).returncode == 0
    step = str(versions.deltas[("1.1.0", "1.2.0")])
    assert cli(root, "model", "update", "m", step, env=env).returncode == 0
    kept = sorted((root / "model_repo" / "update_packages" / "m").iterdir())
    assert [p.name for p in kept] == ["m-1.0.0-1.1.0.aldelta", "m-1.1.0-1.2.0.aldelta"]
    assert all(is_encrypted(p) and oct(p.stat().st_mode & 0o777) == "0o444" for p in kept)
    # the kept deltas still serve rollback: 1.0.0 pruned, rebuilt through both encrypted deltas
    assert cli(root, "model", "prune", "m", "--keep", "2", env=env).returncode == 0
    proc = cli(root, "model", "rollback", "m", "--to", "1.0.0", env=env)
    assert proc.returncode == 0, proc.stderr
    r = Repository(root, lock_timeout=5, keys=hsm.keys)
    assert _plain_hashes(r.layout.version_dir("m", "1.0.0"), hsm.keys) == hashes(versions.src["1.0.0"])
    assert r.verify("m")["ok"]
    r.close()
    # a KEK that is not there: refused before staging (key-provider exit code), nothing staged
    proc = cli(root, "model", "install-bundle", str(later), *bundle, "--encrypt", "hsm:no-such-kek", env=env)
    assert proc.returncode == 34, proc.stdout + proc.stderr
    staged = root / "model_repo" / "update_packages" / "staged"
    assert not staged.exists() or not any(staged.iterdir())
    # a failure after staging (a version already installed with other content): stage removed
    clash = _bundle(tmp_path, keys, "clash", {"name": "m", "version": "1.1.0",
                                              "path": str(versions.src["1.2.0"])}, 8)
    proc = cli(root, "model", "install-bundle", str(clash), *bundle, "--encrypt", KEY, env=env)
    assert proc.returncode == 30, proc.stdout + proc.stderr
    assert not staged.exists() or not any(staged.iterdir())
    # kill -9 while installing from the staged plaintext: the next repository operation removes it
    last = _bundle(tmp_path, keys, "last", {"name": "m", "version": "1.3.0",
                                            "path": str(versions.src["1.2.0"])}, 9)
    proc = cli(root, "model", "install-bundle", str(last), *bundle, "--encrypt", KEY, env=env,
               fault="repo.install.before-rename")
    assert proc.returncode == -9, proc.stderr
    assert _plaintext_under(root, _plaintext_markers(versions))  # the scan does find plaintext
    assert cli(root, "model", "prune", "m", "--keep", "2", env=env).returncode == 0
    assert not staged.exists() or not any(staged.iterdir())
    assert _plaintext_under(root, _plaintext_markers(versions)) == []
    assert not _dead_workspaces()
