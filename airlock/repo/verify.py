"""Integrity on demand: re-hash a version against the catalog (and the signed manifest when the
bundle's manifest was kept), check modes, owner, extra and missing files and the ``current`` link."""

from __future__ import annotations

import json
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airlock.hashing import digest_file
from airlock.repo.catalog import VersionRow
from airlock.repo.layout import DIR_MODE, FILE_MODE, Layout

if TYPE_CHECKING:
    from airlock.crypto import ProviderRegistry

WORKERS = 2  # both cores: hashlib releases the GIL while hashing


def _problem(path: str, kind: str, expected: Any = None, actual: Any = None) -> dict[str, Any]:
    return {"path": path, "kind": kind, "expected": expected, "actual": actual}


def signed_targets(layout: Layout, row: VersionRow
                   ) -> tuple[dict[str, tuple[int, str]], dict[str, Any]] | None:
    """The target hashes and block hashes the kept signed manifest states for this version."""
    if not row.bundle_id:
        return None
    mpath = layout.bundle_record(row.bundle_id) / "MANIFEST.json"
    if not mpath.exists():
        return None
    from airlock.bundle.manifest import parse_manifest

    m = parse_manifest(mpath.read_bytes())
    for me in m.models:
        if me.name == row.model and me.version == row.version:
            targets = {rel: (int(i["size"]), str(i["sha256"])) for rel, i in me.target_files.items()}
            blocks: dict[str, Any] = {}
            if me.kind == "full":
                for rel in targets:
                    fe = m.files.get(f"{me.path}/{rel}")
                    if fe is not None and fe.blocks:
                        blocks[rel] = (fe.block_size, list(fe.blocks))
            return targets, blocks
    return None


def _first_bad_block(path: Path, block_size: int, blocks: list[str]) -> int | None:
    d = digest_file(path, block_size)
    for i, (got, want) in enumerate(zip(d.blocks, blocks, strict=False)):
        if got != want:
            return i * block_size
    return None if len(d.blocks) == len(blocks) else min(len(d.blocks), len(blocks)) * block_size


def verify_version(layout: Layout, row: VersionRow, *, uid: int | None = None,
                   gid: int | None = None, keys: ProviderRegistry | None = None) -> dict[str, Any]:
    """Drift report for one version; per file only the first problem found is reported. An encrypted
    version (``row.encryption``) is checked by its plaintext hashes, decrypting with ``keys``."""
    from airlock.errors import AirlockError
    from airlock.repo.encryption import stored_sha256, stored_size

    vdir = layout.version_dir(row.model, row.version)
    problems: list[dict[str, Any]] = []
    enc = row.encryption is not None
    report: dict[str, Any] = {"model": row.model, "version": row.version, "state": row.state,
                              "path": str(vdir), "files": len(row.files), "bytes": 0, "problems": problems,
                              "manifest": None, "encrypted": enc, "key_ref": row.encryption}
    if not vdir.is_dir() or vdir.is_symlink():
        problems.append(_problem(".", "missing-version-dir", str(vdir), None))
        report["ok"] = False
        return report
    signed = signed_targets(layout, row)
    if signed is not None:
        targets, _ = signed
        report["manifest"] = row.bundle_id
        cat = {r: (f.size, f.sha256) for r, f in row.files.items()}
        if targets != cat:
            problems.append(_problem(".", "catalog-differs-from-signed-manifest", row.bundle_id, "catalog"))
    found: set[str] = set()
    for dirpath, dirs, files in os.walk(vdir):
        dmode = stat.S_IMODE(os.lstat(dirpath).st_mode)
        drel = Path(dirpath).relative_to(vdir).as_posix()
        if dmode != DIR_MODE:
            problems.append(_problem(drel, "dir-mode", oct(DIR_MODE), oct(dmode)))
        for name in [*files, *[d for d in dirs if os.path.islink(os.path.join(dirpath, d))]]:
            found.add((Path(dirpath) / name).relative_to(vdir).as_posix())
    for rel in sorted(found - set(row.files)):
        problems.append(_problem(rel, "extra-file"))

    def check(rel: str) -> dict[str, Any] | None:
        want = row.files[rel]
        p = vdir / rel
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            return _problem(rel, "missing", want.sha256, None)
        if not stat.S_ISREG(st.st_mode):
            return _problem(rel, "not-a-regular-file")
        try:  # an encrypted file that fails to authenticate is drift, not a crash of the check
            size = stored_size(p, enc)
            if size != want.size:
                return _problem(rel, "size", want.size, size)
            got = stored_sha256(p, keys) if enc else digest_file(p).sha256
        except AirlockError as exc:
            return _problem(rel, "decrypt", row.encryption, str(exc))
        if got != want.sha256:
            prob = _problem(rel, "sha256", want.sha256, got)
            if signed is not None and rel in signed[1] and not enc:
                bs, blocks = signed[1][rel]
                prob["first_bad_offset"] = _first_bad_block(p, bs, blocks)
            return prob
        if signed is not None and signed[0].get(rel, (want.size, want.sha256)) != (size, got):
            return _problem(rel, "signed-manifest", signed[0][rel][1], got)
        mode = stat.S_IMODE(st.st_mode)
        if mode != FILE_MODE:
            return _problem(rel, "mode", oct(FILE_MODE), oct(mode))
        if uid is not None and st.st_uid != uid:
            return _problem(rel, "owner", uid, st.st_uid)
        if gid is not None and st.st_gid != gid:
            return _problem(rel, "group", gid, st.st_gid)
        return None

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        for prob in pool.map(check, sorted(row.files)):
            if prob:
                problems.append(prob)
    report["bytes"] = sum(f.size for f in row.files.values())
    report["ok"] = not problems
    return report


def current_link(layout: Layout, model: str, active: str | None) -> dict[str, Any]:
    link = layout.current(model)
    target = os.readlink(link) if link.is_symlink() else None
    ok = target == active and (target is None or (link.parent / target).is_dir())
    return {"path": str(link), "target": target, "expected": active, "ok": bool(ok)}


def dumps(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=True)
