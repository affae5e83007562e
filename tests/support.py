"""Shared test helpers, importable from every test package (fixtures live in conftest.py files):

- tools and privileges a test needs (in CI, CI=true, a missing one fails, never skips);
- ``tree_state``: the one snapshot of a tree (to prove an operation changed no byte, mode or owner),
  and ``file_hashes``: the content of a tree's files (to compare two trees);
- the one way to run Ansible from a test: ``ansible_env`` (the repository's ansible.cfg, private temp
  and control-path dirs, no injected fault) and ``run_ansible_tool`` (``ansible``,
  ``ansible-playbook``, ... of this checkout's venv)."""

from __future__ import annotations

import ctypes
import mmap
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from airlock.hashing import sha256_file, tree_files

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REPO = Path(__file__).resolve().parents[1]
VENV_BIN = REPO / ".venv" / "bin"


def require_tool(tool: str, install: str) -> str:
    """Return the path of ``tool``; skip locally (with the install command) and fail in CI."""
    path = shutil.which(tool)
    if path:
        return path
    message = f"{tool} not found; install it with: {install}"
    if IN_CI:
        pytest.fail(f"CI must not skip: {message}")
    pytest.skip(message)


def require_root(reason: str) -> None:
    if os.geteuid() == 0:
        return
    message = f"needs root: {reason}; run the suite as root (sudo make test)"
    if IN_CI:
        pytest.fail(f"CI must not skip: {message}")
    pytest.skip(message)


def require_triton() -> None:
    """The nvidia-pytriton wheel (tritonserver) and Debian's python3-numpy its python backend needs."""
    import importlib.util

    if importlib.util.find_spec("pytriton") is None or importlib.util.find_spec("tritonclient") is None:
        _missing("nvidia-pytriton/tritonclient missing; install with: .venv/bin/pip install -e '.[test]'")
    if not Path("/usr/lib/python3/dist-packages/numpy").is_dir():
        _missing("Debian python3-numpy missing (the python backend stub needs it); "
                 "apt-get install python3-numpy")


def _missing(message: str) -> None:
    if IN_CI:
        pytest.fail(f"CI must not skip: {message}")
    pytest.skip(message)


# --- snapshots -------------------------------------------------------------------------------------

TreeState = dict[str, tuple[Any, ...]]


def tree_state(root: Path) -> TreeState:
    """Every path under ``root`` (itself included, as "."): type, content hash and size or link
    target, mode, owner and group. Equal before and after = not one byte, mode or owner changed.
    A missing root is the empty state."""
    out: TreeState = {}
    if not os.path.lexists(root):
        return out
    for dirpath, dirs, files in os.walk(root):
        for p in [Path(dirpath), *(Path(dirpath) / n for n in [*dirs, *files])]:
            rel = p.relative_to(root).as_posix()
            if rel in out:
                continue
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                what: tuple[Any, ...] = ("link", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                what = ("file", sha256_file(p), st.st_size)
            else:
                what = ("dir",)
            out[rel] = (*what, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
    return out


def file_hashes(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every regular file under ``root`` (two trees with equal contents
    compare equal whatever their modes and owners)."""
    return {rel: sha256_file(root / rel) for rel in tree_files(root)}


# --- Ansible ---------------------------------------------------------------------------------------


def ansible_bin(name: str) -> str:
    """``ansible``, ``ansible-playbook``, ... of this checkout's venv."""
    return str(VENV_BIN / name)


def ansible_playbook() -> str:
    """``ansible-playbook`` beside the running interpreter (this venv), else the one on PATH."""
    beside = Path(sys.executable).with_name("ansible-playbook")
    if beside.is_file():
        return str(beside)
    return require_tool("ansible-playbook", ".venv/bin/pip install -e . (ansible-core)")


def ansible_env(tmp: Path | None = None, **extra: str) -> dict[str, str]:
    """Environment for ansible-* subprocesses: the repository's ansible.cfg (collection and roles from
    the checkout), no colour, the engine importable, no fault injected unless ``extra`` sets one;
    with ``tmp``, private local-temp and SSH control-path directories under it."""
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_RETRY_FILES_ENABLED": "0", "PYTHONPATH": str(REPO)}
    env.pop("AIRLOCK_FAULT", None)
    if tmp is not None:
        env["ANSIBLE_LOCAL_TEMP"] = str(tmp / "ansible-tmp")
        env["ANSIBLE_SSH_CONTROL_PATH_DIR"] = str(tmp / "cp")
    env.update(extra)
    return env


def run_ansible_tool(tool: str, *args: str, tmp: Path | None = None, env: dict[str, str] | None = None,
                     cwd: Path = REPO, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run ``tool`` (``ansible``, ``ansible-playbook``) from the venv with ``ansible_env``."""
    return subprocess.run([ansible_bin(tool), *args], env={**ansible_env(tmp), **(env or {})},
                          capture_output=True, text=True, timeout=timeout, cwd=cwd)


def build_wheelhouse(out: Path) -> Path:
    """The connected side's step: Airlock's wheel (built here without any index) plus its dependencies
    as wheels (``pip download`` from the package sources pip is configured with)."""
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(out),
                    str(REPO)], check=True, capture_output=True, timeout=300)
    wheel = next(out.glob("airlock-*.whl"))
    subprocess.run([*pip, "download", "--only-binary=:all:", "-d", str(out), str(wheel)], check=True,
                   capture_output=True, timeout=600)
    return out


def pids_running(program: bytes, naming: str) -> list[int]:
    """PIDs of processes whose executable name ends with ``program`` and one of whose arguments is
    ``naming`` (a test's own path), alone or as ``--option=naming``: what a test started and must
    stop, never anyone else's."""
    exact = naming.encode()
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = proc.joinpath("cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(program) and any(a == exact or a.endswith(b"=" + exact)
                                                     for a in argv[1:]):
            pids.append(int(proc.name))
    return pids


def orphans_under(program: bytes, prefix: str) -> list[int]:
    """PIDs of orphaned processes (parent gone, re-parented to init) whose executable name ends with
    ``program`` and one of whose arguments lies under ``prefix``: e.g. the python-backend stubs a
    tritonserver killed with SIGKILL leaves behind, holding their shared-memory regions."""
    under = prefix.rstrip("/").encode() + b"/"
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = proc.joinpath("cmdline").read_bytes().split(b"\0")
            ppid = int(proc.joinpath("stat").read_bytes().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == 1 and argv and argv[0].endswith(program) and any(a.startswith(under) for a in argv[1:]):
            pids.append(int(proc.name))
    return pids


def flip_byte(path: Path, offset: int, mask: int = 0xFF) -> None:
    """Tamper one byte in place (XOR ``mask``) as root would: the file's mode is left as it was."""
    mode = stat.S_IMODE(path.stat().st_mode)
    path.chmod(mode | stat.S_IWUSR)
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ mask]))
    path.chmod(mode)


def resident_bytes(path: Path) -> int:
    """Bytes of ``path`` held in the page cache now (mincore(2) over a private mapping that is never
    written, so its pages are the file's cache pages). Read it before reading the file's contents."""
    size = path.stat().st_size
    if size == 0:
        return 0
    page = mmap.PAGESIZE
    vec = (ctypes.c_ubyte * (-(-size // page)))()
    libc = ctypes.CDLL(None, use_errno=True)
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_COPY) as mm:
        view = (ctypes.c_char * size).from_buffer(mm)
        try:
            if libc.mincore(ctypes.c_void_p(ctypes.addressof(view)), ctypes.c_size_t(size), vec) != 0:
                raise OSError(ctypes.get_errno(), f"mincore {path}")
        finally:
            del view
    return min(size, sum(page for v in vec if v & 1))
