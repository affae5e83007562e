"""What a bundle needs from its host, read from its manifest, as preflight ``Requirements``.

Models declare host needs in their spec ``dependencies`` (signed into the manifest):
``nvidia-driver: ">=550.54"``, ``gpu-memory-mib: "16000"``, ``gpu: required``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from airlock.bundle.manifest import MANIFEST_NAME
from airlock.errors import ManifestError
from airlock.provision.preflight import Requirements, version_tuple
from airlock.repo.layout import DEFAULT_ROOT as LAYOUT_ROOT

if TYPE_CHECKING:
    from airlock.bundle.signing import Trust

DEFAULT_ROOT = str(LAYOUT_ROOT)


def requirements_from_bundle(bundle_dir: Path, trust: Trust, *, root: str = DEFAULT_ROOT,
                             tiers: dict[str, str] | None = None,
                             base: Requirements | None = None) -> Requirements:
    """Size the hot tier (``root``: the staged copy plus the installed model versions) and collect the
    models' GPU/driver needs. The manifest is read as ``verify`` reads it: through the safe reader (no
    symlink, no FIFO, size-limited), its signature checked against ``trust`` before it is parsed, and
    its profile against this appliance's recorded one (exit 14)."""
    from airlock.bundle.locate import signed_manifest  # a bundle directory or a packed .tar
    from airlock.bundle.verify import check_policy

    m = signed_manifest(Path(bundle_dir), trust).manifest
    check_policy(m, compatible=None, installed_sequence=None)  # this appliance's recorded profile
    path = Path(bundle_dir) / MANIFEST_NAME
    req = base or Requirements()
    installed = sum(int(f.get("size", 0)) for model in m.models for f in model.target_files.values())
    needed = m.total_bytes + installed
    req.tiers = {"hot": (root, needed)}
    for name, where in (tiers or {}).items():
        req.tiers.setdefault(name, (where, 0))
    drivers = []
    for model in m.models:
        deps = model.dependencies
        if "nvidia-driver" in deps:
            drivers.append(deps["nvidia-driver"].lstrip(">= "))
        if "gpu-memory-mib" in deps:
            try:
                req.min_gpu_memory_mib = max(req.min_gpu_memory_mib, int(deps["gpu-memory-mib"]))
            except ValueError as exc:
                raise ManifestError(f"{path}: model {model.name}: gpu-memory-mib is not a number",
                                    path=str(path), rule="manifest") from exc
        if deps.get("gpu") == "required":
            req.gpu_required = True
    if drivers:
        req.min_driver_version = max(drivers, key=version_tuple)
    req.not_before = m.created
    return req
