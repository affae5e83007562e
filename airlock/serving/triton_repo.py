"""Generate the Triton model repository from the Airlock model repository.

Airlock layout (immutable versions, ``current`` symlink)::

    <root>/model_repo/<model>/<version>/...        <root>/model_repo/<model>/current -> <version>

Triton layout generated here (one entry per served model)::

    <triton>/<model>/config.pbtxt                   version_policy { specific { versions: [...] } }
    <triton>/<model>/<N>/version.json               {"model", "version", "path"} -> immutable Airlock dir
    <triton>/<model>/<N>/model.py                   (python backend only)
    <triton>/<model>/<N>/model.json                 (vLLM backend only: engine arguments)

Triton versions are integers; Airlock versions are strings. ``N`` is assigned once per Airlock
version (next free integer) and never reused, so a Triton version always means the same weights.
Every ``config.pbtxt`` is parsed with Triton's own protobuf schema (``model_config_pb2`` from
tritonclient) and checked against the directory before it is written atomically.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airlock.errors import LockBusyError, RepositoryError
from airlock.faults import fault_point
from airlock.fsutil import atomic_write_bytes, fsync_dir, staging_dir
from airlock.serving.config import BACKENDS, ModelOptions, render_config, validate_config, vllm_engine_args
from airlock.serving.errors import EncryptedVersionError
from airlock.serving.settings import SettingsStore

__all__ = ["BACKENDS", "CANDIDATE_SUFFIX", "GenerateReport", "ModelOptions", "TritonModel", "TritonVersion",
           "airlock_models", "generate", "model_lock", "refuse_encrypted", "render_config", "validate_config"]

CANDIDATE_SUFFIX = "__candidate"  # reserved: the reload's candidate entry is <model>__candidate
MODEL_SOURCE = Path(__file__).with_name("python_model") / "model.py"
VERSION_FILE = "version.json"
BACKEND_FILES = ("model.py", "model.json")  # what a backend reads from a version directory
_BACKEND_FILE = {"python": ("model.py",), "vllm": ("model.json",)}
SKIP_DIRS = {"update_packages", "metadata"}


@contextlib.contextmanager
def model_lock(triton_root: Path, model: str, *, wait: bool = False) -> Iterator[None]:
    """One change of a model's Triton entry at a time: a reload fails fast (LockBusyError) while
    another reload, a generate or a restore holds it; ``wait`` blocks instead (generate, restore)."""
    triton_root.mkdir(parents=True, exist_ok=True)
    lock_path = triton_root / f".{model}.reload.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise LockBusyError(f"{lock_path}: another reload of {model} is running",
                                path=str(lock_path)) from None
        yield
    finally:
        os.close(fd)


@dataclass(frozen=True)
class TritonVersion:
    """One Triton version directory and the immutable Airlock version it serves."""

    number: int
    airlock_version: str
    path: str


def refuse_encrypted(model: str, version: str, path: Path) -> None:
    """Triton reads a version's files as they are on disk: never point it at ciphertext.

    EncryptedVersionError (exit 52) when any file of the version starts with the Airlock
    encrypted-file magic; see docs/security.md ("Serving and encryption at rest")."""
    from airlock.crypto.reader import is_encrypted

    for f in sorted(path.rglob("*")):
        if f.is_file() and not f.is_symlink() and is_encrypted(f):
            raise EncryptedVersionError(
                f"{model} {version}: {f.relative_to(path)} is stored encrypted (AIRLKENC); Triton would be "
                "handed ciphertext. Encrypted versions are not served: keep served models on the LUKS "
                "volume (plaintext files, encrypted block device) and use file encryption for the warm/"
                "cold tiers; see docs/security.md", path=str(f))


# ---------------------------------------------------------------------------------------------
# One Triton model entry
# ---------------------------------------------------------------------------------------------

@dataclass
class TritonModel:
    """The Triton repository entry of one model."""

    root: Path  # <triton>/<model>
    options: ModelOptions = field(default_factory=ModelOptions)

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def config_path(self) -> Path:
        return self.root / "config.pbtxt"

    def versions(self) -> dict[int, TritonVersion]:
        """Existing version directories, by Triton version number."""
        found: dict[int, TritonVersion] = {}
        if not self.root.is_dir():
            return found
        for child in self.root.iterdir():
            if child.name.isdigit() and (child / VERSION_FILE).is_file():
                info = json.loads((child / VERSION_FILE).read_text())
                found[int(child.name)] = TritonVersion(int(child.name), info["version"], info["path"])
        return dict(sorted(found.items()))

    def number_of(self, airlock_version: str) -> int | None:
        for n, v in self.versions().items():
            if v.airlock_version == airlock_version:
                return n
        return None

    def served(self) -> list[int]:
        """Versions named by the current config's specific policy (empty if no config yet)."""
        if not self.config_path.is_file():
            return []
        cfg = validate_config(self.config_path.read_text(), name=self.name)
        if cfg.version_policy.WhichOneof("policy_choice") != "specific":
            return sorted(self.versions())
        return sorted(int(v) for v in cfg.version_policy.specific.versions)

    def ensure_version(self, airlock_version: str, path: Path) -> int:
        """The Triton version serving ``path``; created (staged, then renamed) if missing."""
        path = path.resolve()
        existing = self.number_of(airlock_version)
        if existing is not None:
            recorded = self.versions()[existing].path
            if recorded != str(path):
                raise RepositoryError(f"{self.root / str(existing) / VERSION_FILE}: Airlock version "
                                      f"{airlock_version} recorded at {recorded}, now at {path}",
                                      path=str(self.root / str(existing)), rule="triton-version")
            return existing
        if not (path / "config.json").is_file():
            raise RepositoryError(f"{path}: not a model version directory (no config.json)", path=str(path))
        refuse_encrypted(self.name, airlock_version, path)
        number = max(self.versions(), default=0) + 1
        while (self.root / str(number)).exists():  # a stray dir without version.json: never reuse
            number += 1
        final = self.root / str(number)
        self.root.mkdir(parents=True, exist_ok=True)
        with staging_dir(final) as tmp:
            info = {"model": self.name, "version": airlock_version, "path": str(path)}
            (tmp / VERSION_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
            self._backend_files(tmp, path)
            tmp.chmod(0o755)
            fault_point("serving.version_dir.before_rename")
            tmp.rename(final)
            fsync_dir(self.root)
        return number

    def _backend_files(self, vdir: Path, path: Path) -> bool:
        """The files the backend reads from a version directory, for the current options (model.py for
        python, model.json for vllm, neither for tensorrtllm); True if any changed."""
        wanted: dict[str, bytes] = {}
        if self.options.backend == "python":
            wanted["model.py"] = MODEL_SOURCE.read_bytes()
        elif self.options.backend == "vllm":
            engine = vllm_engine_args(path, self.options)
            wanted["model.json"] = (json.dumps(engine, indent=2) + "\n").encode()
        changed = False
        for name in BACKEND_FILES:
            target = vdir / name
            if name in wanted:
                if not target.is_file() or target.read_bytes() != wanted[name]:
                    atomic_write_bytes(target, wanted[name])
                    changed = True
            elif target.exists():
                target.unlink()
                changed = True
        return changed

    def render(self, versions: list[int], *, hidden_size: int | None = None) -> str:
        """The validated config.pbtxt text serving ``versions`` (nothing written)."""
        if not versions:
            raise RepositoryError(f"{self.config_path}: a served model needs at least one version",
                                  path=str(self.config_path))
        if hidden_size is None:
            hidden_size = self._hidden_size(max(versions))
        text = render_config(self.name, versions, self.options, hidden_size=hidden_size)
        validate_config(text, name=self.name, model_dir=self.root)
        return text

    def config_current(self, versions: list[int]) -> bool:
        """True when config.pbtxt and the version directories already say what the options say."""
        if not self.config_path.is_file() or self.config_path.read_text() != self.render(versions):
            return False
        have = self.versions()
        for n in versions:
            if n not in have:
                return False
            vdir, v = self.root / str(n), have[n]
            for name in BACKEND_FILES:
                if (vdir / name).is_file() != (name in _BACKEND_FILE.get(self.options.backend, ())):
                    return False
            if self.options.backend == "vllm" and json.loads((vdir / "model.json").read_text()) != \
                    vllm_engine_args(Path(v.path), self.options):
                return False
        return True

    def write_config(self, versions: list[int], *, hidden_size: int | None = None) -> bool:
        """Validate and atomically write config.pbtxt serving ``versions`` with this entry's options
        (and bring the versions' backend files in line); True if anything changed. Refuses a version
        stored encrypted (EncryptedVersionError)."""
        text = self.render(versions, hidden_size=hidden_size)
        have = self.versions()
        changed = False
        for n in versions:
            if n not in have:
                raise RepositoryError(f"{self.root / str(n)}: no {VERSION_FILE}; not a generated version",
                                      path=str(self.root / str(n)))
            refuse_encrypted(self.name, have[n].airlock_version, Path(have[n].path))
        for n in versions:
            changed |= self._backend_files(self.root / str(n), Path(have[n].path))
        if self.config_path.is_file() and self.config_path.read_text() == text:
            return changed
        fault_point("serving.config.before_write")
        atomic_write_bytes(self.config_path, text.encode())
        return True

    def _hidden_size(self, number: int) -> int:
        v = self.versions().get(number)
        if v is None:
            return 384
        try:
            return int(json.loads((Path(v.path) / "config.json").read_text()).get("hidden_size", 384))
        except (OSError, ValueError):
            return 384

    def remove_version(self, number: int) -> None:
        if number in self.served():
            raise RepositoryError(f"{self.root / str(number)}: still named by config.pbtxt; unload first",
                                  path=str(self.root / str(number)))
        target = self.root / str(number)
        if target.exists():
            shutil.rmtree(target)
            fsync_dir(self.root)


# ---------------------------------------------------------------------------------------------
# The whole repository
# ---------------------------------------------------------------------------------------------

@dataclass
class GenerateReport:
    """What ``generate`` did (or, with ``check``, would do)."""

    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    changed: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"changed": self.changed, "models": self.models}


def airlock_models(airlock_root: Path) -> dict[str, tuple[str, Path]]:
    """model -> (active version, version dir) from ``<root>/model_repo/<model>/current``."""
    base = airlock_root / "model_repo"
    if not base.is_dir():
        raise RepositoryError(f"{base}: no Airlock model repository here", path=str(base))
    out: dict[str, tuple[str, Path]] = {}
    for model_dir in sorted(base.iterdir()):
        current = model_dir / "current"
        if model_dir.name in SKIP_DIRS or not current.is_symlink():
            continue
        target = current.resolve()
        if not target.is_dir():
            raise RepositoryError(f"{current}: dangling current symlink", path=str(current))
        out[model_dir.name] = (target.name, target)
    return out


def generate(airlock_root: Path, triton_root: Path, *, models: list[str] | None = None,
             check: bool = False) -> GenerateReport:
    """Make ``triton_root`` serve each model's active Airlock version, with its stored serving settings.

    A model new to Triton gets version 1 serving ``current``; a model already there keeps its
    served versions (the reload flow, not generation, moves serving to a new version) but gains a
    version directory for the active Airlock version if it lacks one, and its config.pbtxt is
    rewritten when the serving settings changed (``serve load`` then applies it). ``check`` changes
    nothing.
    """
    store = SettingsStore(airlock_root)
    report = GenerateReport()
    active = airlock_models(airlock_root)
    wanted = models if models is not None else list(active)
    for name in wanted:
        if name not in active:
            where = airlock_root / "model_repo" / name
            raise RepositoryError(f"{where}: no active version (current symlink)", path=str(where))
        if name.endswith(CANDIDATE_SUFFIX):
            raise RepositoryError(f"{airlock_root / 'model_repo' / name}: model names ending in "
                                  f"{CANDIDATE_SUFFIX} are reserved for reload candidates", path=name)
        version, path = active[name]
        entry = TritonModel(triton_root / name, store.load(name))  # a bad settings file: nothing written
        with contextlib.nullcontext() if check else model_lock(triton_root, name, wait=True):
            report.models[name] = _generate_one(entry, version, path, check)
        report.changed |= report.models[name].pop("changed")
    return report


def _generate_one(entry: TritonModel, version: str, path: Path, check: bool) -> dict[str, Any]:
    """One model of ``generate`` (under its lock unless ``check``): the report row, with ``changed``."""
    name = entry.name
    number = entry.number_of(version)
    served = entry.served()
    row: dict[str, Any] = {"active": version, "triton_version": number, "served": served,
                           "backend": entry.options.backend}
    need_version = number is None
    need_config = not served or not entry.config_current(served)
    if check:
        if need_version:
            refuse_encrypted(name, version, path)
        row["would_add_version"] = need_version
        row["would_write_config"] = need_config
    else:
        number = entry.ensure_version(version, path)
        row["triton_version"] = number
        if need_config:
            entry.write_config(served or [number])
            row["served"] = served or [number]
    row["changed"] = need_version or need_config
    return row
