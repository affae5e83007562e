"""A signed, flat local apt repository built from ``.deb`` files (connected side), and its verification.

Layout (``deb [signed-by=<dir>/airlock-archive-keyring.gpg] file:<dir> ./``)::

    pool/<name>_<version>_<arch>.deb
    Packages  Packages.gz  Packages.xz
    Release   InRelease (clearsigned)   Release.gpg (detached)
    airlock-archive-keyring.gpg (binary public key of the signer, for ``signed-by``)

The index is written here in Python from each package's control file (``dpkg-deb --field``), so no
``apt-utils`` is needed; apt on the target checks the Release signature against ``signed-by`` and then
every index and ``.deb`` against the hashes chained from it.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

import gnupg

from airlock import settings
from airlock.errors import IntegrityError, ManifestError, SignatureError
from airlock.faults import fault_point
from airlock.fsutil import fsync_tree, safe_relpath, staging_dir
from airlock.hashing import CHUNK, no_progress

KEYRING_NAME = "airlock-archive-keyring.gpg"
INDEX_NAMES = ("Packages", "Packages.gz", "Packages.xz")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9+.\-]+$")
_VERSION_RE = re.compile(r"^[A-Za-z0-9.+~:\-]+$")


@dataclass
class DebPackage:
    """One package in the repository, as its ``Packages`` stanza describes it."""

    name: str
    version: str
    architecture: str
    filename: str
    size: int
    md5: str
    sha256: str
    control: str = field(repr=False)

    def stanza(self) -> str:
        return (f"{self.control.rstrip(chr(10))}\nFilename: {self.filename}\nSize: {self.size}\n"
                f"MD5sum: {self.md5}\nSHA256: {self.sha256}\n")


@dataclass
class AptRepo:
    root: Path
    packages: list[DebPackage]
    signer: str
    keyring: Path

    def source_line(self, keyring: Path | None = None, root: Path | None = None) -> str:
        """The one-line apt source for this repository (at ``root`` once copied onto a target)."""
        return f"deb [signed-by={keyring or self.keyring}] file:{root or self.root} ./"


def _hashes(path: Path) -> tuple[int, str, str]:
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            md5.update(chunk)
            sha.update(chunk)
            size += len(chunk)
    return size, md5.hexdigest(), sha.hexdigest()


def parse_control(text: str) -> dict[str, str]:
    """Fields of one deb822 paragraph (continuation lines joined with newlines)."""
    fields: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if line[:1] in (" ", "\t") and key:
            fields[key] += "\n" + line
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip()
            fields[key] = value.strip()
    return fields


def read_control(deb: Path) -> str:
    """The control paragraph of ``deb``; a file that is not a Debian package is refused."""
    proc = subprocess.run(["dpkg-deb", "--field", str(deb)], capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        reason = (proc.stderr.strip().splitlines() or ["no control file"])[-1]
        raise ManifestError(f"{deb}: not a Debian package ({reason})", path=str(deb), rule="deb")
    return proc.stdout


def _package_from(deb: Path) -> tuple[str, str, str, str]:
    control = read_control(deb)
    f = parse_control(control)
    name, version, arch = f.get("Package", ""), f.get("Version", ""), f.get("Architecture", "")
    if not _NAME_RE.match(name) or not _VERSION_RE.match(version) or not re.match(r"^[a-z0-9\-]+$", arch):
        raise ManifestError(f"{deb}: control file has an invalid Package/Version/Architecture "
                            f"({name!r} {version!r} {arch!r})", path=str(deb), rule="deb")
    return name, version, arch, control


def _gpg(gnupghome: Path | None) -> gnupg.GPG:
    home = gnupghome or settings.gnupghome()
    return gnupg.GPG(gnupghome=str(home)) if home else gnupg.GPG()


def _release(packages: list[DebPackage], root: Path, *, origin: str, label: str, suite: str,
             date: datetime) -> bytes:
    archs = sorted({p.architecture for p in packages if p.architecture != "all"} or {"all"})
    lines = [f"Origin: {origin}", f"Label: {label}", f"Suite: {suite}", f"Codename: {suite}",
             f"Date: {format_datetime(date.astimezone(UTC), usegmt=True)}",
             f"Architectures: {' '.join(archs)}", "Acquire-By-Hash: no"]
    sums: dict[str, list[str]] = {"MD5Sum": [], "SHA256": []}
    for name in INDEX_NAMES:
        size, md5, sha = _hashes(root / name)
        sums["MD5Sum"].append(f" {md5} {size:>16} {name}")
        sums["SHA256"].append(f" {sha} {size:>16} {name}")
    for algo, entries in sums.items():
        lines.append(f"{algo}:")
        lines.extend(entries)
    return ("\n".join(lines) + "\n").encode()


def _sign(gpg: gnupg.GPG, data: bytes, signer: str, passphrase: str | None, *, clearsign: bool) -> bytes:
    result = gpg.sign(data, keyid=signer, clearsign=clearsign, detach=not clearsign, binary=False,
                      passphrase=passphrase, extra_args=["--digest-algo", "SHA512"])
    if not result.data:
        raise SignatureError(f"signer {signer}: gpg could not sign the Release file ({result.status})",
                             rule="signer")
    return bytes(result.data)


def build_apt_repo(debs: list[Path], out_dir: Path, *, signer: str, gnupghome: Path | None = None,
                   passphrase_file: Path | None = None, origin: str = "Airlock",
                   label: str = "Airlock offline", suite: str = "airlock", date: datetime | None = None,
                   progress: Callable[[int], None] | None = None) -> AptRepo:
    """Copy ``debs`` into a new signed flat repository at ``out_dir`` (must not exist).

    Built in a staging dir beside ``out_dir`` and renamed in when complete. Byte-identical duplicates
    are merged; two different files for the same name/version/arch are refused. ``date`` defaults to
    ``$SOURCE_DATE_EPOCH`` or now (apt refuses a Release dated in the future of the target's clock).
    """
    from airlock.bundle.safeio import remove_stale
    from airlock.bundle.signing import normalise_fpr, read_passphrase

    out_dir = Path(out_dir)
    if out_dir.exists():
        raise ManifestError(f"{out_dir}: already exists; the apt repository is built into a new directory",
                            path=str(out_dir), rule="exists")
    if not debs:
        raise ManifestError("no .deb files given for the apt repository", rule="deb")
    fpr = normalise_fpr(signer)
    gpg = _gpg(gnupghome)
    if fpr not in {normalise_fpr(k["fingerprint"]) for k in gpg.list_keys(secret=True)}:
        raise SignatureError(f"signer {fpr}: no secret key with this fingerprint in the keyring",
                             path=str(gnupghome) if gnupghome else None, rule="signer")
    passphrase = read_passphrase(passphrase_file) or None
    if date is None:
        epoch = settings.source_date_epoch()
        date = datetime.fromtimestamp(epoch, UTC) if epoch is not None else datetime.now(UTC)
    tick = progress or no_progress

    remove_stale(out_dir, ".aptrepo-")
    with staging_dir(out_dir, prefix=".aptrepo-") as tmp:
        (tmp / "pool").mkdir()
        by_key: dict[tuple[str, str, str], DebPackage] = {}
        for deb in sorted({Path(d) for d in debs}):
            name, version, arch, control = _package_from(deb)
            rel = f"pool/{name}_{version.replace(':', '%3a')}_{arch}.deb"
            size, md5, sha = _hashes(deb)
            known = by_key.get((name, version, arch))
            if known is not None:
                if known.sha256 != sha:
                    raise ManifestError(f"{deb}: {name} {version} {arch} given twice with different "
                                        "contents", path=str(deb), rule="deb-duplicate")
                continue
            shutil.copyfile(deb, tmp / rel)
            fault_point("aptrepo-copy")
            if _hashes(tmp / rel)[2] != sha:
                raise IntegrityError(f"{deb}: changed while being copied into the repository",
                                     path=str(deb), rule="integrity")
            by_key[(name, version, arch)] = DebPackage(name, version, arch, rel, size, md5, sha, control)
            tick(size)
        packages = [by_key[k] for k in sorted(by_key)]
        index = "\n".join(p.stanza() for p in packages).encode()
        (tmp / "Packages").write_bytes(index)
        with gzip.GzipFile(tmp / "Packages.gz", "wb", mtime=0) as gz:
            gz.write(index)
        (tmp / "Packages.xz").write_bytes(lzma.compress(index))
        release = _release(packages, tmp, origin=origin, label=label, suite=suite, date=date)
        (tmp / "Release").write_bytes(release)
        (tmp / "Release.gpg").write_bytes(_sign(gpg, release, fpr, passphrase, clearsign=False))
        (tmp / "InRelease").write_bytes(_sign(gpg, release, fpr, passphrase, clearsign=True))
        key = gpg.export_keys(fpr, armor=False)
        if not key:
            raise SignatureError(f"signer {fpr}: cannot export the public key", rule="signer")
        (tmp / KEYRING_NAME).write_bytes(bytes(key) if isinstance(key, bytes | bytearray) else key.encode())
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would keep apt's _apt user and other readers out
        fsync_tree(tmp)
        fault_point("aptrepo-rename")
        tmp.rename(out_dir)
    repo = AptRepo(out_dir, packages, fpr, out_dir / KEYRING_NAME)
    verify_apt_repo(out_dir, fingerprints=[fpr])
    return repo


def verify_apt_repo(repo_dir: Path, *, fingerprints: list[str],
                    keyring: Path | None = None) -> list[DebPackage]:
    """Check a repository as apt will, before pointing apt at it: ``Release`` signed by a pinned key
    (``Release.gpg`` and ``InRelease``), every index matching ``Release`` and every ``.deb`` matching
    ``Packages``. ``keyring`` defaults to the repository's own key file; the pin is what is trusted."""
    from airlock.bundle.signing import Trust, verify_signature

    repo_dir = Path(repo_dir)
    release_path = repo_dir / "Release"
    try:
        release = release_path.read_bytes()
        detached = (repo_dir / "Release.gpg").read_bytes() if (repo_dir / "Release.gpg").exists() else None
    except OSError as exc:
        raise IntegrityError(f"{release_path}: cannot read ({exc.strerror})", path=str(release_path),
                             rule="missing") from exc
    trust = Trust(fingerprints, keyring=keyring or repo_dir / KEYRING_NAME)
    verify_signature(release, detached, trust, name=str(release_path))
    inrelease = repo_dir / "InRelease"
    if inrelease.exists():
        _verify_clearsigned(inrelease, release, trust)
    listed: dict[str, tuple[int, str]] = {}
    section = None
    for line in release.decode().splitlines():
        if not line.startswith(" "):
            section = line.rstrip(":") if line.endswith(":") else None
        elif section == "SHA256":
            digest, length, index_name = line.split()
            listed[index_name] = (int(length), digest)
    if "Packages" not in listed:
        raise IntegrityError(f"{release_path}: lists no Packages index", path=str(release_path),
                             rule="integrity")
    for index_name, want in listed.items():
        got = _hashes(repo_dir / index_name) if (repo_dir / index_name).exists() else (-1, "", "")
        if (got[0], got[2]) != want:
            raise IntegrityError(f"{repo_dir / index_name}: does not match the SHA-256 in Release",
                                 path=str(repo_dir / index_name), rule="integrity")
    packages = []
    for para in (repo_dir / "Packages").read_text().split("\n\n"):
        if not para.strip():
            continue
        f = parse_control(para)
        rel = f.get("Filename", "")
        deb = repo_dir / safe_relpath(rel)
        size, md5, sha = _hashes(deb) if deb.is_file() else (-1, "", "")
        if size != int(f.get("Size", "-1")) or sha != f.get("SHA256"):
            raise IntegrityError(f"{deb}: does not match its SHA-256 in Packages", path=str(deb),
                                 rule="integrity")
        control = "\n".join(ln for ln in para.splitlines()
                            if not ln.startswith(("Filename:", "Size:", "MD5sum:", "SHA256:")))
        packages.append(DebPackage(f["Package"], f["Version"], f["Architecture"], rel, size, md5, sha,
                                   control))
    return packages


def _verify_clearsigned(path: Path, release: bytes, trust: object) -> None:
    from airlock.bundle.signing import Trust, normalise_fpr, verification_home

    assert isinstance(trust, Trust)
    with verification_home(trust) as home:
        result = gnupg.GPG(gnupghome=str(home)).decrypt(path.read_bytes())
        payload = bytes(result.data or b"")
    fpr = normalise_fpr(result.pubkey_fingerprint or result.fingerprint or "")
    if not result.valid or fpr not in trust.pinned():
        raise SignatureError(f"{path}: no valid signature by a pinned key ({result.status})",
                             path=str(path), rule="bad-signature")
    if payload.rstrip(b"\n") != release.rstrip(b"\n"):
        raise SignatureError(f"{path}: signed text differs from Release", path=str(path),
                             rule="bad-signature")


def closure_names(packages: list[str], *, exclude: set[str] | None = None,
                  apt_options: list[str] | None = None) -> list[str]:
    """The dependency closure of ``packages`` (Depends + PreDepends, no Recommends) as apt resolves it on
    the connected side, minus ``exclude`` (e.g. what the target image already has)."""
    cmd = ["apt-cache", *(apt_options or []), "depends", "--recurse", "--no-recommends", "--no-suggests",
           "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances", *packages]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ManifestError(f"apt-cache depends {' '.join(packages)}: {proc.stderr.strip()}", rule="deb")
    names = {ln.strip() for ln in proc.stdout.splitlines() if ln and not ln.startswith(" ")}
    names = {n.split(":")[0] for n in names if not n.startswith("<")}
    return sorted(names - (exclude or set()))


def download_closure(packages: list[str], out_dir: Path, *, exclude: set[str] | None = None,
                     apt_options: list[str] | None = None) -> list[Path]:
    """Download ``packages`` and their dependency closure (``apt-get download``) into ``out_dir``."""
    names = closure_names(packages, exclude=exclude, apt_options=apt_options)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["apt-get", *(apt_options or []), "download", *names], cwd=out_dir,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ManifestError(f"apt-get download failed: {proc.stderr.strip()[-400:]}", rule="deb")
    return sorted(out_dir.glob("*.deb"))
