"""The field journey on a real FAT32 stick (mkfs.vfat -F 32 + fusefat), timed: build a full and a
delta bundle of a synthetic DeepSeek-shaped model onto the stick, then with the stick read-only:
verify, preflight, install-bundle, delta install-bundle, model verify; and the stick pulled
mid-stage, replugged, resumed. Run as root: ``python -m benchmarks.fat32_journey --size 225M``.
Prints one JSON document of wall times (seconds)."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from airlock.fixtures.__main__ import parse_size
from airlock.fixtures.synthetic import generate_synthetic, make_variant
from benchmarks.signer import throwaway_signer
from tests.bundle.field import Stick, airlock, paused_at, write_spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=parse_size, default=parse_size("225M"))
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fat32-journey-", dir=args.work))
    times: dict[str, float] = {"size_bytes": args.size}

    def timed(name: str, *cmd: str, root: Path | None = None) -> None:
        t = time.monotonic()
        r = airlock(*cmd, root=root, timeout=3600)
        times[name] = round(time.monotonic() - t, 2)
        assert r.returncode == 0, (name, r.stdout, r.stderr)

    fpr, home, ring = throwaway_signer(work)
    old = generate_synthetic(work / "m" / "1.0.0", size_bytes=args.size, shards=5)
    new = make_variant(old, work / "m" / "1.1.0", "partial")
    full = write_spec(work / "full.yml", [{"name": "dsv3", "version": "1.0.0", "path": str(old)}], sequence=1)
    delta = write_spec(work / "delta.yml", [{"name": "dsv3", "version": "1.1.0", "from_version": "1.0.0",
                                             "delta": {"old": str(old), "new": str(new)}}], sequence=2)
    image, mnt = work / "stick.img", work / "media-usb"
    mnt.mkdir()
    subprocess.run(["truncate", "-s", str(int(args.size * 1.6) + (256 << 20)), str(image)], check=True)
    subprocess.run(["mkfs.vfat", "-F", "32", str(image)], check=True, capture_output=True)
    stick = Stick(image, mnt)
    trust = ("--trust", fpr, "--keyring", str(ring))
    root = work / "appliance"
    try:
        usb = stick.mount(rw=True)
        sign = ("--signer", fpr, "--gnupghome", str(home))
        # the small delta bundle first: fusefat cannot add entries to a directory created past the
        # first 2 GiB of the image (EPERM), a limit of the FUSE driver, not of FAT32 or the kernel
        timed("build_delta_onto_stick", "bundle", "build", str(delta), "-o", str(usb / "delta"), *sign)
        timed("build_full_onto_stick", "bundle", "build", str(full), "-o", str(usb / "full"), *sign)
        stick.unmount()
        usb = stick.mount(rw=False)
        timed("verify_full_on_stick", "bundle", "verify", str(usb / "full"), *trust)
        timed("preflight", "preflight", "--bundle", str(usb / "full"), *trust, "--root", str(root),
              "--allow-fail",
              "gpu", "--allow-fail", "ram", "--allow-fail", "cpu")
        timed("install_bundle_full", "model", "install-bundle", str(usb / "full"), *trust, root=root)
        timed("install_bundle_delta", "model", "install-bundle", str(usb / "delta"), *trust, root=root)
        timed("model_verify", "model", "verify", "dsv3", root=root)
        # pulled mid-stage into a second appliance, replugged, resumed
        root2 = work / "appliance2"
        t = time.monotonic()
        with paused_at("stage-mid-copy", "model", "install-bundle", str(usb / "full"), *trust, root=root2,
                       tmp=work) as run:
            stick.pull()
            run.resume()
        assert run.finish().returncode == 36
        times["pulled_mid_stage_exit"] = round(time.monotonic() - t, 2)
        stick.replug()
        timed("resume_after_replug", "model", "install-bundle", str(usb / "full"), *trust, root=root2)
    finally:
        stick.unmount()
        print(json.dumps(times, indent=2))
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
