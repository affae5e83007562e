"""Where the bundle is: a bundle directory, a packed ``.tar`` (accepted everywhere a directory is),
or a wrong path explained (the stick's root lists the bundles found there; MANIFEST.json itself
says to pass its directory)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from airlock.bundle.manifest import MANIFEST_NAME, SIGNATURE_NAME
from airlock.errors import IntegrityError, ManifestError

if TYPE_CHECKING:
    from airlock.bundle.signing import Trust
    from airlock.bundle.verify import SignedManifest

Kind = Literal["dir", "archive"]


def bundles_in(where: Path) -> list[str]:
    """Names of the bundles directly in ``where``: directories holding MANIFEST.json, and .tar files."""
    found = []
    try:
        children = sorted(where.iterdir())
    except OSError:
        return []
    for child in children:
        if child.is_dir() and (child / MANIFEST_NAME).is_file():
            found.append(child.name + "/")
        elif child.suffix == ".tar" and child.is_file():
            found.append(child.name)
    return found


def bundle_kind(path: Path) -> Kind:
    """``dir`` or ``archive``; a path that is neither raises an error saying what to pass instead."""
    path = Path(path)
    if path.name in (MANIFEST_NAME, SIGNATURE_NAME) and path.is_file():
        raise ManifestError(f"{path}: this is the bundle's manifest; pass its directory: {path.parent}",
                            path=str(path), rule="wrong-path")
    if path.is_file():
        return "archive"
    if path.is_dir():
        if (path / MANIFEST_NAME).exists() or (path / MANIFEST_NAME).is_symlink():
            return "dir"
        found = bundles_in(path)
        hint = (f"bundles found here: {', '.join(found)}; pass one of them" if found
                else "no bundle found here (a bundle is a directory holding MANIFEST.json, or a .tar)")
        raise IntegrityError(f"{path}: not a bundle (no {MANIFEST_NAME}); {hint}", path=str(path),
                             rule="missing")
    raise IntegrityError(f"{path}: no such bundle directory or archive", path=str(path), rule="missing")


def signed_manifest(path: Path, trust: Trust) -> SignedManifest:
    """The signature-checked manifest of a bundle directory or packed archive (no payload read)."""
    from airlock.bundle.pack import read_archive_manifest
    from airlock.bundle.verify import load_signed_manifest

    if bundle_kind(path) == "archive":
        return read_archive_manifest(path, trust)
    return load_signed_manifest(path, trust)
