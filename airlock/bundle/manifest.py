"""MANIFEST.json: dataclasses, canonical serialisation and a strict, size-limited parser.

The manifest is written exactly once as canonical JSON (sorted keys, fixed separators, UTF-8) and
signed as bytes. Parsing happens only after the signature over those exact bytes was verified.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from airlock import boundedjson, names
from airlock.errors import ManifestError, UnsafePathError
from airlock.fsutil import safe_relpath

FORMAT_VERSION = 1
CODED_FORMAT_VERSION = 2  # a manifest with compressed payloads (``coding``); raw bundles stay 1
FORMAT_VERSIONS = (FORMAT_VERSION, CODED_FORMAT_VERSION)
CODECS = ("alz1",)  # airlock/codec/frame.py
MANIFEST_NAME = "MANIFEST.json"
SIGNATURE_NAME = "MANIFEST.json.asc"
RESERVED_NAMES = frozenset({MANIFEST_NAME, SIGNATURE_NAME})
STAGING_NAMES = frozenset({".airlock-staging"})  # top-level names staging keeps for itself
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
MAX_SIGNATURE_BYTES = 1024 * 1024
KINDS = ("full", "delta")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_PART_SUFFIX = re.compile(r"\.part\d{3}\Z|\.airlock-partial\Z")
# Bounds on everything the schema carries (docs/bundle-format.md, "Limits")
MAX_DEPTH = 32  # nesting of JSON arrays/objects (golden data included)
INT_MAX = boundedjson.INT_MAX  # any JSON integer fits a signed 64-bit integer
MAX_STRING = 65536  # characters in any string (descriptions, golden inputs)
MAX_SHORT = 128  # created, builder_version, dependency keys and values
MAX_BLOCK_SIZE = 1 << 40  # blocks are hashed while streaming; this only bounds the arithmetic


@dataclass(frozen=True)
class PartEntry:
    size: int
    sha256: str


@dataclass(frozen=True)
class Coding:
    """How a compressed payload is stored: ``size``/``sha256`` of the stored (coded) stream and one
    frame per block of the uncompressed file (``frames[i]`` decodes to block ``i``)."""

    codec: str
    size: int
    sha256: str
    frames: list[PartEntry] = field(default_factory=list)


@dataclass
class FileEntry:
    """One payload file. ``blocks`` hash consecutive ``block_size`` ranges of the whole file;
    ``parts`` (when split for FAT32) are stored as ``<path>.part000``, ``.part001``, ...; with
    ``coding`` the stored bytes (and the parts) are the coded stream, ``size``/``sha256``/``blocks``
    still describe the uncompressed file."""

    size: int
    sha256: str
    block_size: int
    blocks: list[str] = field(default_factory=list)
    parts: list[PartEntry] = field(default_factory=list)
    coding: Coding | None = None

    @property
    def stored_size(self) -> int:
        """Bytes on the bundle medium (the coded stream for a compressed payload)."""
        return self.coding.size if self.coding is not None else self.size


@dataclass
class ModelEntry:
    name: str
    version: str
    kind: str
    path: str
    target_files: dict[str, dict[str, Any]]
    from_version: str | None = None
    description: str = ""
    dependencies: dict[str, str] = field(default_factory=dict)
    golden: dict[str, Any] | None = None


@dataclass
class Manifest:
    bundle_id: str
    kind: str
    compatible: str
    sequence: int
    created: str
    builder_version: str
    files: dict[str, FileEntry]
    models: list[ModelEntry] = field(default_factory=list)
    rollback: bool = False
    format_version: int = FORMAT_VERSION

    def physical_files(self) -> dict[str, tuple[str, int | None]]:
        """Every on-disk name -> (logical path, part index or None)."""
        out: dict[str, tuple[str, int | None]] = {}
        for rel, entry in self.files.items():
            if entry.parts:
                for i in range(len(entry.parts)):
                    out[part_name(rel, i)] = (rel, i)
            else:
                out[rel] = (rel, None)
        return out

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.files.values())


def part_name(rel: str, index: int) -> str:
    return f"{rel}.part{index:03d}"


# ---------------------------------------------------------------------------------------- writing


def to_dict(m: Manifest) -> dict[str, Any]:
    files: dict[str, Any] = {}
    for rel, e in m.files.items():
        fd: dict[str, Any] = {"size": e.size, "sha256": e.sha256, "block_size": e.block_size,
                              "blocks": list(e.blocks)}
        if e.parts:
            fd["parts"] = [{"size": p.size, "sha256": p.sha256} for p in e.parts]
        if e.coding is not None:
            fd["coding"] = {"codec": e.coding.codec, "size": e.coding.size, "sha256": e.coding.sha256,
                            "frames": [{"size": f.size, "sha256": f.sha256} for f in e.coding.frames]}
        files[rel] = fd
    models = []
    for me in m.models:
        models.append({
            "name": me.name, "version": me.version, "kind": me.kind, "from_version": me.from_version,
            "path": me.path, "target_files": me.target_files, "description": me.description,
            "dependencies": dict(me.dependencies), "golden": me.golden,
        })
    return {
        "format_version": m.format_version, "bundle_id": m.bundle_id, "kind": m.kind,
        "compatible": m.compatible, "sequence": m.sequence, "created": m.created,
        "builder_version": m.builder_version, "rollback": m.rollback, "files": files, "models": models,
    }


def canonical_bytes(m: Manifest) -> bytes:
    """Canonical JSON: sorted keys, fixed separators, UTF-8, trailing newline."""
    validate(m)
    text = json.dumps(to_dict(m), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)
    return (text + "\n").encode("utf-8")


# ---------------------------------------------------------------------------------------- parsing


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise UnsafePathError(f"{MANIFEST_NAME}: duplicate key {key!r}", path=key, rule="path-duplicate")
        out[key] = value
    return out


def _json_fail(message: str, kind: str) -> ManifestError:
    return ManifestError(f"{MANIFEST_NAME}: {message}", path=MANIFEST_NAME,
                         rule="manifest-parse" if kind == "parse" else "manifest-schema")


def load_json(data: bytes, limit: int = MAX_DEPTH, *, check_strings: bool = True) -> Any:
    """Bounded JSON (``airlock.boundedjson``: nesting at most ``limit``, integers in 64 bits, finite
    numbers, UTF-8), no duplicate keys, and (``check_strings``) every string valid Unicode without NUL
    and at most ``MAX_STRING`` characters."""
    raw = boundedjson.loads(data, max_depth=limit, fail=_json_fail, object_pairs_hook=_no_duplicates)
    if check_strings:
        check_strings_in(raw)
    return raw


def check_strings_in(raw: Any) -> None:
    for s in _strings(raw):
        _check_string(s)


def _strings(value: Any) -> Iterator[str]:
    """Every string (keys included) in a parsed JSON value; iterative, whatever the depth."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            yield v
        elif isinstance(v, dict):
            yield from v.keys()
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)


def _check_string(s: str) -> None:
    if len(s) > MAX_STRING:
        raise _fail(f"a string of {len(s)} characters (at most {MAX_STRING})")
    if "\x00" in s:
        raise _fail(f"NUL character in string {s[:60]!r}")
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _fail(f"string {s[:60]!r} is not valid Unicode (lone surrogate {exc.object[exc.start]!r})"
                    ) from exc


def _fail(msg: str) -> ManifestError:
    return ManifestError(f"{MANIFEST_NAME}: {msg}", path=MANIFEST_NAME, rule="manifest-schema")


def _take(obj: dict[str, Any], where: str, required: dict[str, type | tuple[type, ...]],
          optional: dict[str, type | tuple[type, ...]] | None = None) -> dict[str, Any]:
    optional = optional or {}
    unknown = set(obj) - set(required) - set(optional)
    if unknown:
        raise _fail(f"{where}: unknown field(s) {sorted(unknown)}")
    for key in required:
        if key not in obj:
            raise _fail(f"{where}: missing field {key!r}")
    for key, typ in {**required, **optional}.items():
        if key in obj and not _is(obj[key], typ):
            raise _fail(f"{where}: field {key!r} has the wrong type")
    return obj


def _is(value: Any, typ: type | tuple[type, ...]) -> bool:
    types = typ if isinstance(typ, tuple) else (typ,)
    if isinstance(value, bool) and bool not in types:
        return False
    return isinstance(value, types)


def _hex(value: str, where: str) -> str:
    if not _HEX64.fullmatch(value):
        raise _fail(f"{where}: not a lowercase sha256 hex digest")
    return value


def _nonneg(value: int, where: str) -> int:
    if value < 0:
        raise _fail(f"{where}: negative value")
    return value


def _file_entry(rel: str, raw: Any) -> FileEntry:
    if not isinstance(raw, dict):
        raise _fail(f"files[{rel!r}] is not an object")
    _take(raw, f"files[{rel!r}]", {"size": int, "sha256": str, "block_size": int, "blocks": list},
          {"parts": list, "coding": dict})
    parts = _part_list(rel, "parts", raw.get("parts", []))
    coding = None
    if "coding" in raw:
        c = _take(raw["coding"], f"files[{rel!r}].coding", {"codec": str, "size": int, "sha256": str,
                                                             "frames": list})
        coding = Coding(c["codec"], _nonneg(c["size"], rel), _hex(c["sha256"], rel),
                        _part_list(rel, "coding.frames", c["frames"]))
    blocks = raw["blocks"]
    for b in blocks:
        if not isinstance(b, str):
            raise _fail(f"files[{rel!r}].blocks: not a string")
        _hex(b, rel)
    return FileEntry(_nonneg(raw["size"], rel), _hex(raw["sha256"], rel), raw["block_size"], list(blocks),
                     parts, coding)


def _part_list(rel: str, what: str, raw: list[Any]) -> list[PartEntry]:
    out = []
    for i, p in enumerate(raw):
        if not isinstance(p, dict):
            raise _fail(f"files[{rel!r}].{what}[{i}] is not an object")
        _take(p, f"files[{rel!r}].{what}[{i}]", {"size": int, "sha256": str})
        out.append(PartEntry(_nonneg(p["size"], rel), _hex(p["sha256"], rel)))
    return out


def _model_entry(i: int, raw: Any) -> ModelEntry:
    where = f"models[{i}]"
    if not isinstance(raw, dict):
        raise _fail(f"{where} is not an object")
    _take(raw, where, {"name": str, "version": str, "kind": str, "path": str, "target_files": dict},
          {"from_version": (str, type(None)), "description": str, "dependencies": dict,
           "golden": (dict, type(None))})
    tf = raw["target_files"]
    for rel, info in tf.items():
        if not isinstance(info, dict):
            raise _fail(f"{where}.target_files[{rel!r}] is not an object")
        _take(info, f"{where}.target_files[{rel!r}]", {"size": int, "sha256": str})
        _hex(info["sha256"], rel)
        _nonneg(info["size"], rel)
    deps = raw.get("dependencies", {})
    if not all(isinstance(v, str) for v in deps.values()):
        raise _fail(f"{where}.dependencies: values must be strings")
    return ModelEntry(name=raw["name"], version=raw["version"], kind=raw["kind"], path=raw["path"],
                      target_files=tf, from_version=raw.get("from_version"),
                      description=raw.get("description", ""), dependencies=deps, golden=raw.get("golden"))


def parse_manifest(data: bytes) -> Manifest:
    """Parse signed manifest bytes with a size limit, bounded JSON and a strict schema."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{MANIFEST_NAME}: {len(data)} bytes exceeds the {MAX_MANIFEST_BYTES} byte limit",
                            path=MANIFEST_NAME, rule="manifest-size")
    raw = load_json(data, check_strings=False)
    if not isinstance(raw, dict):
        raise _fail("top level is not an object")
    if isinstance(raw.get("files"), dict):
        for rel in raw["files"]:
            check_payload_name(rel)  # first, so that a bad name is an unsafe path (exit 12)
    check_strings_in(raw)
    _take(raw, "manifest", {"format_version": int, "bundle_id": str, "kind": str, "compatible": str,
                            "sequence": int, "created": str, "builder_version": str, "rollback": bool,
                            "files": dict, "models": list})
    if raw["format_version"] not in FORMAT_VERSIONS:
        raise ManifestError(f"{MANIFEST_NAME}: unsupported format_version {raw['format_version']}",
                            path=MANIFEST_NAME, rule="manifest-version")
    files = {rel: _file_entry(rel, entry) for rel, entry in raw["files"].items()}
    models = [_model_entry(i, m) for i, m in enumerate(raw["models"])]
    m = Manifest(bundle_id=raw["bundle_id"], kind=raw["kind"], compatible=raw["compatible"],
                 sequence=raw["sequence"], created=raw["created"], builder_version=raw["builder_version"],
                 files=files, models=models, rollback=raw["rollback"], format_version=raw["format_version"])
    validate(m)
    return m


def _check_coding(m: Manifest, rel: str, e: FileEntry) -> None:
    c = e.coding
    assert c is not None
    if m.format_version < CODED_FORMAT_VERSION:
        raise _fail(f"files[{rel!r}]: coding needs format_version {CODED_FORMAT_VERSION}")
    if c.codec not in CODECS:
        raise _fail(f"files[{rel!r}]: unknown codec {c.codec[:40]!r} (known: {', '.join(CODECS)})")
    if not 0 <= c.size <= INT_MAX:
        raise _fail(f"files[{rel!r}]: coding size outside 0..2**63-1")
    if len(c.frames) != len(e.blocks):
        raise _fail(f"files[{rel!r}]: {len(c.frames)} coded frames for {len(e.blocks)} blocks")
    if sum(f.size for f in c.frames) != c.size:
        raise _fail(f"files[{rel!r}]: coded frame sizes do not add up to the coding size")


# ------------------------------------------------------------------------------------- names


def check_payload_name(rel: str) -> None:
    """A payload or target file name: a safe relative path (no traversal, absolute, NUL, backslash),
    no control, format (bidi, zero-width) or separator character, each component at most
    ``NAME_MAX`` bytes with Airlock's longest suffix added, the whole name at most
    ``MAX_RELPATH_BYTES``. Refusals are UnsafePathError (exit 12)."""
    safe_relpath(rel)
    bad = names.bad_char(rel)
    if bad is not None:
        raise UnsafePathError(f"{rel!r}: character {bad} (control, bidi or invisible) in a file name",
                              path=rel, rule="path-chars")
    encoded = rel.encode("utf-8")
    if len(encoded) > names.MAX_RELPATH_BYTES:
        raise UnsafePathError(f"{rel[:80]!r}...: name of {len(encoded)} bytes (at most "
                              f"{names.MAX_RELPATH_BYTES})", path=rel, rule="path-length")
    for comp in rel.split("/"):
        n = len(comp.encode("utf-8")) + names.LONGEST_SUFFIX
        if n > names.NAME_MAX:
            raise UnsafePathError(f"{comp[:80]!r}...: path component of {n - names.LONGEST_SUFFIX} bytes "
                                  f"(at most {names.NAME_MAX - names.LONGEST_SUFFIX})", path=rel,
                                  rule="path-length")


def _check_collisions(physical: Iterable[str], where: str) -> None:
    """No two names (files or directories, reserved names included) may fold to the same key."""
    every = set(RESERVED_NAMES)
    for name in physical:
        every.add(name)
        every.update(str(p) for p in safe_relpath(name).parents if str(p) != ".")
    clash = names.first_collision(sorted(every))
    if clash:
        a, b = clash
        raise UnsafePathError(f"{where}: {a!r} and {b!r} are the same name on a case-insensitive or "
                              "normalising file system", path=b, rule="path-collision")


def _check_word(value: str, what: str, ok: bool) -> None:
    if not ok:
        raise ManifestError(f"{MANIFEST_NAME}: {what} {value[:80]!r} is not allowed (see "
                            "docs/bundle-format.md, names)", path=MANIFEST_NAME, rule="manifest-name")


def _short(value: str, what: str) -> None:
    if len(value) > MAX_SHORT or names.bad_char(value) is not None:
        raise _fail(f"{what} {value[:80]!r}: at most {MAX_SHORT} printable characters")


def validate(m: Manifest) -> None:
    """Semantic checks shared by the writer and the parser."""
    if m.kind not in KINDS:
        raise _fail(f"kind {m.kind!r} is not one of {KINDS}")
    if not 0 <= m.sequence <= INT_MAX:
        raise _fail(f"sequence {m.sequence} outside 0..2**63-1")
    _check_word(m.bundle_id, "bundle_id", names.is_bundle_id(m.bundle_id))
    _check_word(m.compatible, "compatible", names.is_profile(m.compatible))
    _short(m.builder_version, "builder_version")
    _short(m.created, "created")
    try:
        datetime.fromisoformat(m.created.replace("Z", "+00:00"))
    except ValueError as exc:
        raise _fail(f"created {m.created[:80]!r} is not an ISO 8601 time") from exc
    physical: set[str] = set()
    for rel, e in m.files.items():
        check_payload_name(rel)
        if rel in RESERVED_NAMES:
            raise UnsafePathError(f"{rel}: reserved name used as payload", path=rel, rule="path-reserved")
        if rel.split("/")[0] in STAGING_NAMES or rel.startswith(".incoming-"):
            raise UnsafePathError(f"{rel}: reserved name (Airlock's staging files) used as payload", path=rel,
                                  rule="path-reserved")
        if _PART_SUFFIX.search(rel):
            raise UnsafePathError(f"{rel}: payload name ends like a part name", path=rel,
                                  rule="path-reserved")
        if not 0 < e.block_size <= MAX_BLOCK_SIZE:
            raise _fail(f"files[{rel!r}]: block_size must be 1..{MAX_BLOCK_SIZE}")
        if not 0 <= e.size <= INT_MAX:
            raise _fail(f"files[{rel!r}]: size outside 0..2**63-1")
        if e.coding is not None:
            _check_coding(m, rel, e)
        if len(e.blocks) != -(-e.size // e.block_size):
            raise _fail(f"files[{rel!r}]: {len(e.blocks)} block hashes for {e.size} bytes")
        if e.parts:
            if len(e.parts) < 2 or len(e.parts) > 1000:
                raise _fail(f"files[{rel!r}]: a split file has 2..1000 parts")
            if sum(p.size for p in e.parts) != e.stored_size:
                raise _fail(f"files[{rel!r}]: part sizes do not add up to the stored size")
            physical.update(part_name(rel, i) for i in range(len(e.parts)))
        else:
            physical.add(rel)
    # one name may not be both a file and a directory of another file
    dirs = {str(p) for name in physical for p in safe_relpath(name).parents if str(p) != "."}
    clash = physical & dirs
    if clash:
        name = sorted(clash)[0]
        raise UnsafePathError(f"{name}: used both as a file and as a directory", path=name,
                              rule="path-duplicate")
    if len(physical) != sum(len(e.parts) or 1 for e in m.files.values()):
        raise UnsafePathError("MANIFEST.json: two payload names map to the same file", path=MANIFEST_NAME,
                              rule="path-duplicate")
    _check_collisions(physical, MANIFEST_NAME)
    if sum(e.size for e in m.files.values()) > INT_MAX:
        raise _fail("total payload size outside 0..2**63-1")
    for me in m.models:
        _check_word(me.name, "model name", names.is_model_name(me.name))
        _check_word(me.version, "model version", names.is_version(me.version))
        if me.from_version is not None:
            _check_word(me.from_version, "from_version", names.is_version(me.from_version))
        if me.kind not in KINDS:
            raise _fail(f"model {me.name}: kind {me.kind!r} is not one of {KINDS}")
        check_payload_name(me.path)
        for rel in me.target_files:
            check_payload_name(rel)
        _check_collisions(me.target_files, f"model {me.name}")
        for key, value in me.dependencies.items():
            _short(key, "dependency")
            _short(value, "dependency value")
        if me.kind == "delta":
            if me.from_version is None:
                raise _fail(f"model {me.name}: a delta needs from_version")
            if me.path not in m.files:
                raise _fail(f"model {me.name}: delta file {me.path} is not in files")
        else:
            for rel, info in me.target_files.items():
                entry = m.files.get(f"{me.path}/{rel}")
                if entry is None:
                    raise _fail(f"model {me.name}: {me.path}/{rel} is not in files")
                if (entry.size, entry.sha256) != (info.get("size"), info.get("sha256")):
                    raise _fail(f"model {me.name}: target hash of {rel} differs from its file entry")
