"""Error classes; each maps to a documented CLI exit code (see README, "Exit codes")."""

from __future__ import annotations


class AirlockError(Exception):
    """Base class. ``rule`` names the violated rule, ``path`` the file concerned."""

    exit_code = 1
    rule = "error"

    def __init__(self, message: str, *, path: str | None = None, rule: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        if rule is not None:
            self.rule = rule

    def as_dict(self) -> dict[str, object]:
        return {"error": type(self).__name__, "rule": self.rule, "path": self.path, "message": str(self),
                "exit_code": self.exit_code}


class SignatureError(AirlockError):
    """No signature, bad signature, unknown / untrusted / expired / revoked signer."""

    exit_code = 10
    rule = "signature"


class ManifestError(AirlockError):
    """Manifest cannot be parsed or violates the schema."""

    exit_code = 11
    rule = "manifest"


class UnsafePathError(AirlockError):
    """Traversal, absolute path, symlink, device file, duplicate or non-UTF-8 name."""

    exit_code = 12
    rule = "path"


class IntegrityError(AirlockError):
    """Missing file, size, hash or block-hash mismatch."""

    exit_code = 13
    rule = "integrity"


class CompatibilityError(AirlockError):
    """Bundle built for another appliance profile."""

    exit_code = 14
    rule = "compatible"


class DowngradeError(AirlockError):
    """Bundle sequence lower than the installed one and not a signed rollback."""

    exit_code = 15
    rule = "downgrade"


class DeltaSourceError(AirlockError):
    """The source model does not match what the delta was made against."""

    exit_code = 20
    rule = "delta-source"


class DeltaFormatError(AirlockError):
    """A corrupt, truncated or foreign delta file."""

    exit_code = 21
    rule = "delta-format"


class TensorFormatError(AirlockError):
    """A malformed safetensors file."""

    exit_code = 22
    rule = "safetensors"


class RepositoryError(AirlockError):
    """Model repository state conflict (unknown version, content differs, ...)."""

    exit_code = 30
    rule = "repository"


class DiskSpaceError(AirlockError):
    """Not enough free space for an operation (preflight)."""

    exit_code = 31
    rule = "disk-space"


class LockBusyError(AirlockError):
    """Another operation holds the repository lock."""

    exit_code = 32
    rule = "lock"


class AuditError(AirlockError):
    """The audit chain is broken (edited, deleted or reordered record)."""

    exit_code = 33
    rule = "audit"


class FleetError(AirlockError):
    """A playbook run failed on one or more hosts."""

    exit_code = 40
    rule = "fleet"
