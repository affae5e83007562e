"""Signed bundles: build, sign, verify, pack/unpack and stage (format: docs/bundle-format.md)."""

from airlock.bundle.build import build_bundle, write_payload
from airlock.bundle.manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    SIGNATURE_NAME,
    FileEntry,
    Manifest,
    ModelEntry,
    PartEntry,
    canonical_bytes,
    parse_manifest,
)
from airlock.bundle.pack import UnpackReport, pack_bundle, unpack_bundle, verify_archive
from airlock.bundle.signing import SignerInfo, Trust, sign_bytes, verify_signature
from airlock.bundle.stage import StageCounters, StagedBundle, stage_bundle
from airlock.bundle.verify import VerifyReport, load_signed_manifest, verify_bundle

__all__ = [
    "FORMAT_VERSION", "MANIFEST_NAME", "SIGNATURE_NAME", "FileEntry", "Manifest", "ModelEntry", "PartEntry",
    "SignerInfo", "StageCounters", "StagedBundle", "Trust", "UnpackReport", "VerifyReport", "build_bundle",
    "canonical_bytes", "load_signed_manifest", "pack_bundle", "parse_manifest", "sign_bytes", "stage_bundle",
    "unpack_bundle", "verify_archive", "verify_bundle", "verify_signature", "write_payload",
]
