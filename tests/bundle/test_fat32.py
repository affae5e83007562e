"""The field journey on a real FAT32 file system (mkfs.vfat -F 32, mounted through fusefat): build
onto the stick (no chmod there; fusefat loses a renamed directory's children, so the bundle is moved
in file by file), then at the site with the stick read-only: verify, preflight, install-bundle, a
delta update; the stick's image is byte-for-byte unchanged. And the stick pulled mid-stage (the FUSE
process killed): exit 36 with "re-run to resume", then replugged, the re-run resumes."""

from __future__ import annotations

import json
from pathlib import Path

from tests.bundle.conftest import Keys
from tests.bundle.field import airlock, fat32_stick, paused_at, write_spec
from tests.repo.models import Versions


def _build(keys: Keys, spec: Path, out: Path) -> None:
    r = airlock("bundle", "build", str(spec), "-o", str(out), "--signer", keys.fpr["signer"],
                "--gnupghome", str(keys.home))
    assert r.returncode == 0, r.stderr
    assert (out / "MANIFEST.json").is_file() and (out / "MANIFEST.json.asc").is_file()


def test_fat32_journey_read_only_at_site(keys: Keys, versions: Versions, tmp_path: Path) -> None:
    full = write_spec(tmp_path / "full.yml", [{"name": "m", "version": "1.0.0",
                                               "path": str(versions.src["1.0.0"])}], sequence=1)
    delta = write_spec(tmp_path / "delta.yml", [{"name": "m", "version": "1.1.0", "from_version": "1.0.0",
                                                 "delta": {"old": str(versions.src["1.0.0"]),
                                                           "new": str(versions.src["1.1.0"])}}], sequence=2)
    ring = tmp_path / "release.asc"
    ring.write_bytes(keys.public["signer"].read_bytes())
    trust = ("--trust", keys.fpr["signer"], "--keyring", str(ring))
    root = tmp_path / "appliance"
    with fat32_stick(tmp_path) as stick:
        usb = stick.mount(rw=True)
        _build(keys, full, usb / "dsv3-1.0.0")
        _build(keys, delta, usb / "dsv3-1.1.0")
        stick.unmount()
        before = stick.digest()

        usb = stick.mount(rw=False)  # at the site the stick is read-only
        for b in ("dsv3-1.0.0", "dsv3-1.1.0"):
            r = airlock("bundle", "verify", str(usb / b), *trust)
            assert r.returncode == 0, r.stderr
        r = airlock("preflight", "--bundle", str(usb / "dsv3-1.0.0"), *trust, "--root", str(root), "--json",
                    "--allow-fail", "gpu")
        assert r.returncode in (0, 14), r.stderr
        assert json.loads(r.stdout)["checks"]
        r = airlock("model", "install-bundle", str(usb / "dsv3-1.0.0"), *trust, root=root)
        assert r.returncode == 0, r.stderr
        assert "installed m 1.0.0 (active)" in r.stdout
        r = airlock("model", "install-bundle", str(usb / "dsv3-1.1.0"), *trust, root=root)
        assert r.returncode == 0, r.stderr
        assert "updated m 1.0.0 -> 1.1.0 (active)" in r.stdout
        r = airlock("model", "verify", "m", root=root)
        assert r.returncode == 0, r.stdout + r.stderr
        assert not list((root / "model_repo" / "update_packages" / "staged").iterdir())  # removed
        stick.unmount()
        assert stick.digest() == before  # read-only means no byte changes


def test_stick_pulled_mid_stage_then_resumed(keys: Keys, versions: Versions,
                                             tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "full.yml", [{"name": "m", "version": "1.0.0",
                                               "path": str(versions.src["1.0.0"])}],
                      sequence=1, block_size=4096)
    trust = ("--trust", keys.fpr["signer"], "--keyring", str(keys.keyring("signer")))
    root = tmp_path / "appliance"
    with fat32_stick(tmp_path) as stick:
        usb = stick.mount(rw=True)
        _build(keys, spec, usb / "b")
        stick.unmount()
        usb = stick.mount(rw=False)
        args = ("model", "install-bundle", str(usb / "b"), *trust, "--json")
        with paused_at("stage-mid-copy", *args, root=root, tmp=tmp_path) as run:
            stick.pull()
            run.resume()
        r = run.finish()
        assert r.returncode == 36, r.stdout + r.stderr
        doc = json.loads(r.stdout)
        assert doc["ok"] is False and doc["rule"] == "media-gone" and "re-run to resume" in doc["message"]
        staged = root / "model_repo" / "update_packages" / "staged" / "b"
        assert staged.is_dir()  # kept: the re-run resumes from it

        usb = stick.replug()
        r = airlock(*args, root=root)
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        assert doc["stage"]["blocks_reused"] >= 1 and doc["stage"]["blocks_copied"] >= 1
        assert not staged.exists()
        r = airlock("model", "verify", "m", root=root)
        assert r.returncode == 0, r.stdout + r.stderr


def test_build_killed_on_the_stick_is_rebuilt(keys: Keys, versions: Versions, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "full.yml", [{"name": "m", "version": "1.0.0",
                                               "path": str(versions.src["1.0.0"])}], sequence=1)
    args = ("bundle", "build", str(spec), "-o", "OUT", "--signer", keys.fpr["signer"],
            "--gnupghome", str(keys.home))
    with fat32_stick(tmp_path) as stick:
        usb = stick.mount(rw=True)
        out = usb / "b"
        cmd = [a if a != "OUT" else str(out) for a in args]
        r = airlock(*cmd, AIRLOCK_FAULT="bundle-build-mid-copy")
        assert r.returncode == -9
        assert not (out / "MANIFEST.json").exists()  # a cut-short bundle never verifies
        r = airlock("bundle", "verify", str(out), "--trust", keys.fpr["signer"], "--keyring",
                    str(keys.keyring("signer")))
        assert r.returncode != 0
        r = airlock(*cmd)
        assert r.returncode == 0, r.stderr
        assert [p.name for p in usb.iterdir() if p.name.startswith(".")] == []  # no temp dir left
        assert ".airlock-building" not in {p.name for p in out.iterdir()}
        r = airlock("bundle", "verify", str(out), "--trust", keys.fpr["signer"], "--keyring",
                    str(keys.keyring("signer")))
        assert r.returncode == 0, r.stderr
