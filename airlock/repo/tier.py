"""Storage tiers (docs/tiers.md): where each version's files are.

``hot`` is the repository itself (``<root>/model_repo/<model>/<version>/``, local NVMe: what can be
served); ``warm`` is a site-shared directory (a CephFS mount, or any directory); ``cold`` an archive
directory (offline media). The catalog records each version's ``location``; the warm and cold
directories are configured per repository (catalog meta ``tier.warm`` / ``tier.cold``) and hold
``<dir>/<model>/<version>/`` plus a marker naming the repository that owns them.

A move (demote: hot -> warm/cold; promote: -> hot) runs under the repository lock, in this order,
so a kill -9 at any point leaves the version in exactly one complete location once ``recover`` ran:

  stage a copy beside the destination, each file hashed while copied and re-read from the
  destination, both checked against the signed hashes -> seal + fsync -> rename into place
  -> catalog ``location`` (one transaction) -> the source renamed to trash -> trash removed -> audit

The catalog's ``location`` is the truth: ``recover`` removes staging and trash leftovers and any
complete copy outside the recorded location (only while the recorded copy is there: an unmounted
warm tier or unplugged cold media never costs the other copy).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airlock.errors import DiskSpaceError, IntegrityError, RepositoryError
from airlock.faults import fault_point
from airlock.fsutil import free_bytes, fsync_dir, rmtree_writable
from airlock.hashing import copy_hashing, no_progress, sha256_file
from airlock.repo.catalog import LOCATIONS, PRESENT, Catalog, VersionRow, tier_dir
from airlock.repo.install import disk_bytes, seal
from airlock.repo.layout import STAGING_PREFIX, TRASH_PREFIX, Layout, SemVer

if TYPE_CHECKING:
    from airlock.crypto import ProviderRegistry
    from airlock.hashing import Progress
    from airlock.repo.encryption import Encryption
    from airlock.repo.session import RepoSession as Repository  # the plumbing is all it uses

TIER_DIRS = ("warm", "cold")
MARKER = ".airlock-tier"
_META_ID = "tier.repository-id"
_META_KEEP = "tier.keep-hot"
_META_SHARE = "tier.hot-share"


@dataclass(frozen=True)
class Location:
    """Where a version's files are: its tier and the directory holding them."""

    tier: str
    path: Path

    def as_dict(self) -> dict[str, str]:
        return {"tier": self.tier, "path": str(self.path)}


@dataclass(eq=True)
class Policy:
    keep_hot: int | None = None  # hot versions kept per model (active and previous always stay)
    hot_share: float | None = None  # at most this share of the hot file system used by versions

    def as_dict(self) -> dict[str, Any]:
        return {"keep_hot": self.keep_hot, "hot_share": self.hot_share}


@dataclass
class Move:
    model: str
    version: str
    src: str
    dst: str
    changed: bool = True
    files: int = 0
    copied: int = 0
    linked: int = 0
    bytes: int = 0
    seconds: float = 0.0
    verified_against: str = ""
    path: str = ""
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "from": self.src, "to": self.dst,
                "changed": self.changed, "files": self.files, "copied": self.copied, "linked": self.linked,
                "bytes": self.bytes, "seconds": round(self.seconds, 3),
                "verified_against": self.verified_against, "path": self.path, "notes": self.notes}


# ------------------------------------------------------------------------------------ configuration
def policy(cat: Catalog) -> Policy:
    keep, share = cat.get_meta(_META_KEEP), cat.get_meta(_META_SHARE)
    return Policy(int(keep) if keep else None, float(share) if share else None)


def location_of(cat: Catalog, model: str, version: str) -> Location | None:
    """Where ``model`` ``version``'s files are (None: not in the catalog, or pruned). For the backup
    of a version in the warm tier, a reference to this location is enough."""
    row = cat.version(model, version, with_files=False)
    if row is None or row.state not in PRESENT:
        return None
    return _location(cat, row)


def _location(cat: Catalog, row: VersionRow) -> Location:
    if row.location == "hot":
        return Location("hot", Path(row.path))
    base = tier_dir(cat, row.location)
    if base is None:  # configuration removed while versions live there: refused by configure()
        raise RepositoryError(f"{row.model} {row.version} is in the {row.location} tier, which is not "
                              "configured (airlock tier configure)", rule="tier-unconfigured")
    return Location(row.location, base / row.model / row.version)


def _owner_id(d: Path) -> str | None:
    try:
        return str(json.loads((d / MARKER).read_text())["repository"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _usable(cat: Catalog, tier: str) -> Path:
    """The tier's directory, checked to be there and to belong to this repository."""
    d = tier_dir(cat, tier)
    if d is None:
        raise RepositoryError(f"no {tier} tier is configured (airlock tier configure --{tier} DIR)",
                              rule="tier-unconfigured")
    if not d.is_dir():
        raise RepositoryError(f"{d}: the {tier} tier is not available (not mounted?)", path=str(d),
                              rule="tier-unavailable")
    if _owner_id(d) != cat.get_meta(_META_ID):
        raise RepositoryError(f"{d}: the {tier} tier's marker {MARKER} does not name this repository",
                              path=str(d), rule="tier-owner")
    return d


def configure(repo: Repository, *, dirs: dict[str, Path | None] | None = None, keep_hot: int | None = None,
              hot_share: float | None = None, clear_policy: bool = False,
              check: bool = False) -> dict[str, Any]:
    """Set the warm/cold directories (``dirs``: tier -> directory, None to unset) and the policy;
    what is already so is no change. A directory must exist (a mount), lie outside the repository
    and not belong to another repository; a tier holding versions cannot be moved or unset.
    ``check``: only say what would change (read-only)."""
    if keep_hot is not None and keep_hot < 1:
        raise RepositoryError(f"--keep-hot must be at least 1, not {keep_hot}", rule="tier-policy")
    if hot_share is not None and not 0 < hot_share <= 1:
        raise RepositoryError(f"--hot-share must be in (0, 1], not {hot_share}", rule="tier-policy")
    if check and not repo.layout.catalog.exists():  # a new host: everything asked for is a change
        return {"changed": True, "check_mode": True, "set": {**{t: str(d) if d else None for t, d in
                                                                (dirs or {}).items()},
                                                             "keep_hot": keep_hot, "hot_share": hot_share}}
    with repo.reading() if check else repo.mutating() as cat:
        changed: dict[str, Any] = {}
        for tier, d in (dirs or {}).items():
            if tier not in TIER_DIRS:
                raise RepositoryError(f"{tier}: not a configurable tier ({', '.join(TIER_DIRS)})",
                                      rule="tier")
            new = Path(os.path.abspath(d)) if d is not None else None
            if new == tier_dir(cat, tier):
                continue
            used = [f"{m} {r.version}" for m in cat.models() for r in cat.versions(m)
                    if r.location == tier and r.state in PRESENT]
            if used:
                raise RepositoryError(f"the {tier} tier still holds {', '.join(used)}: promote them first",
                                      rule="tier-in-use")
            if new is not None:
                _check_dir(repo, cat, tier, new)
            changed[tier] = str(new) if new else None
        old = policy(cat)
        want = Policy(None, None) if clear_policy else Policy(old.keep_hot, old.hot_share)
        want.keep_hot = keep_hot if keep_hot is not None else want.keep_hot
        want.hot_share = hot_share if hot_share is not None else want.hot_share
        if want != old:
            changed["policy"] = want.as_dict()
        if check or not changed:
            return {"changed": bool(changed), "check_mode": check, "set": changed, **_config(cat)}
        with cat.transaction():
            if cat.get_meta(_META_ID) is None:
                cat.set_meta(_META_ID, uuid.uuid4().hex)
            for tier, d_str in changed.items():
                if tier in TIER_DIRS and d_str is None:
                    cat.del_meta(f"tier.{tier}")
                elif tier in TIER_DIRS:
                    cat.set_meta(f"tier.{tier}", d_str)
            for key, value in ((_META_KEEP, want.keep_hot), (_META_SHARE, want.hot_share)):
                if value is None:
                    cat.del_meta(key)
                else:
                    cat.set_meta(key, repr(value))
        for tier, d_str in changed.items():
            if tier in TIER_DIRS and d_str is not None:
                _write_marker(Path(d_str), str(cat.get_meta(_META_ID)), tier)
        repo.audit_record("tier-configure", None, None, None, "ok", changed)
        return {"changed": True, "check_mode": False, "set": changed, **_config(cat)}


def _check_dir(repo: Repository, cat: Catalog, tier: str, d: Path) -> None:
    if not d.is_dir():
        raise RepositoryError(f"{d}: no such directory (mount the {tier} tier first)", path=str(d),
                              rule="tier-unavailable")
    real, repo_real = d.resolve(), repo.layout.repo.resolve()
    if real == repo_real or repo_real in real.parents or real in repo_real.parents:
        raise RepositoryError(f"{d}: a tier directory must lie outside the repository {repo.layout.repo}",
                              path=str(d), rule="tier-dir")
    for other in LOCATIONS:
        od = tier_dir(cat, other) if other != tier and other in TIER_DIRS else None
        if od is not None and od.resolve() == real:
            raise RepositoryError(f"{d}: already the {other} tier", path=str(d), rule="tier-dir")
    owner = _owner_id(d)
    if (d / MARKER).exists() and owner != cat.get_meta(_META_ID):
        raise RepositoryError(f"{d}: belongs to another repository ({MARKER} names {owner}); give each "
                              "appliance its own directory", path=str(d), rule="tier-owner")


def _write_marker(d: Path, repo_id: str, tier: str) -> None:
    from airlock.fsutil import atomic_write_bytes

    atomic_write_bytes(d / MARKER, json.dumps({"repository": repo_id, "tier": tier}).encode() + b"\n", 0o444)


def _config(cat: Catalog) -> dict[str, Any]:
    return {"tiers": {t: (str(tier_dir(cat, t)) if tier_dir(cat, t) else None) for t in TIER_DIRS},
            "policy": policy(cat).as_dict()}


# ------------------------------------------------------------------------------------ status
def status(repo: Repository, model: str | None = None, *, verify: bool = False,
           keys: ProviderRegistry | None = None) -> dict[str, Any]:
    """Every version's tier, path and size, each tier's directory and free space, the policy.
    ``verify``: also re-hash every warm/cold copy against the signed hashes (``ok`` false on the
    first difference per file; hot versions are ``airlock model verify``'s). Read-only."""
    with repo.reading() as cat:
        models = [model] if model else cat.models()
        if model and model not in cat.models():
            raise RepositoryError(f"{model}: no such model in the catalog", rule="model-missing")
        versions: list[dict[str, Any]] = []
        for m in models:
            for r in cat.versions(m, with_files=True):
                if r.state not in PRESENT:
                    continue
                loc = _location(cat, r) if r.location == "hot" or tier_dir(cat, r.location) else None
                v: dict[str, Any] = {"model": m, "version": r.version, "state": r.state,
                                     "location": r.location, "path": str(loc.path) if loc else None,
                                     "available": bool(loc and loc.path.is_dir()), "files": len(r.files),
                                     "bytes": sum(f.size for f in r.files.values())}
                if verify and r.location != "hot":
                    v["problems"] = _check_copy(repo, r, loc, keys)
                versions.append(v)
        tiers: dict[str, Any] = {"hot": _tier_info(repo.layout.repo, versions, "hot")}
        for t in TIER_DIRS:
            d = tier_dir(cat, t)
            tiers[t] = _tier_info(d, versions, t) if d else {"configured": False}
        ok = not any(v.get("problems") for v in versions)
        return {"ok": ok, "root": str(repo.root), "tiers": tiers, "policy": policy(cat).as_dict(),
                "versions": versions, "verified": verify}


def _check_copy(repo: Repository, row: VersionRow, loc: Location | None,
                keys: ProviderRegistry | None) -> list[str]:
    """Problems of a warm/cold copy: missing directory, missing, extra or changed files."""
    from airlock.repo.encryption import stored_sha256

    if loc is None or not loc.path.is_dir():
        return [f"{loc.path if loc else row.location}: directory not available"]
    try:
        expected, _basis = _expected(repo, row)
    except IntegrityError as exc:
        return [str(exc)]
    enc = repo.encryption(row.encryption, keys, str(loc.path))
    problems = [f"{rel}: missing" for rel in sorted(expected) if not (loc.path / rel).is_file()]
    found = {p.relative_to(loc.path).as_posix() for p in loc.path.rglob("*") if p.is_file()}
    problems += [f"{rel}: not in the version" for rel in sorted(found - set(expected))]
    for rel, (_size, sha) in sorted(expected.items()):
        if rel in found:
            got = stored_sha256(loc.path / rel, enc.keys if enc else None, model=row.model, rel=rel) \
                if enc else sha256_file(loc.path / rel)
            if got != sha:
                problems.append(f"{rel}: sha256 {got[:16]}..., signed {sha[:16]}...")
    return problems


def _tier_info(d: Path | None, versions: list[dict[str, Any]], tier: str) -> dict[str, Any]:
    here = [v for v in versions if v["location"] == tier]
    info: dict[str, Any] = {"configured": True, "path": str(d), "available": bool(d and d.is_dir()),
                            "versions": len(here), "bytes": sum(v["bytes"] for v in here)}
    if d is not None and d.is_dir():
        st = os.statvfs(d)
        info.update(free=st.f_bavail * st.f_frsize, total=st.f_blocks * st.f_frsize)
    return info


# ------------------------------------------------------------------------------------ moves
def demote(repo: Repository, model: str, version: str, to: str = "warm", *,
           keys: ProviderRegistry | None = None, progress: Progress = no_progress) -> Move:
    if to not in TIER_DIRS:
        raise RepositoryError(f"{to}: demote goes to {' or '.join(TIER_DIRS)}", rule="tier")
    return move(repo, model, version, to, keys=keys, progress=progress)


def promote(repo: Repository, model: str, version: str, *, keys: ProviderRegistry | None = None,
            progress: Progress = no_progress) -> Move:
    return move(repo, model, version, "hot", keys=keys, progress=progress)


def move(repo: Repository, model: str, version: str, to: str, *, keys: ProviderRegistry | None = None,
         progress: Progress = no_progress) -> Move:
    """Move one version to tier ``to`` under the lock (see the module docstring), audited."""
    action = "tier-promote" if to == "hot" else "tier-demote"
    with repo.mutating() as cat, repo.recording_failure(action, model, None, version):
        return move_locked(repo, cat, model, version, to, keys=keys, progress=progress)


def needs_promotion(row: VersionRow | None) -> bool:
    """A kept version whose files are in the warm or cold tier (activate/rollback promote it first)."""
    return row is not None and row.state in PRESENT and row.location != "hot"


def ensure_hot(repo: Repository, cat: Catalog, model: str, version: str | None, *,
               keys: ProviderRegistry | None = None, progress: Progress = no_progress) -> Move | None:
    """Promote ``version`` if it is kept outside the hot tier (caller holds the lock)."""
    if version is None or not needs_promotion(cat.version(model, version, with_files=False)):
        return None
    with repo.recording_failure("tier-promote", model, None, version):
        return move_locked(repo, cat, model, version, "hot", keys=keys, progress=progress)


def demotes_on_prune(cat: Catalog) -> bool:
    """``prune`` demotes to the warm tier instead of deleting when one is configured."""
    return tier_dir(cat, "warm") is not None


def move_locked(repo: Repository, cat: Catalog, model: str, version: str, to: str, *,
                keys: ProviderRegistry | None = None, progress: Progress = no_progress) -> Move:
    """The move itself; the caller holds the repository lock (prune, activate, rollback, the CLI)."""
    SemVer.parse(version)
    if to not in LOCATIONS:
        raise RepositoryError(f"{to}: not a tier ({', '.join(LOCATIONS)})", rule="tier")
    row = cat.version(model, version)
    if row is None or row.state not in PRESENT:
        raise RepositoryError(f"{model} {version} is not a kept version of this repository",
                              rule="version-missing")
    src = _location(cat, row)
    mv = Move(model, version, row.location, to)
    if row.location == to:
        mv.changed, mv.path = False, str(src.path)
        mv.notes.append(f"already in the {to} tier")
        return mv
    verb = "promote" if to == "hot" else "demote"
    if to != "hot" and _link_target(repo.layout, model) == version:
        raise RepositoryError(f"{model} {version} is the active version: it stays hot", rule="tier-active")
    if src.tier != "hot":
        _usable(cat, src.tier)
    dst = Location(to, repo.layout.version_dir(model, version) if to == "hot"
                   else _usable(cat, to) / model / version)
    if not src.path.is_dir():
        raise RepositoryError(f"{src.path}: {model} {version} is recorded in the {src.tier} tier but its "
                              "directory is not there", path=str(src.path), rule="tier-source-missing")
    expected, mv.verified_against = _expected(repo, row)
    enc = repo.encryption(row.encryption, keys, str(src.path))
    links = _link_sources(repo, cat, row) if to == "hot" and enc is None else {}
    block = os.statvfs(_existing_parent(dst.path.parent)).f_frsize or 4096
    need = sum(disk_bytes(size, block) for rel, (size, sha) in expected.items() if sha not in links)
    free = free_bytes(dst.path.parent)
    if need > free:
        raise DiskSpaceError(f"{dst.path.parent}: moving {model} {version} to the {to} tier needs {need} "
                             f"bytes, only {free} are free", path=str(dst.path.parent),
                             rule="disk-space-preflight")
    started = time.monotonic()
    dst.path.parent.mkdir(parents=True, exist_ok=True, mode=0o755 if to == "hot" else 0o700)
    work = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{version}-", dir=dst.path.parent))
    try:
        tree = work / "tree"
        tree.mkdir(mode=0o700)
        for rel, (size, sha) in sorted(expected.items()):
            (tree / rel).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if sha in links and _link(links[sha], tree / rel, sha):
                mv.linked += 1
                progress(size)
            else:
                _copy_verified(src.path / rel, tree / rel, size, sha, enc, model, rel, progress)
                mv.copied += 1
                mv.bytes += size
            fault_point(f"tier.{verb}.mid-copy")
        mv.files = len(expected)
        uid, gid = repo.ids()
        seal(tree, uid, gid)
        fault_point(f"tier.{verb}.after-copy")
        os.rename(tree, dst.path)
        fsync_dir(dst.path.parent)
    finally:
        rmtree_writable(work)
    fault_point(f"tier.{verb}.after-rename")
    with cat.transaction(f"tier.{verb}.before-commit"):
        cat.set_location(model, version, to)
    fault_point(f"tier.{verb}.after-commit")
    trash = src.path.parent / f"{TRASH_PREFIX}{version}-{uuid.uuid4().hex[:8]}"
    os.rename(src.path, trash)
    fsync_dir(src.path.parent)
    fault_point(f"tier.{verb}.after-trash")
    rmtree_writable(trash)
    mv.seconds = time.monotonic() - started
    mv.path = str(dst.path)
    repo.audit_record(f"tier-{verb}", model, None, version, "ok",
                      {k: v for k, v in mv.as_dict().items() if k not in ("model", "version", "notes")})
    return mv


def _existing_parent(p: Path) -> Path:
    while not p.exists():
        p = p.parent
    return p


def _expected(repo: Repository, row: VersionRow) -> tuple[dict[str, tuple[int, str]], str]:
    """The files a copy must hold: the kept signed manifest's target hashes when the version came
    from a bundle (they must agree with the catalog's), else the catalog's (installed from a directory)."""
    from airlock.repo.verify import signed_index

    catalog = {rel: (f.size, f.sha256) for rel, f in row.files.items()}
    entry = signed_index(repo.layout).lookup(row)
    if entry is None:
        return catalog, "catalog"
    signed = {rel: (int(i["size"]), str(i["sha256"])) for rel, i in entry[1].target_files.items()}
    if signed != catalog:
        diff = sorted(set(signed.items()) ^ set(catalog.items()))
        raise IntegrityError(f"{row.model} {row.version}: the catalog's hashes differ from the signed "
                             f"manifest {entry[0].manifest.bundle_id} (first difference: {diff[0][0]}); "
                             "run airlock model verify", rule="tier-signed-hashes")
    return signed, f"signed-manifest:{entry[0].manifest.bundle_id}"


def _link_sources(repo: Repository, cat: Catalog, row: VersionRow) -> dict[str, Path]:
    """sha256 -> a plaintext file of another hot version of the model (promote links, not copies)."""
    out: dict[str, Path] = {}
    for other in cat.versions(row.model, with_files=True):
        if other.version == row.version or other.location != "hot" or other.encryption is not None \
                or other.state not in PRESENT:
            continue
        vdir = repo.layout.version_dir(row.model, other.version)
        for rel, f in other.files.items():
            out.setdefault(f.sha256, vdir / rel)
    return out


def _link(src: Path, dest: Path, sha: str) -> bool:
    """Hard-link ``src`` if it still has the recorded content (a tampered inode must not spread)."""
    try:
        if sha256_file(src) != sha:
            return False
        os.link(src, dest)
        return True
    except OSError:
        return False


def _copy_verified(src: Path, dest: Path, size: int, sha: str, enc: Encryption | None, model: str, rel: str,
                   progress: Progress) -> None:
    """Copy one stored file, then re-read the copy from the destination (its cached pages dropped):
    plaintext must hash to the signed ``sha``; an encrypted file is copied as stored (ciphertext,
    byte-identical) and its decrypted plaintext must hash to ``sha``."""
    from airlock.repo.encryption import stored_sha256

    with open(src, "rb") as fi, open(dest, "wb") as fo:
        got = copy_hashing(fi, fo, progress=progress)
        fo.flush()
        os.fsync(fo.fileno())
        with contextlib.suppress(OSError, AttributeError):
            os.posix_fadvise(fo.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    if enc is None:
        read_back = sha256_file(dest)
        if (got.size, got.sha256, read_back) != (size, sha, sha):
            bad = src if got.sha256 != sha else dest
            raise IntegrityError(f"{bad}: does not hash to the signed sha256 {sha[:16]}... (read "
                                 f"{got.sha256[:16]}..., copy {read_back[:16]}...)", path=str(bad),
                                 rule="tier-hash")
        return
    if sha256_file(dest) != got.sha256 or stored_sha256(dest, enc.keys, model=model, rel=rel) != sha:
        raise IntegrityError(f"{dest}: the copy's plaintext does not hash to the signed sha256 {sha[:16]}...",
                             path=str(dest), rule="tier-hash")


# ------------------------------------------------------------------------------------ policy
def plan_policy(repo: Repository, cat: Catalog, pol: Policy | None = None) -> list[tuple[str, str]]:
    """(model, version) to demote to the warm tier so the policy holds: beyond ``keep_hot`` hot
    versions per model, then, oldest first across models, until versions use at most ``hot_share``
    of the hot file system. Active and previous versions always stay hot."""
    pol = pol or policy(cat)
    out: list[tuple[str, str]] = []
    candidates: list[tuple[tuple[Any, ...], str, str, int]] = []
    hot_bytes = 0
    for m in cat.models():
        rows = [r for r in cat.versions(m, with_files=True) if r.state in PRESENT and r.location == "hot"]
        hot_bytes += sum(f.size for r in rows for f in r.files.values())
        protected = {r.version for r in rows if r.state in ("active", "previous")}
        target = _link_target(repo.layout, m)
        if target is not None:
            protected.add(target)
        newest = sorted(rows, key=lambda r: SemVer.parse(r.version).key(), reverse=True)
        kept = set(protected)
        for r in newest:
            if pol.keep_hot is not None and len(kept) >= pol.keep_hot:
                break
            kept.add(r.version)
        for r in newest:
            size = sum(f.size for f in r.files.values())
            if r.version in protected:
                continue
            if pol.keep_hot is not None and r.version not in kept:
                out.append((m, r.version))
                hot_bytes -= size
            else:
                candidates.append((SemVer.parse(r.version).key(), m, r.version, size))
    if pol.hot_share is not None:
        st = os.statvfs(repo.layout.repo)
        budget = pol.hot_share * st.f_blocks * st.f_frsize
        for _key, m, v, size in sorted(candidates, key=lambda c: (c[0], c[1])):
            if hot_bytes <= budget:
                break
            out.append((m, v))
            hot_bytes -= size
    return out


def apply_policy(repo: Repository, *, check: bool = False, keys: ProviderRegistry | None = None,
                 pol: Policy | None = None) -> dict[str, Any]:
    """Demote what the policy asks (to the warm tier); ``check``: only say what would move."""
    with repo.reading() if check else repo.mutating() as cat:
        chosen = pol or policy(cat)
        todo = plan_policy(repo, cat, chosen)
        moves = []
        if todo and not check:
            _usable(cat, "warm")
            for m, v in todo:
                with repo.recording_failure("tier-demote", m, None, v):
                    moves.append(move_locked(repo, cat, m, v, "warm", keys=keys).as_dict())
        return {"ok": True, "check_mode": check, "changed": bool(todo), "policy": chosen.as_dict(),
                "demote": [{"model": m, "version": v} for m, v in todo], "moves": moves}


# ------------------------------------------------------------------------------------ recovery
def _link_target(layout: Layout, model: str) -> str | None:
    link = layout.current(model)
    return os.readlink(link) if link.is_symlink() else None


def recover(layout: Layout, cat: Catalog) -> list[str]:
    """After a crash (caller holds the lock): remove staging and trash leftovers in the tier
    directories and every complete copy outside a version's recorded location, while the recorded
    copy is there. Hot-side staging and trash leftovers are ``airlock.repo.recover``'s."""
    actions: list[str] = []
    repo_id = cat.get_meta(_META_ID)
    for tier in TIER_DIRS:
        d = tier_dir(cat, tier)
        if d is None or not d.is_dir() or _owner_id(d) != repo_id:
            continue  # not configured, not mounted, or not ours: nothing here is ours to judge
        for mdir in sorted(p for p in d.iterdir() if p.is_dir() and not p.is_symlink()):
            rows = {r.version: r for r in cat.versions(mdir.name)}
            for entry in sorted(mdir.iterdir()):
                if entry.name.startswith((STAGING_PREFIX, TRASH_PREFIX)):
                    rmtree_writable(entry)
                    actions.append(f"removed tier leftover {entry}")
                    continue
                row = rows.get(entry.name)
                if entry.is_symlink() or not entry.is_dir() or (row is not None and row.location == tier):
                    continue
                with contextlib.suppress(RepositoryError):
                    SemVer.parse(entry.name)
                    if row is None or row.state not in PRESENT or _location(cat, row).path.is_dir():
                        rmtree_writable(entry)
                        actions.append(f"removed {entry} ({mdir.name} {entry.name} is recorded "
                                       f"{'in the ' + row.location + ' tier' if row else 'nowhere'})")
    for m in cat.models():
        for row in cat.versions(m):
            if row.location == "hot" or row.state not in PRESENT:
                continue
            hot = layout.version_dir(m, row.version)
            if hot.is_dir() and _link_target(layout, m) != row.version and tier_dir(cat, row.location) \
                    and _location(cat, row).path.is_dir():
                rmtree_writable(hot)
                actions.append(f"removed {hot} ({m} {row.version} is recorded in the {row.location} tier)")
    return actions
