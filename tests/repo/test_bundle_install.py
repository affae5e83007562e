"""install_from_bundle with real signed bundles (real gpg): a full model, then a delta bundle;
anti-downgrade; verify against the kept signed manifest (block-level first mismatch)."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from airlock.bundle import stage_bundle
from airlock.errors import DowngradeError
from airlock.repo import Repository
from tests.bundle.factory import build_model_bundle as _bundle
from tests.bundle.factory import signer_trust as _trust
from tests.gpg import Keys
from tests.repo.conftest import Versions, assert_same_tree, cli

__all__ = ["_bundle", "_trust"]  # still importable from here by modules not moved yet


@pytest.fixture
def bundles(tmp_path: Path, keys: Keys, versions: Versions) -> dict[str, Path]:
    return {
        "full": _bundle(tmp_path, keys, "full", {"name": "m", "version": "1.0.0",
                                                  "path": str(versions.src["1.0.0"]),
                                                  "dependencies": {"torch": "2.13"}}, 5),
        "delta": _bundle(tmp_path, keys, "delta", {"name": "m", "version": "1.1.0", "from_version": "1.0.0",
                                                    "delta": {"old": str(versions.src["1.0.0"]),
                                                              "new": str(versions.src["1.1.0"])}}, 6),
    }


def test_full_then_delta_bundle(repo: Repository, bundles: dict[str, Path], keys: Keys,
                                versions: Versions, tmp_path: Path) -> None:
    staged = stage_bundle(bundles["full"], tmp_path / "stage-full", _trust(keys))
    planned = repo.plan_from_bundle(staged)
    assert [(p.action, p.version, p.changed) for p in planned] == [("install", "1.0.0", True)]
    assert not repo.layout.repo.exists()  # check mode wrote nothing
    plans = repo.install_from_bundle(staged)
    assert [p.version for p in plans] == ["1.0.0"] and repo.installed_sequence() == 5
    row = repo.catalog().version("m", "1.0.0")
    assert row is not None and row.bundle_id == staged.manifest.bundle_id and row.sequence == 5
    assert (repo.layout.bundle_record(staged.manifest.bundle_id) / "MANIFEST.json.asc").exists()

    staged2 = stage_bundle(bundles["delta"], tmp_path / "stage-delta", _trust(keys),
                           installed_sequence=repo.installed_sequence())
    repo.install_from_bundle(staged2)
    assert os.readlink(repo.layout.current("m")) == "1.1.0" and repo.installed_sequence() == 6
    assert_same_tree(repo.layout.version_dir("m", "1.1.0"), versions.src["1.1.0"])
    report = repo.verify("m")
    assert report["ok"] and {v["manifest"] for v in report["versions"]} == {
        staged.manifest.bundle_id, staged2.manifest.bundle_id}
    # the older bundle again is a downgrade
    with pytest.raises(DowngradeError):
        repo.plan_from_bundle(staged)
    with pytest.raises(DowngradeError):
        repo.install_from_bundle(staged)


def test_install_bundle_cli(tmp_path: Path, bundles: dict[str, Path], keys: Keys) -> None:
    root = tmp_path / "root"
    ring = str(keys.keyring("signer"))
    r = cli(root, "model", "install-bundle", str(bundles["full"]), "--trust", keys.fpr["signer"],
            "--keyring", ring, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["plans"][0]["version"] == "1.0.0"
    r = cli(root, "model", "install-bundle", str(bundles["full"]), "--trust", keys.fpr["other"],
            "--keyring", ring)
    assert r.returncode == 10  # unknown signer: refused before anything is read


def test_verify_against_signed_manifest(repo: Repository, bundles: dict[str, Path], keys: Keys,
                                        tmp_path: Path) -> None:
    staged = stage_bundle(bundles["full"], tmp_path / "stage", _trust(keys))
    repo.install_from_bundle(staged)
    f = repo.layout.version_dir("m", "1.0.0") / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[5000] ^= 0xFF  # inside the second 4096-byte block
    os.chmod(f, 0o644)
    f.write_bytes(bytes(data))
    os.chmod(f, 0o444)
    prob = repo.verify("m")["versions"][0]["problems"][0]
    assert prob["kind"] == "sha256" and prob["first_bad_offset"] == 4096
    # a catalog edited to match the tampered file is still caught by the signed manifest
    db = sqlite3.connect(repo.layout.catalog)
    from airlock.hashing import sha256_file

    db.execute("UPDATE files SET sha256=? WHERE relpath='model.safetensors'", (sha256_file(f),))
    db.commit()
    db.close()
    kinds = {p["kind"] for p in repo.verify("m")["versions"][0]["problems"]}
    assert kinds == {"catalog-vs-signed", "sha256"}  # the file is checked against the signed hash


def test_install_bundle_cli_removes_its_staged_copy(tmp_path: Path, bundles: dict[str, Path],
                                                    keys: Keys) -> None:
    root = tmp_path / "root"
    r = cli(root, "model", "install-bundle", str(bundles["full"]), "--trust", keys.fpr["signer"],
            "--keyring", str(keys.keyring("signer")))
    assert r.returncode == 0, r.stderr
    assert not any((root / "model_repo" / "update_packages" / "staged").iterdir())
    r = cli(root, "model", "install-bundle", str(bundles["delta"]), "--trust", keys.fpr["signer"],
            "--keyring", str(keys.keyring("signer")))
    assert r.returncode == 0, r.stderr
    kept = root / "model_repo" / "update_packages" / "m" / "m-1.0.0-1.1.0.aldelta"
    assert kept.exists() and os.readlink(root / "model_repo" / "m" / "current") == "1.1.0"


def test_refused_bundle_does_not_raise_the_floor(repo: Repository, bundles: dict[str, Path], keys: Keys,
                                                 versions: Versions, tmp_path: Path) -> None:
    """A signed bundle whose install fails before any model was installed (here: it claims 1.0.0 with
    other content than the installed 1.0.0) keeps no manifest and leaves the anti-downgrade floor where
    it was, so the next legitimate bundle (sequence between the two) still installs."""
    repo.install_from_bundle(stage_bundle(bundles["full"], tmp_path / "s-full", _trust(keys)))
    assert repo.installed_sequence() == 5
    clash = _bundle(tmp_path, keys, "clash", {"name": "m", "version": "1.0.0",
                                               "path": str(versions.src["1.1.0"])}, 9)
    staged = stage_bundle(clash, tmp_path / "s-clash", _trust(keys))
    records_before = sorted(p.name for p in repo.layout.bundle_records.iterdir())
    with pytest.raises(Exception) as exc:
        repo.install_from_bundle(staged)
    assert not isinstance(exc.value, DowngradeError)
    assert repo.installed_sequence() == 5
    assert sorted(p.name for p in repo.layout.bundle_records.iterdir()) == records_before
    assert os.readlink(repo.layout.current("m")) == "1.0.0"
    staged2 = stage_bundle(bundles["delta"], tmp_path / "s-delta", _trust(keys),
                           installed_sequence=repo.installed_sequence())
    repo.install_from_bundle(staged2)
    assert repo.installed_sequence() == 6 and repo.verify("m")["ok"]
