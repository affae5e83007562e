"""Fuzz targets over every parser that takes untrusted bytes (issue 14): the manifest (JSON + schema,
raw and structure-aware), the detached signature armour (real gpg), the safetensors header, the delta
container and index, and the bundle tar reader.

The oracle is the project's rule: any input gives an ``AirlockError`` with a documented exit code and
a one-line message, or is accepted; anything else (a traceback) is a finding. ``tests/fuzz/run.py``
drives these with atheris; ``tests/fuzz/test_fuzz.py`` runs each briefly and replays the regressions."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import struct
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from airlock.bundle.manifest import (
    FileEntry,
    Manifest,
    ModelEntry,
    PartEntry,
    canonical_bytes,
    parse_manifest,
    to_dict,
)
from airlock.bundle.pack import verify_archive
from airlock.bundle.signing import Trust, verify_signature
from airlock.delta.container import FORMAT_VERSION, MAGIC, PREAMBLE, TRAILER, TRAILER_MAGIC
from airlock.delta.header import read_delta_header
from airlock.errors import AirlockError
from airlock.safetensors_io import read_header

# every exit code the README documents for an error
DOCUMENTED = frozenset({1, 10, 11, 12, 13, 14, 15, 20, 21, 22, 30, 31, 32, 33, 34, 35, 36, 37, 38, 40, 50, 51,
                        52, 130})
SCRATCH = Path(os.environ.get("AIRLOCK_FUZZ_TMP", "/dev/shm" if os.path.isdir("/dev/shm") else
                              tempfile.gettempdir()))


def check(fn: Callable[[], object]) -> None:
    """Run one input: an AirlockError must be documented and one line; anything else propagates."""
    try:
        fn()
    except AirlockError as exc:
        if exc.exit_code not in DOCUMENTED or exc.exit_code == 1:
            raise AssertionError(f"undocumented exit code {exc.exit_code}: {exc}") from exc
        if "\n" in str(exc) or not str(exc):
            raise AssertionError(f"not a one-line message: {str(exc)!r}") from exc


@dataclass
class Target:
    name: str
    run: Callable[[bytes], None]
    seeds: Callable[[], list[bytes]]
    tokens: list[bytes] = field(default_factory=list)


# ------------------------------------------------------------------------------------ manifest


def sample_manifest() -> Manifest:
    h = "ab" * 32
    return Manifest(
        bundle_id="minilm-7", kind="full", compatible="appliance-x86-cpu", sequence=7,
        created="2026-12-01T00:00:00Z", builder_version="0.1.0",
        files={"models/minilm/1.0.0/config.json": FileEntry(14, h, 4096, [h]),
               "models/minilm/1.0.0/model.safetensors": FileEntry(9000, h, 4096, [h, h, h],
                                                                  [PartEntry(5000, h), PartEntry(4000, h)])},
        models=[ModelEntry(name="minilm", version="1.0.0", kind="full", path="models/minilm/1.0.0",
                           target_files={"config.json": {"size": 14, "sha256": h},
                                         "model.safetensors": {"size": 9000, "sha256": h}},
                           description="all-MiniLM-L6-v2", dependencies={"torch": "2.13.0"},
                           golden={"input": "hello", "expected": [0.1, -0.2], "tolerance": 0.01})])


def _manifest(data: bytes) -> None:
    check(lambda: parse_manifest(data))


def _manifest_seeds() -> list[bytes]:
    base = canonical_bytes(sample_manifest())
    doc = to_dict(sample_manifest())
    doc["kind"] = "delta"
    doc["models"][0].update(kind="delta", from_version="0.9.0", path="models/minilm/1.0.0/config.json")
    return [base, json.dumps(doc).encode(), b"{}", b"[]"]


MANIFEST_TOKENS = [b'"format_version"', b'"bundle_id"', b'"compatible"', b'"sequence"', b'"files"',
                   b'"models"', b'"parts"', b'"blocks"', b'"block_size"', b'"target_files"', b'"golden"',
                   b'"from_version"', b'"rollback"', b"true", b"null", b"1e999", b"NaN", b"-Infinity",
                   b'"\\ud800"', b'"\\u0000"', b"9223372036854775808", b'"../"', b'"/"', b'"\\u202e"',
                   b'"MANIFEST.json"', b'"manifest.json"', b".part000", b"[[[[", b"{\"a\":"]


def _manifest_struct(data: bytes) -> None:
    """Structure-aware: a valid manifest with one field (chosen by the input) replaced by a value the
    input builds: numbers at the edges, strings with hostile characters, nesting, wrong types."""
    import atheris

    fdp = atheris.FuzzedDataProvider(data)
    doc: Any = to_dict(sample_manifest())
    paths: list[list[Any]] = []

    def walk(v: Any, path: list[Any]) -> None:
        paths.append(path)
        if isinstance(v, dict):
            for k in list(v):
                walk(v[k], [*path, k])
        elif isinstance(v, list):
            for i, x in enumerate(v):
                walk(x, [*path, i])

    walk(doc, [])
    for _ in range(fdp.ConsumeIntInRange(1, 3)):
        path = paths[fdp.ConsumeIntInRange(0, len(paths) - 1)]
        value = _value(fdp, 0)
        if not path:
            doc = value
            break
        parent = doc
        try:
            for k in path[:-1]:
                parent = parent[k]
            if isinstance(parent, dict) and fdp.ConsumeBool():  # rename a key instead
                parent[_text(fdp)] = parent.pop(path[-1])
            else:
                parent[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue
    try:
        raw = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=fdp.ConsumeBool())
    except (ValueError, RecursionError):  # NaN is written; only json.dumps' own limits are skipped
        return
    check(lambda: parse_manifest(raw.encode("utf-8", "surrogatepass")))


_EDGE_INTS = [0, -1, 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, -(2**63) - 1, 10**30]
_EDGE_TEXT = ["", ".", "..", "../x", "/abs", "a\x00b", "a\nb", "\x1b[31m", "\u202e", "\ud800", "CON",
              "MANIFEST.json", "manifest.json", "x.part000", "x.airlock-partial", ".airlock-staging",
              "caf\u00e9", "cafe\u0301", "A" * 300, "[/]", "1.0.0\n", "current"]


def _text(fdp: Any) -> str:
    if fdp.ConsumeBool():
        return _EDGE_TEXT[fdp.ConsumeIntInRange(0, len(_EDGE_TEXT) - 1)]
    return str(fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 40)))


def _value(fdp: Any, depth: int) -> Any:
    kind = fdp.ConsumeIntInRange(0, 8)
    if kind == 0:
        return _EDGE_INTS[fdp.ConsumeIntInRange(0, len(_EDGE_INTS) - 1)]
    if kind == 1:
        return fdp.ConsumeInt(9)
    if kind == 2:
        return fdp.ConsumeRegularFloat() if fdp.ConsumeBool() else float("inf")
    if kind == 3:
        return _text(fdp)
    if kind == 4:
        return fdp.ConsumeBool()
    if kind == 5:
        return None
    if kind == 6 and depth < 40:
        return [_value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3))]
    if kind == 7 and depth < 40:
        return {_text(fdp): _value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3))}
    return "ab" * 32


# ----------------------------------------------------------------------------------- signature


@dataclass
class _Gpg:
    home: Path
    fpr: str


_GPG: _Gpg | None = None
SIGNED = canonical_bytes(sample_manifest())


def gpg_home() -> _Gpg:
    """A throwaway GNUPGHOME with one ed25519 signing key (made once per process)."""
    global _GPG
    if _GPG is None:
        home = Path(tempfile.mkdtemp(prefix="airlock-fuzz-gpg-"))
        os.chmod(home, 0o700)
        gpg = ["gpg", "--batch", "--yes", "--no-tty", "--homedir", str(home)]
        subprocess.run([*gpg, "--passphrase", "", "--quick-gen-key", "fuzz <fuzz@airlock.test>", "ed25519",
                        "sign", "never"], check=True, capture_output=True)
        out = subprocess.run([*gpg, "--with-colons", "--list-keys"], check=True, capture_output=True,
                             text=True).stdout
        _GPG = _Gpg(home, next(ln.split(":")[9] for ln in out.splitlines() if ln.startswith("fpr:")))
    return _GPG


def sign(data: bytes, *extra: str) -> bytes:
    g = gpg_home()
    return subprocess.run(["gpg", "--batch", "--yes", "--no-tty", "--homedir", str(g.home), *extra,
                           "--local-user", g.fpr + "!", "--armor", "--detach-sign", "--output", "-", "-"],
                          input=data, check=True, capture_output=True).stdout


def _trust() -> Trust:
    g = gpg_home()
    return Trust([g.fpr], gnupghome=g.home)


def _signature(data: bytes) -> None:
    trust = _trust()
    check(lambda: verify_signature(SIGNED, data, trust))


def _signature_seeds() -> list[bytes]:
    good = sign(SIGNED)
    return [good, sign(SIGNED, "--digest-algo", "SHA1"), sign(SIGNED, "--textmode"),
            good.replace(b"-----BEGIN PGP SIGNATURE-----", b"-----BEGIN PGP MESSAGE-----"), good[:60]]


# ---------------------------------------------------------------------------------- safetensors


def _scratch(name: str, data: bytes) -> Path:
    path = SCRATCH / f"airlock-fuzz-{os.getpid()}-{name}"
    path.write_bytes(data)
    return path


def safetensors_bytes(header: dict[str, Any], data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _safetensors(data: bytes) -> None:
    path = _scratch("st", data)
    check(lambda: read_header(path))


def _safetensors_seeds() -> list[bytes]:
    return [
        safetensors_bytes({"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
                           "b": {"dtype": "BF16", "shape": [3], "data_offsets": [16, 22]},
                           "__metadata__": {"format": "pt"}}, bytes(22)),
        safetensors_bytes({}, b""),
        safetensors_bytes({"x": {"dtype": "I64", "shape": [], "data_offsets": [0, 8]}}, bytes(8)),
    ]


# ---------------------------------------------------------------------------------- delta index


def delta_container(raw_index: bytes, records: bytes = b"") -> bytes:
    """A delta file around ``raw_index`` (the decompressed index): preamble, records, the index
    compressed, and a trailer with the right offsets and checksum, so the fuzzer reaches the index."""
    blob = zstandard.ZstdCompressor(level=1).compress(raw_index)
    pre = PREAMBLE.pack(MAGIC, FORMAT_VERSION, 0)
    off = len(pre) + len(records)
    return pre + records + blob + TRAILER.pack(off, len(blob), hashlib.sha256(blob).digest(), TRAILER_MAGIC)


def _delta_index(data: bytes) -> None:
    path = _scratch("delta", delta_container(data))
    check(lambda: read_delta_header(path))


def _delta_file(data: bytes) -> None:
    path = _scratch("deltaf", data)
    check(lambda: read_delta_header(path))


def real_delta() -> bytes:
    """A small real delta (two safetensors versions) made by Airlock itself."""
    from airlock.delta.make import make_delta
    from airlock.safetensors_io import write_safetensors

    with tempfile.TemporaryDirectory() as td:
        for ver, flip in (("old", 0), ("new", 1)):
            d = Path(td) / ver
            d.mkdir()
            a = bytearray(random.Random(1).randbytes(4096))
            a[100] ^= flip
            write_safetensors(d / "model.safetensors", [("w", "F32", [32, 32], [bytes(a)]),
                                                        ("b", "F16", [8], [bytes(16)])])
            (d / "config.json").write_text('{"hidden": 8}\n' if not flip else '{"hidden": 9}\n')
        out = Path(td) / "d.aldelta"
        make_delta(Path(td) / "old", Path(td) / "new", out, from_version="1.0.0", to_version="1.1.0",
                   workers=1)
        return out.read_bytes()


def raw_index_of(delta: bytes) -> bytes:
    off, length, _digest, _magic = TRAILER.unpack(delta[-TRAILER.size:])
    return zstandard.ZstdDecompressor().decompress(delta[off:off + length], max_output_size=1 << 26)


def _delta_index_seeds() -> list[bytes]:
    return [raw_index_of(real_delta()), b"", struct.pack("<I", 2) + b"{}"]


def _delta_file_seeds() -> list[bytes]:
    return [real_delta(), PREAMBLE.pack(MAGIC, 1, 0)]


# ----------------------------------------------------------------------------------------- tar


def _tar(data: bytes) -> None:
    path = _scratch("tar", data)
    trust = _trust()
    check(lambda: verify_archive(path, trust))


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def _tar_seeds() -> list[bytes]:
    payload = b'{"hidden": 8}\n'
    h = hashlib.sha256(payload).hexdigest()
    m = Manifest(bundle_id="fuzz-1", kind="full", compatible="fuzz", sequence=1,
                 created="2026-12-01T00:00:00Z", builder_version="0.1.0",
                 files={"models/m/1.0.0/config.json": FileEntry(len(payload), h, 4096, [h])})
    data = canonical_bytes(m)
    good = tar_bytes([("MANIFEST.json", data), ("MANIFEST.json.asc", sign(data)),
                      ("models/m/1.0.0/config.json", payload)])
    return [good, tar_bytes([("MANIFEST.json", data)]), good[:1024]]


TARGETS: dict[str, Target] = {t.name: t for t in [
    Target("manifest", _manifest, _manifest_seeds, MANIFEST_TOKENS),
    Target("manifest_struct", _manifest_struct, lambda: [bytes(range(256)), b"\x00" * 64]),
    Target("signature", _signature, _signature_seeds,
           [b"-----BEGIN PGP SIGNATURE-----", b"-----END PGP SIGNATURE-----", b"\n=", b"Version: "]),
    Target("safetensors", _safetensors, _safetensors_seeds,
           [b'"dtype"', b'"shape"', b'"data_offsets"', b'"__metadata__"', b'"F32"', b'"BF16"', b"1e999"]),
    Target("delta_index", _delta_index, _delta_index_seeds, [b'"columns"', b'"tensors"', b'"records"']),
    Target("delta_file", _delta_file, _delta_file_seeds, [MAGIC, TRAILER_MAGIC]),
    Target("tar", _tar, _tar_seeds, [b"MANIFEST.json", b"MANIFEST.json.asc", b"ustar", b"path="]),
]}
