"""The engine's defaults and every environment variable it reads, in one place.

Fronts (CLI options, Ansible modules, role defaults) take their defaults from here; tests compare
the copies that cannot import it (role ``defaults/main.yml``, module argument specs, the stdlib-only
``provision/preflight.py``) with these values. Variables are read when asked for, not at import,
so a test or a caller that sets one sees it take effect. Standard library only.

Not here: the environment a subprocess is given (Triton, restic, ansible-runner, the demo copy and
filter ``os.environ`` for their children) and a key provider's secret, whose variable name its
configuration chooses (``crypto/providers/base.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

# The repository root: ``<root>/model_repo`` (catalog, versions, kept deltas, staged bundles). Not the
# runtime's home (``/var/lib/airlock``: the service user's home, Triton's generated repository and
# work dir, the warm-tier mount), which the roles own.
DEFAULT_ROOT = Path("/srv/airlock")
# Seconds a writer (or verify's shared lock) waits for the repository lock: an install of a large
# model holds it for minutes, so a queued operation waits that long rather than failing spuriously.
LOCK_TIMEOUT = 600.0
KEYS_CONFIG = Path("/etc/airlock/keys.yaml")

ROOT_ENV = "AIRLOCK_ROOT"
LOCK_TIMEOUT_ENV = "AIRLOCK_LOCK_TIMEOUT"
KEYS_CONFIG_ENV = "AIRLOCK_KEYS_CONFIG"
PROFILE_FILE_ENV = "AIRLOCK_PROFILE_FILE"
CACHE_ENV = "AIRLOCK_CACHE"
FAULT_ENV = "AIRLOCK_FAULT"
PAUSE_ENV = "AIRLOCK_PAUSE"
SKIP_PREFLIGHT_ENV = "AIRLOCK_TEST_SKIP_PREFLIGHT"  # tests only: reach a real ENOSPC mid-write
GPG_PASSPHRASE_FILE_ENV = "AIRLOCK_GPG_PASSPHRASE_FILE"
ANSIBLE_DIR_ENV = "AIRLOCK_ANSIBLE_DIR"
RESTIC_ENV = "AIRLOCK_RESTIC"
RUNNER_DIR_ENV = "AIRLOCK_RUNNER_DIR"
GNUPGHOME_ENV = "GNUPGHOME"  # GnuPG's own
SOURCE_DATE_EPOCH_ENV = "SOURCE_DATE_EPOCH"  # reproducible builds' convention


def _get(name: str) -> str | None:
    return os.environ.get(name) or None


def root() -> Path:
    """``$AIRLOCK_ROOT``, else ``DEFAULT_ROOT``."""
    return Path(_get(ROOT_ENV) or DEFAULT_ROOT)


def lock_timeout() -> float:
    """``$AIRLOCK_LOCK_TIMEOUT`` (seconds), else ``LOCK_TIMEOUT``."""
    raw = _get(LOCK_TIMEOUT_ENV)
    return float(raw) if raw is not None else LOCK_TIMEOUT


def keys_config() -> Path:
    """The key provider config: ``$AIRLOCK_KEYS_CONFIG``, else ``KEYS_CONFIG``."""
    return Path(_get(KEYS_CONFIG_ENV) or KEYS_CONFIG)


def profile_file() -> Path | None:
    """``$AIRLOCK_PROFILE_FILE`` when set (a test's or a second appliance's recorded profile)."""
    return _path(PROFILE_FILE_ENV)


def cache_dir() -> Path | None:
    """``$AIRLOCK_CACHE`` when set: where model fixtures are built."""
    return _path(CACHE_ENV)


def faults() -> list[str]:
    """Fault points named in ``$AIRLOCK_FAULT`` (crash-safety tests kill -9 the process there)."""
    raw = _get(FAULT_ENV)
    return raw.split(",") if raw else []


def pause() -> tuple[str, str] | None:
    """``$AIRLOCK_PAUSE=<point>:<file>`` as ``(point, file)``."""
    raw = _get(PAUSE_ENV)
    if not raw or ":" not in raw:
        return None
    point, flag = raw.split(":", 1)
    return point, flag


def _path(name: str) -> Path | None:
    raw = _get(name)
    return Path(raw) if raw else None


def gnupghome() -> Path | None:
    """``$GNUPGHOME`` when set (else GnuPG's default home)."""
    return _path(GNUPGHOME_ENV)


def gpg_passphrase_file() -> Path | None:
    """``$AIRLOCK_GPG_PASSPHRASE_FILE``: the file holding a signing key's passphrase."""
    return _path(GPG_PASSPHRASE_FILE_ENV)


def source_date_epoch() -> int | None:
    """``$SOURCE_DATE_EPOCH`` (seconds): the time written into built bundles and apt repositories."""
    raw = _get(SOURCE_DATE_EPOCH_ENV)
    return int(raw) if raw else None


def ansible_dir() -> Path | None:
    """``$AIRLOCK_ANSIBLE_DIR``: the Ansible content (playbooks/, roles/) fleet runs use."""
    return _path(ANSIBLE_DIR_ENV)


def runner_dir() -> Path | None:
    """``$AIRLOCK_RUNNER_DIR``: ansible-runner's private data directory."""
    return _path(RUNNER_DIR_ENV)


def restic() -> str | None:
    """``$AIRLOCK_RESTIC``: the restic binary to run (else the one on PATH)."""
    return _get(RESTIC_ENV)


def skip_space_preflight() -> bool:
    """Tests only: skip the free-space preflight so a write reaches a real ENOSPC."""
    return os.environ.get(SKIP_PREFLIGHT_ENV) == "1"
