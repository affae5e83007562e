"""The credential for Triton's control plane (model load/unload, repository index, shared memory,
statistics, trace, logging), enforced by Triton's restricted APIs:

    tritonserver --http-restricted-api=<apis>:airlock-control-key=<key>
                 --grpc-restricted-protocol=<apis>:airlock-control-key=<key>

A request to a restricted API without the header (HTTP) or metadata entry (GRPC) is refused by
Triton itself; health, metadata, model config and inference stay open (load balancers and clients).
The key lives in a file of mode 0600 or stricter (``airlock serve key``), never on Airlock's command
lines; tritonserver only takes it as an argument, so on a shared host mount /proc with
``hidepid=2`` (docs/serving.md, "Authenticated control plane").
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from pathlib import Path

from airlock.serving.errors import ServingError

HEADER = "airlock-control-key"
GRPC_PREFIX = "triton-grpc-protocol-"  # Triton reads restricted GRPC keys from this metadata prefix
RESTRICTED_APIS = ("model-repository", "shared-memory", "statistics", "trace", "logging")
_KEY = re.compile(r"^[A-Za-z0-9_-]{32,256}$")


def _refuse(path: Path, why: str) -> ServingError:
    return ServingError(f"{path}: {why}", path=str(path), rule="control-key")


def read_control_key(path: Path) -> str:
    """The key in ``path``: refused unless a regular file of mode 0600 or stricter holding 32-256
    characters of [A-Za-z0-9_-] (ServingError, rule ``control-key``, exit 50)."""
    try:
        st = path.lstat()
        if not stat.S_ISREG(st.st_mode):
            raise _refuse(path, "control key is not a regular file")
        if st.st_mode & 0o077:
            raise _refuse(path, f"control key file is readable by group/others (mode "
                                f"{stat.S_IMODE(st.st_mode):o}); chmod 0600 it")
        key = path.read_text().strip()
    except OSError as exc:
        raise _refuse(path, f"cannot read the control key ({exc.strerror})") from exc
    if not _KEY.match(key):
        raise _refuse(path, "not a control key (32-256 characters of A-Z a-z 0-9 _ -)")
    return key


def make_control_key(path: Path) -> bool:
    """Create ``path`` (mode 0600) holding a new random key unless it exists; True if created."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        read_control_key(path)
        return False
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")
    return True


def server_args(key: str) -> list[str]:
    """tritonserver arguments restricting the control plane to holders of ``key``."""
    apis = ",".join(RESTRICTED_APIS)
    return [f"--http-restricted-api={apis}:{HEADER}={key}",
            f"--grpc-restricted-protocol={apis}:{HEADER}={key}"]
