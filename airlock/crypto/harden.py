"""Process hardening for every entry point that can hold a key (the ``airlock`` CLI callback, the
Ansible modules' shared module_utils): no core files, and not dumpable (no ptrace or
/proc/<pid>/mem access by other processes of the same user), before any data key is unwrapped."""

from __future__ import annotations

import contextlib
import ctypes
import resource

PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3


def harden_process() -> None:
    """RLIMIT_CORE 0 (soft and hard) and PR_SET_DUMPABLE 0. Idempotent; never raises."""
    with contextlib.suppress(OSError, ValueError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    with contextlib.suppress(OSError, AttributeError):  # non-Linux: no prctl
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)


def hardened() -> bool:
    """True when this process can neither dump core nor be dumped (for tests and preflight)."""
    try:
        dumpable = ctypes.CDLL(None, use_errno=True).prctl(PR_GET_DUMPABLE, 0, 0, 0, 0)
    except (OSError, AttributeError):
        dumpable = 0
    return resource.getrlimit(resource.RLIMIT_CORE) == (0, 0) and dumpable == 0
