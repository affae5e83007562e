"""Signed offline apt repository: built from real .debs, used by real apt with no other sources,
tampering refused by apt itself and by verify_apt_repo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from airlock.cli.preflight import register
from airlock.errors import IntegrityError, ManifestError, SignatureError
from airlock.provision.aptrepo import KEYRING_NAME, build_apt_repo, closure_names, verify_apt_repo
from tests.provision.apt_offline import OfflineApt, installed
from tests.provision.conftest import Key
from tests.support import require_root


@pytest.fixture
def repo(tmp_path: Path, keys: dict[str, Key], debs: list[Path]) -> Path:
    out = tmp_path / "apt"
    build_apt_repo(debs, out, signer=keys["bundle"].fpr, gnupghome=keys["bundle"].home)
    return out


def test_layout_index_and_signatures(repo: Path, keys: dict[str, Key], debs: list[Path]) -> None:
    names = sorted(p.name for p in repo.iterdir())
    assert names == sorted(
        [
            "InRelease",
            KEYRING_NAME,
            "Packages",
            "Packages.gz",
            "Packages.xz",
            "Release",
            "Release.gpg",
            "pool",
        ]
    )
    pkgs = verify_apt_repo(repo, fingerprints=[keys["bundle"].fpr])
    assert [p.name for p in pkgs] == ["figlet", "hello", "sl"]
    text = (repo / "Packages").read_text()
    assert "Package: hello\n" in text and "Filename: pool/hello_" in text and "SHA256: " in text
    # real gpg agrees: both signatures check out against the exported key, and it is the bundle key
    ring = repo / KEYRING_NAME
    out = subprocess.run(
        ["gpgv", "--keyring", str(ring), str(repo / "Release.gpg"), str(repo / "Release")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert (
        subprocess.run(
            ["gpgv", "--keyring", str(ring), str(repo / "InRelease")], capture_output=True, check=False
        ).returncode
        == 0
    )
    assert (
        keys["bundle"].fpr
        in subprocess.run(
            ["gpg", "--show-keys", "--with-colons", str(ring)], capture_output=True, text=True, check=True
        ).stdout
    )


def test_install_from_offline_repo_with_no_other_sources(repo: Path, tmp_path: Path) -> None:
    require_root("installs a package with dpkg")
    if installed("hello"):
        pytest.fail("'hello' is already installed here; the test needs a host without it")
    apt = OfflineApt(tmp_path / "apt-state")
    apt.use(f"deb [signed-by={repo / KEYRING_NAME}] file:{repo} ./")
    upd = apt.run("update")
    assert upd.returncode == 0 and "W:" not in upd.stdout + upd.stderr, upd.stdout + upd.stderr
    try:
        res = apt.run("install", "--no-install-recommends", "hello")
        assert res.returncode == 0, res.stdout + res.stderr
        assert subprocess.run(["/usr/bin/hello"], capture_output=True, text=True).stdout == "Hello, world!\n"
    finally:
        subprocess.run(["dpkg", "--purge", "hello"], capture_output=True, check=False)
    assert not installed("hello")


def test_tampered_deb_is_refused_by_apt(repo: Path, tmp_path: Path, keys: dict[str, Key]) -> None:
    require_root("apt-get with its own state dirs")
    deb = next((repo / "pool").glob("hello_*.deb"))
    data = bytearray(deb.read_bytes())
    data[-100] ^= 0x01  # same size, one bit flipped inside the data member
    deb.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"hello_.*SHA-256 in Packages"):
        verify_apt_repo(repo, fingerprints=[keys["bundle"].fpr])
    apt = OfflineApt(tmp_path / "apt-state")
    apt.use(f"deb [signed-by={repo / KEYRING_NAME}] file:{repo} ./")
    assert apt.run("update").returncode == 0
    res = apt.run("install", "--download-only", "hello")
    assert res.returncode != 0
    log = res.stdout + res.stderr
    assert "Hash Sum mismatch" in log or "Hashes of expected file" in log, log
    assert not installed("hello")


@pytest.mark.parametrize("damage", ["tampered-release", "unsigned", "other-key"])
def test_release_not_signed_by_the_bundle_key_is_refused(
    repo: Path, tmp_path: Path, keys: dict[str, Key], damage: str
) -> None:
    require_root("apt-get with its own state dirs")
    if damage == "tampered-release":
        for name in ("Release", "InRelease"):
            p = repo / name
            p.write_text(p.read_text().replace("Label: Airlock offline", "Label: Airlock offlinf"))
    elif damage == "unsigned":
        (repo / "InRelease").unlink()
        (repo / "Release.gpg").unlink()
    else:
        other = keys["other"]
        for name, flag in (("InRelease", "--clearsign"), ("Release.gpg", "--detach-sign")):
            (repo / name).unlink()
            other.gpg(
                "--armor",
                flag,
                "--local-user",
                other.fpr,
                "--output",
                str(repo / name),
                str(repo / "Release"),
            )
    with pytest.raises(SignatureError):
        verify_apt_repo(repo, fingerprints=[keys["bundle"].fpr])
    apt = OfflineApt(tmp_path / "apt-state")
    apt.use(f"deb [signed-by={repo / KEYRING_NAME}] file:{repo} ./")
    upd = apt.run("update")
    assert upd.returncode != 0, upd.stdout + upd.stderr
    assert "is not signed" in upd.stderr or "NO_PUBKEY" in upd.stderr or "BADSIG" in upd.stderr, upd.stderr
    res = apt.run("install", "--download-only", "hello")
    assert res.returncode != 0 and "Unable to locate package hello" in res.stderr


def test_bad_inputs_change_nothing(tmp_path: Path, keys: dict[str, Key], debs: list[Path]) -> None:
    k = keys["bundle"]
    junk = tmp_path / "junk.deb"
    junk.write_bytes(b"!<arch>\nnot really a package")
    out = tmp_path / "apt"
    with pytest.raises(ManifestError, match=r"junk\.deb: not a Debian package"):
        build_apt_repo([debs[0], junk], out, signer=k.fpr, gnupghome=k.home)
    with pytest.raises(SignatureError, match="no secret key"):
        build_apt_repo(debs, out, signer=keys["other"].fpr, gnupghome=k.home)
    with pytest.raises(ManifestError, match=r"no \.deb files"):
        build_apt_repo([], out, signer=k.fpr, gnupghome=k.home)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.deb"]
    out.mkdir()
    with pytest.raises(ManifestError, match="already exists"):
        build_apt_repo(debs, out, signer=k.fpr, gnupghome=k.home)
    assert list(out.iterdir()) == []


def test_duplicates_merged_and_conflicts_refused(
    tmp_path: Path, keys: dict[str, Key], debs: list[Path]
) -> None:
    k = keys["bundle"]
    copy = tmp_path / "copy" / debs[0].name
    copy.parent.mkdir()
    shutil.copyfile(debs[0], copy)
    repo = build_apt_repo([*debs, copy], tmp_path / "a", signer=k.fpr, gnupghome=k.home)
    assert len(repo.packages) == len(debs)
    # same name/version/arch, different bytes: rebuild the package with a changed file inside
    tree = tmp_path / "tree"
    subprocess.run(["dpkg-deb", "-R", str(debs[0]), str(tree)], check=True)
    doc = next(p for p in tree.rglob("*") if p.is_file() and "DEBIAN" not in p.parts)
    doc.write_bytes(doc.read_bytes() + b"\n")
    other = tmp_path / "other" / debs[0].name
    other.parent.mkdir()
    subprocess.run(["dpkg-deb", "-b", str(tree), str(other)], check=True, capture_output=True)
    with pytest.raises(ManifestError, match="given twice with different contents"):
        build_apt_repo([debs[0], other], tmp_path / "b", signer=k.fpr, gnupghome=k.home)
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("point", ["aptrepo-copy", "aptrepo-rename"])
def test_kill_9_leaves_no_repository(
    tmp_path: Path, keys: dict[str, Key], debs: list[Path], point: str
) -> None:
    k = keys["bundle"]
    out = tmp_path / "apt"
    code = (
        "import sys; from pathlib import Path; from airlock.provision.aptrepo import build_apt_repo; "
        "build_apt_repo([Path(p) for p in sys.argv[3:]], Path(sys.argv[1]), signer=sys.argv[2], "
        f"gnupghome=Path({str(k.home)!r}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(out), k.fpr, *map(str, debs)],
        env={**os.environ, "AIRLOCK_FAULT": point},
        capture_output=True,
        check=False,
    )
    assert proc.returncode == -9
    assert not out.exists()
    # the next build clears the killed build's staging dir and succeeds
    build_apt_repo(debs, out, signer=k.fpr, gnupghome=k.home)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["apt"]


def test_dependency_closure_resolved_by_apt() -> None:
    names = closure_names(["sl"])
    assert {"sl", "libc6", "libncurses6", "libtinfo6"} <= set(names)
    trimmed = closure_names(["sl"], exclude={"libc6"})
    assert "sl" in trimmed and "libc6" not in trimmed
    with pytest.raises(ManifestError, match="apt-cache depends"):
        closure_names(["no-such-package-airlock"])


def test_cli_build_and_verify(tmp_path: Path, keys: dict[str, Key], debs: list[Path]) -> None:
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    k = keys["bundle"]
    src = tmp_path / "debs"
    src.mkdir()
    for d in debs:
        shutil.copyfile(d, src / d.name)
    out = tmp_path / "apt"
    res = runner.invoke(
        app,
        [
            "repo",
            "build-apt",
            str(src),
            "-o",
            str(out),
            "--signer",
            k.fpr,
            "--gnupghome",
            str(k.home),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    assert [p.split("=")[0] for p in json.loads(res.stdout)["packages"]] == ["figlet", "hello", "sl"]
    res = runner.invoke(app, ["repo", "verify-apt", str(out), "--fingerprint", k.fpr])
    assert res.exit_code == 0 and "3 packages verified" in res.stdout
    res = runner.invoke(app, ["repo", "verify-apt", str(out), "--fingerprint", keys["other"].fpr])
    assert res.exit_code == 10 and "not a pinned signer" in res.output
    res = runner.invoke(
        app, ["repo", "build-apt", str(src), "-o", str(out), "--signer", k.fpr, "--gnupghome", str(k.home)]
    )
    assert res.exit_code == 11 and "already exists" in res.output
