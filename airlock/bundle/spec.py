"""Bundle spec (YAML): what goes on the stick. Paths are relative to the spec file.
The format is documented in bundle/README.md."""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from airlock.errors import ManifestError
from airlock.fsutil import safe_relpath
from airlock.hashing import CODED_BLOCK_SIZE, DEFAULT_BLOCK_SIZE
from airlock.safetensors_io import LFS_HINT, LFS_POINTER

DEFAULT_SPLIT_SIZE = 4 * 1024**3 - 1024**2
_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(value: int | str) -> int:
    """``67108864``, ``"64MiB"``, ``"4G"`` -> bytes (binary units)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"not a size: {value!r}")
    unit = (match.group(2) or "").upper()[:1]
    return int(match.group(1)) * _UNITS[unit]


@dataclass
class ModelSpec:
    name: str
    version: str
    path: Path | None = None
    from_version: str | None = None
    delta_old: Path | None = None
    delta_new: Path | None = None
    delta_file: Path | None = None
    description: str = ""
    dependencies: dict[str, str] = field(default_factory=dict)
    golden: dict[str, Any] | None = None

    @property
    def is_delta(self) -> bool:
        return self.delta_file is not None or self.delta_old is not None


@dataclass
class ExtraFile:
    src: Path
    dest: str


@dataclass
class BundleSpec:
    """A parsed spec; ``payload_bytes`` is what a build copies (None when deltas are made first)."""

    source: Path
    compatible: str
    sequence: int
    bundle_id: str | None = None
    rollback: bool = False
    block_size: int = DEFAULT_BLOCK_SIZE
    split_size: int = DEFAULT_SPLIT_SIZE
    compress: bool = False
    """Store full models' files compressed (codec alz1, manifest format 2; airlock/codec)."""
    models: list[ModelSpec] = field(default_factory=list)
    files: list[ExtraFile] = field(default_factory=list)

    def payload_bytes(self) -> int | None:
        if any(m.delta_old is not None for m in self.models):
            return None
        total = sum(f.src.stat().st_size for f in self.files)
        for m in self.models:
            src = m.path if m.path is not None else m.delta_file
            assert src is not None
            total += sum(p.stat().st_size for p in ([src] if src.is_file() else src.rglob("*"))
                         if p.is_file() and not p.is_symlink())
        return total


def _err(spec: Path, msg: str) -> ManifestError:
    return ManifestError(f"{spec}: {msg}", path=str(spec), rule="spec")


def _path(base: Path, spec: Path, value: object) -> Path:
    """A spec path: ``${VAR}`` expanded from the environment, relative to the spec file."""
    text = os.path.expandvars(str(value))
    if "$" in text:
        raise _err(spec, f"{value!r}: environment variable not set")
    return base / text


def _expand(base: Path, spec: Path, patterns: Any, dest_dir: str) -> list[ExtraFile]:
    """A list of files, directories or globs -> files under ``dest_dir/`` (directories recursively)."""
    if patterns is None:
        return []
    if isinstance(patterns, str):
        patterns = [patterns]
    out: list[ExtraFile] = []
    for pattern in patterns:
        full = str(_path(base, spec, pattern))
        matches = sorted(glob.glob(full)) if glob.has_magic(full) else [full]
        if not matches:
            raise _err(spec, f"{dest_dir}: {pattern!r} matches nothing")
        for match in matches:
            p = Path(match)
            if p.is_dir():
                for f in sorted(x for x in p.rglob("*") if x.is_file() and not x.is_symlink()):
                    out.append(ExtraFile(f, f"{dest_dir}/{f.relative_to(p).as_posix()}"))
            elif p.is_file():
                out.append(ExtraFile(p, f"{dest_dir}/{p.name}"))
            else:
                raise _err(spec, f"{dest_dir}: {pattern!r} is not a file or directory")
    return out


def _model(base: Path, spec: Path, raw: Any, i: int) -> ModelSpec:
    if not isinstance(raw, dict):
        raise _err(spec, f"models[{i}] is not a mapping")
    known = {"name", "version", "path", "from_version", "delta", "delta_file", "description",
             "dependencies", "golden"}
    unknown = set(raw) - known
    if unknown:
        raise _err(spec, f"models[{i}]: unknown key(s) {sorted(unknown)}")
    for key in ("name", "version"):
        if not isinstance(raw.get(key), str | int | float) or not str(raw[key]):
            raise _err(spec, f"models[{i}]: '{key}' is required")
    m = ModelSpec(name=str(raw["name"]), version=str(raw["version"]),
                  description=str(raw.get("description", "")),
                  dependencies={str(k): str(v) for k, v in (raw.get("dependencies") or {}).items()},
                  golden=raw.get("golden"))
    safe_relpath(m.name)
    safe_relpath(m.version)
    sources = [k for k in ("path", "delta", "delta_file") if k in raw]
    if len(sources) != 1:
        raise _err(spec, f"models[{i}] ({m.name}): give exactly one of path, delta, delta_file")
    if "path" in raw:
        m.path = _path(base, spec, raw["path"])
        if not m.path.is_dir():
            raise _err(spec, f"models[{i}] ({m.name}): {m.path} is not a directory")
    elif "delta" in raw:
        d = raw["delta"]
        if not isinstance(d, dict) or set(d) != {"old", "new"}:
            raise _err(spec, f"models[{i}] ({m.name}): delta needs exactly 'old' and 'new'")
        m.delta_old, m.delta_new = _path(base, spec, d["old"]), _path(base, spec, d["new"])
        if "from_version" not in raw:
            raise _err(spec, f"models[{i}] ({m.name}): a delta needs from_version")
    else:
        m.delta_file = _path(base, spec, raw["delta_file"])
        if not m.delta_file.is_file():
            raise _err(spec, f"models[{i}] ({m.name}): {m.delta_file} is not a file")
    if raw.get("from_version") is not None:
        m.from_version = str(raw["from_version"])
    from airlock.errors import RepositoryError
    from airlock.repo.layout import SemVer

    for key, value in (("version", m.version), ("from_version", m.from_version)):
        try:
            if value is not None:
                SemVer.parse(value)  # the appliance's own rule, checked before anything is copied
        except RepositoryError as exc:
            raise _err(spec, f"models[{i}] ({m.name}): {key} {value!r} is not a SemVer version "
                       "(MAJOR.MINOR.PATCH, e.g. 1.0.0); the appliance would refuse it") from exc
    if m.golden is not None:
        g = m.golden
        if isinstance(g, dict) and g.get("kind") == "text":  # prompt -> greedy text (vllm / tensorrtllm)
            from airlock.serving.golden import parse_golden

            try:
                parse_golden(g, where=f"models[{i}] ({m.name})")
            except ManifestError as exc:
                raise _err(spec, str(exc)) from exc
        elif not isinstance(g, dict) or not {"input", "expected"} <= set(g):
            raise _err(spec, f"models[{i}] ({m.name}): golden needs input and expected (and tolerance)")
        if not isinstance(g.get("tolerance", 0.0), int | float):
            raise _err(spec, f"models[{i}] ({m.name}): golden tolerance must be a number")
    return m


def load_spec(path: Path, *, split_size: int | None = None, block_size: int | None = None,
              compress: bool | None = None) -> BundleSpec:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise _err(path, f"cannot read spec ({exc})") from exc
    if not isinstance(raw, dict):
        raise _err(path, "top level is not a mapping")
    known = {"bundle_id", "compatible", "sequence", "rollback", "block_size", "split_size", "compress",
             "models", "wheels", "debs", "images", "files"}
    unknown = set(raw) - known
    if unknown:
        raise _err(path, f"unknown key(s) {sorted(unknown)}")
    if not isinstance(raw.get("compatible"), str):
        raise _err(path, "'compatible' (appliance profile) is required")
    seq = raw.get("sequence")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise _err(path, "'sequence' must be a non-negative integer")
    base = path.parent
    try:
        spec = BundleSpec(
            source=path, compatible=raw["compatible"], sequence=raw["sequence"],
            bundle_id=str(raw["bundle_id"]) if raw.get("bundle_id") else None,
            rollback=bool(raw.get("rollback", False)),
            block_size=block_size or parse_size(raw.get("block_size", DEFAULT_BLOCK_SIZE)),
            split_size=split_size or parse_size(raw.get("split_size", DEFAULT_SPLIT_SIZE)),
            compress=bool(raw.get("compress", False)) if compress is None else compress,
        )
        if spec.compress and not block_size and "block_size" not in raw:
            spec.block_size = CODED_BLOCK_SIZE
    except ValueError as exc:
        raise _err(path, str(exc)) from exc
    if spec.block_size <= 0 or spec.split_size <= 0:
        raise _err(path, "block_size and split_size must be positive")
    spec.models = [_model(base, path, m, i) for i, m in enumerate(raw.get("models") or [])]
    for key, dest in (("wheels", "wheelhouse"), ("debs", "debs"), ("images", "images")):
        spec.files += _expand(base, path, raw.get(key), dest)
    for i, f in enumerate(raw.get("files") or []):
        if not isinstance(f, dict) or set(f) != {"src", "dest"}:
            raise _err(path, f"files[{i}]: needs exactly 'src' and 'dest'")
        src = _path(base, path, f["src"])
        if not src.is_file():
            raise _err(path, f"files[{i}]: {src} is not a file")
        spec.files.append(ExtraFile(src, str(safe_relpath(str(f["dest"])))))
    return spec


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".onnx", ".plan", ".h5", ".msgpack",
                   ".ckpt")
TOKENIZER_NAMES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.txt", "vocab.json",
                   "spiece.model", "sentencepiece.bpe.model")


def _head(path: Path, n: int) -> bytes:
    """The first ``n`` bytes (empty when unreadable: the copy then reports the error)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(n)
    except OSError:
        return b""


def check_model_dir(ms: ModelSpec, spec: Path) -> None:
    """What the appliance needs to load a full model, checked before a byte is copied: config.json
    (valid JSON), at least one weights file, and a tokenizer when the config names a vocabulary."""
    import json

    assert ms.path is not None
    where = f"model {ms.name} {ms.version} ({ms.path})"
    try:
        config = json.loads((ms.path / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise _err(spec, f"{where}: no config.json; the appliance cannot load a model without it") from exc
    except (OSError, ValueError) as exc:
        raise _err(spec, f"{where}: config.json is not valid JSON ({exc})") from exc
    files = [p for p in ms.path.rglob("*") if p.is_file() and not p.is_symlink()]
    if not any(p.name.endswith(WEIGHT_SUFFIXES) for p in files):
        raise _err(spec, f"{where}: no weights file ({', '.join('*' + s for s in WEIGHT_SUFFIXES[:3])}, ...)")
    for p in files:
        if p.name.endswith(WEIGHT_SUFFIXES) and _head(p, len(LFS_POINTER)) == LFS_POINTER:
            raise _err(spec, f"{where}: {p.relative_to(ms.path)} is {LFS_HINT}")
    text_model = isinstance(config, dict) and "vocab_size" in config
    if text_model and not any(p.name in TOKENIZER_NAMES for p in files):
        raise _err(spec, f"{where}: config.json has a vocab_size but there is no tokenizer "
                   f"({', '.join(TOKENIZER_NAMES[:3])}, ...)")
