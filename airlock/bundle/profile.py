"""The appliance profile: which bundles this appliance accepts (a bundle's signed ``compatible``).

The appliance knows its profile: ``/etc/airlock/appliance.yaml`` (``compatible: NAME``), written when
the appliance is set up (``airlock bundle profile --set NAME``; ``$AIRLOCK_PROFILE_FILE`` names
another file). Every verify / stage / unpack / install / preflight checks a bundle against it by
default; an explicit ``--compatible`` must agree with it; only ``--ignore-profile`` (``ANY_PROFILE``)
skips the check, and install-bundle writes that override to the repository's audit log."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from airlock import names, settings
from airlock.errors import CompatibilityError
from airlock.fsutil import atomic_write_bytes

SYSTEM_FILE = Path("/etc/airlock/appliance.yaml")
ANY_PROFILE = "*"  # --ignore-profile: no profile check (explicit, audited by install-bundle)


@dataclass(frozen=True)
class Recorded:
    compatible: str
    source: Path


def system_file() -> Path:
    return settings.profile_file() or SYSTEM_FILE


def _read(path: Path) -> Recorded | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise CompatibilityError(f"{path}: cannot read the appliance profile ({exc})", path=str(path),
                                 rule="profile-file") from exc
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CompatibilityError(f"{path}: not YAML ({type(exc).__name__})", path=str(path),
                                 rule="profile-file") from exc
    value = doc.get("compatible") if isinstance(doc, dict) else None
    if not names.is_profile(value):
        raise CompatibilityError(f"{path}: needs 'compatible: NAME' (letters, digits, '.', '_', ':', '+', "
                                 "'-')", path=str(path), rule="profile-file")
    return Recorded(str(value), path)


def recorded_profile() -> Recorded | None:
    """This appliance's profile, or None when none was recorded."""
    return _read(system_file())


def resolve(compatible: str | None) -> str | None:
    """The profile a bundle must match: ``ANY_PROFILE`` (check skipped), the explicit value (which must
    agree with a recorded profile), the recorded profile, or None when none is recorded or given."""
    if compatible == ANY_PROFILE:
        return ANY_PROFILE
    rec = recorded_profile()
    if compatible is not None and rec is not None and compatible != rec.compatible:
        raise CompatibilityError(f"--compatible {compatible!r} is not this appliance's profile "
                                 f"{rec.compatible!r} ({rec.source}); --ignore-profile overrides (audited)",
                                 path=str(rec.source), rule="profile-mismatch")
    if compatible is not None:
        return compatible
    return rec.compatible if rec is not None else None


def write_profile(compatible: str, path: Path | None = None) -> Path:
    """Record this appliance's profile (atomically, mode 0644)."""
    if not names.is_profile(compatible):
        raise CompatibilityError(f"{compatible!r}: not a profile name (letters, digits, '.', '_', ':', '+', "
                                 "'-', at most 128)", rule="profile-file")
    target = path or system_file()
    atomic_write_bytes(target, yaml.safe_dump({"compatible": compatible}).encode(), 0o644)
    return target
