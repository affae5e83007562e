"""Strict rules for the untrusted names that become path components, catalog keys or file names.

One place for them: the manifest parser (defence in depth even for signed content), the repository
layout and staging all use these. Patterns are matched in full (``re.fullmatch``: a ``$`` would let a
trailing newline through)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

SEMVER = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?"
)
MAX_VERSION = 128
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
BUNDLE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
PROFILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}")
RESERVED_MODELS = frozenset({"update_packages", "metadata", "current"})
# Prefixes of the work directories a write builds beside its final directory (renamed into place when
# complete; a killed write leaves one behind, which crash recovery removes). Spelled here, the
# low-level module the delta package can import; ``airlock.repo.layout`` owns the repository's use.
VERSION_STAGING_PREFIX = ".staging-"  # a version built by install/update/rollback
DELTA_STAGING_PREFIX = ".delta-staging-"  # a delta applied (airlock.delta.apply)
CHAIN_STAGING_PREFIX = ".delta-chain-"  # a chain of deltas applied (airlock.delta.chain)

NAME_MAX = 255  # bytes in one path component (ext4, xfs, FAT32 long names)
PATH_MAX = 4096  # bytes in a whole path including the terminating NUL (Linux)
# Airlock appends these to a payload's last component on the stick or in the staging directory
LONGEST_SUFFIX = max(len(".part999"), len(".airlock-partial"))
MAX_RELPATH_BYTES = 1024  # a payload name relative to the bundle root (leaves room for any root)

# Unicode categories refused in file names: control (incl. C1, newline, ESC), format (bidi overrides,
# zero-width characters, BOM), surrogates, private use, line and paragraph separators
_BAD_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})


def is_model_name(name: object) -> bool:
    return (isinstance(name, str) and MODEL_NAME.fullmatch(name) is not None
            and name not in RESERVED_MODELS)


def is_version(text: object) -> bool:
    return isinstance(text, str) and len(text) <= MAX_VERSION and SEMVER.fullmatch(text) is not None


def is_bundle_id(name: object) -> bool:
    return isinstance(name, str) and BUNDLE_ID.fullmatch(name) is not None


def is_profile(name: object) -> bool:
    return isinstance(name, str) and PROFILE.fullmatch(name) is not None


def bad_char(text: str) -> str | None:
    """The first character not allowed in a file name (as ``U+XXXX``), or None."""
    for ch in text:
        if unicodedata.category(ch) in _BAD_CATEGORIES:
            return f"U+{ord(ch):04X}"
    return None


def fold(name: str) -> str:
    """The key under which two names collide on some target: NFC/NFD twins (macOS, a stick written
    there), case-only twins (FAT32, exFAT, NTFS, APFS)."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", name).casefold())


def first_collision(names: Iterable[str]) -> tuple[str, str] | None:
    """Two distinct names that fold to the same key, or None."""
    seen: dict[str, str] = {}
    for name in names:
        key = fold(name)
        other = seen.setdefault(key, name)
        if other != name:
            return other, name
    return None
