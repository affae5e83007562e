"""The field engineer's tools for tests: a real FAT32 stick (an image made by ``mkfs.vfat -F 32``,
mounted through the FUSE driver ``fusefat``, so no kernel module is needed), a spec writer, and the
real CLI in a subprocess that can be paused at a named point (``AIRLOCK_PAUSE``) to pull the stick
or press Ctrl-C exactly there."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.support import require_root, require_tool

REPO_ROOT = Path(__file__).resolve().parents[2]


def airlock_env(root: Path | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("AIRLOCK_FAULT", "AIRLOCK_PAUSE")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    env["COLUMNS"] = "200"
    if root is not None:
        env["AIRLOCK_ROOT"] = str(root)
    env.update(extra)
    return env


def airlock(*args: str, root: Path | None = None, timeout: float = 600, **env: str
            ) -> subprocess.CompletedProcess[str]:
    """The real CLI; asserts the rule every field command keeps: no traceback on stderr."""
    r = subprocess.run([sys.executable, "-c", "from airlock.cli import main; main()", *args],
                       env=airlock_env(root, **env), capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in r.stderr, r.stderr
    return r


@dataclass
class Paused:
    """A CLI run stopped at a fault point (``AIRLOCK_PAUSE``): do something, then let it go on."""

    proc: subprocess.Popen[str]
    flag: Path

    def interrupt(self) -> None:
        self.proc.send_signal(signal.SIGINT)

    def resume(self) -> None:
        self.flag.unlink(missing_ok=True)

    def finish(self, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        out, err = self.proc.communicate(timeout=timeout)
        assert "Traceback" not in err, err
        return subprocess.CompletedProcess(self.proc.args, self.proc.returncode, out, err)


@contextmanager
def paused_at(point: str, *args: str, root: Path | None = None, tmp: Path) -> Iterator[Paused]:
    flag = tmp / f"pause-{point}-{time.monotonic_ns()}"
    proc = subprocess.Popen([sys.executable, "-c", "from airlock.cli import main; main()", *args],
                            env=airlock_env(root, AIRLOCK_PAUSE=f"{point}:{flag}"), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not flag.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            out, err = proc.communicate()
            raise AssertionError(f"never reached {point} (rc {proc.returncode}): {out}{err}")
        time.sleep(0.05)
    try:
        yield Paused(proc, flag)
    finally:
        flag.unlink(missing_ok=True)
        if proc.poll() is None:
            proc.wait(timeout=120)


@dataclass
class Stick:
    """A FAT32 USB stick: an image file and a fusefat mount. ``pull()`` kills the FUSE process,
    which is what the kernel sees when a stick is pulled out: ENOTCONN on every open file."""

    image: Path
    mnt: Path
    proc: subprocess.Popen[bytes] | None = None
    log: list[str] = field(default_factory=list)

    def mount(self, *, rw: bool) -> Path:
        opts = ["-o", "rw+" if rw else "ro"]  # fusefat refuses to guess
        self.proc = subprocess.Popen(["fusefat", "-f", *opts, str(self.image), str(self.mnt)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not os.path.ismount(self.mnt):
            assert self.proc.poll() is None and time.monotonic() < deadline, "fusefat did not mount"
            time.sleep(0.05)
        return self.mnt

    def unmount(self) -> None:
        if os.path.ismount(self.mnt) or self.proc is not None:
            subprocess.run(["umount", "-l", str(self.mnt)], check=False, capture_output=True)
        if self.proc is not None:
            self.proc.wait(timeout=30)
            self.proc = None

    def pull(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=30)

    def replug(self, *, rw: bool = False) -> Path:
        subprocess.run(["umount", "-l", str(self.mnt)], check=False, capture_output=True)
        self.proc = None
        return self.mount(rw=rw)

    def digest(self) -> str:
        h = hashlib.sha256()
        with open(self.image, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()


@contextmanager
def fat32_stick(tmp: Path, size: str = "96M") -> Iterator[Stick]:
    require_root("mounting a FUSE file system")
    require_tool("mkfs.vfat", "apt-get install dosfstools")
    require_tool("fusefat", "apt-get install fusefat")
    image, mnt = tmp / "stick.img", tmp / "media-usb"
    mnt.mkdir()
    subprocess.run(["truncate", "-s", size, str(image)], check=True)
    subprocess.run(["mkfs.vfat", "-F", "32", "-n", "AIRLOCK", str(image)], check=True, capture_output=True)
    stick = Stick(image, mnt)
    try:
        yield stick
    finally:
        stick.unmount()


def write_spec(path: Path, models: list[dict[str, object]], *, sequence: int, block_size: int = 65536,
               compatible: str = "appliance-test") -> Path:
    path.write_text(yaml.safe_dump({"compatible": compatible, "sequence": sequence, "block_size": block_size,
                                    "models": models}))
    return path
