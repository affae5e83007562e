"""roles/offline_repo for real on this host, every path redirected into a temp dir: the repository
from a bundle-like directory is checked against the pinned key, configured as a deb822 source apt
really reads, pip points at the wheelhouse; idempotent, check mode writes nothing, user config kept."""

from __future__ import annotations

import configparser
import subprocess
from pathlib import Path
from typing import Any

import pytest

from airlock.provision.aptrepo import build_apt_repo
from tests.provision.ansible_run import run_role
from tests.provision.conftest import Key
from tests.support import require_root, require_tool

USER_PIP = "[global]\ntimeout = 60\n\n[install]\nprogress-bar = off\n"


@pytest.fixture
def bundle(tmp_path: Path, keys: dict[str, Key], debs: list[Path]) -> Path:
    b = tmp_path / "bundle"
    build_apt_repo(debs, b / "apt", signer=keys["bundle"].fpr, gnupghome=keys["bundle"].home)
    (b / "wheelhouse").mkdir()
    (b / "wheelhouse" / "demo-1.0-py3-none-any.whl").write_bytes(b"PK\x05\x06" + b"\0" * 18)
    return b


def role_vars(tmp: Path, bundle: Path, fpr: str) -> dict[str, Any]:
    t = tmp / "target"
    return {
        "offline_repo_bundle_dir": str(bundle),
        "offline_repo_signer_fingerprint": fpr,
        "offline_repo_apt_dir": str(t / "srv/apt"),
        "offline_repo_keyring": str(t / "etc/apt/keyrings/airlock-offline.gpg"),
        "offline_repo_sources_file": str(t / "etc/apt/sources.list.d/airlock-offline.sources"),
        "offline_repo_apt_options": [
            "-o",
            f"Dir::State::Lists={t / 'lists'}",
            "-o",
            f"Dir::Cache={t / 'cache'}",
        ],
        "offline_repo_wheelhouse_dir": str(t / "srv/wheelhouse"),
        "offline_repo_pip_conf": str(t / "etc/pip.conf"),
    }


def test_configures_apt_and_pip_idempotently(tmp_path: Path, bundle: Path, keys: dict[str, Key]) -> None:
    require_root("apt-get update of the offline source")
    require_tool("gpgv", "apt-get install gpgv")
    t = tmp_path / "target"
    for d in ("lists/partial", "cache/archives/partial", "etc"):
        (t / d).mkdir(parents=True)
    (t / "etc/pip.conf").write_text(USER_PIP)
    v = role_vars(tmp_path, bundle, keys["bundle"].fpr)

    dry = run_role(tmp_path, "offline_repo", v, check=True)
    assert dry.rc == 0, dry.output
    assert (
        dry.recap["changed"] > 0 and not (t / "srv").exists() and (t / "etc/pip.conf").read_text() == USER_PIP
    )

    first = run_role(tmp_path, "offline_repo", v)
    assert first.rc == 0, first.output
    assert first.recap["changed"] > 0 and first.recap["failed"] == 0
    second = run_role(tmp_path, "offline_repo", v)
    assert second.rc == 0 and second.recap["changed"] == 0, second.output

    sources = (t / "etc/apt/sources.list.d/airlock-offline.sources").read_text()
    assert f"URIs: file:{t / 'srv/apt'}" in sources and f"Signed-By: {t}/etc/apt/keyrings/" in sources
    # apt itself reads the deb822 source, checked the signature, and offers hello from it
    opts = [
        "-o",
        f"Dir::Etc::sourcelist={t}/etc/apt/sources.list.d/airlock-offline.sources",
        "-o",
        "Dir::Etc::sourceparts=-",
        "-o",
        f"Dir::State::Lists={t / 'lists'}",
        "-o",
        f"Dir::Cache={t / 'cache'}",
    ]
    policy = subprocess.run(
        ["apt-cache", *opts, "policy", "hello"], capture_output=True, text=True, check=True
    )
    assert f"file:{t / 'srv/apt'} ./ Packages" in policy.stdout, policy.stdout
    sim = subprocess.run(
        ["apt-get", *opts, "-s", "install", "hello"], capture_output=True, text=True, check=False
    )
    assert sim.returncode == 0 and "Inst hello" in sim.stdout, sim.stdout + sim.stderr

    cfg = configparser.RawConfigParser()  # pip's parser: strict, so a duplicate [global] would raise
    cfg.read(t / "etc/pip.conf")
    assert cfg.get("global", "timeout") == "60" and cfg.get("install", "progress-bar") == "off"
    assert cfg.get("global", "no-index") == "true"
    assert cfg.get("global", "find-links") == str(t / "srv/wheelhouse")
    assert (t / "srv/wheelhouse/demo-1.0-py3-none-any.whl").is_file()


def test_wrong_pinned_key_refuses_the_repository(tmp_path: Path, bundle: Path, keys: dict[str, Key]) -> None:
    v = role_vars(tmp_path, bundle, keys["other"].fpr)
    res = run_role(tmp_path, "offline_repo", v)
    assert res.rc != 0 and "not the pinned bundle key" in res.output
    assert not (tmp_path / "target").exists()


def test_tampered_release_refused_before_anything_is_written(
    tmp_path: Path, bundle: Path, keys: dict[str, Key]
) -> None:
    rel = bundle / "apt/Release"
    rel.write_text(rel.read_text().replace("Suite: airlock", "Suite: airlocl"))
    res = run_role(tmp_path, "offline_repo", role_vars(tmp_path, bundle, keys["bundle"].fpr))
    assert res.rc != 0 and "BAD signature" in res.output, res.output[-2000:]
    assert not (tmp_path / "target").exists()
