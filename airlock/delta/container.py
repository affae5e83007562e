"""The ``.aldelta`` container: preamble, records, zstd-compressed JSON index, trailer.

Every byte is covered by a check: the preamble by its exact magic/version/flags, each record by its
sha256 in the index, the index by the sha256 in the trailer, the trailer by its magic and by the
index offsets having to tile the file exactly. See docs/delta-format.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard

from airlock.delta import codec
from airlock.errors import DeltaFormatError
from airlock.faults import fault_point

MAGIC = b"ALDELTA\x00"
TRAILER_MAGIC = b"ALDEND\x00\x00"
FORMAT_VERSION = 1
PREAMBLE = struct.Struct("<8sII")  # magic, format version, flags
TRAILER = struct.Struct("<QQ32s8s")  # index offset, index length, sha256(index), magic
DIGEST_HEX = 16
"""Records are checked with the first 64 bits of their sha256: corruption detection for the
container (the signed bundle manifest authenticates the file, the outputs are checked in full)."""


def record_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:DIGEST_HEX]
MAX_INDEX = 512 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Record:
    offset: int
    length: int
    sha256: str
    codec: int
    width: int
    raw_len: int
    planes: tuple[int, ...]

    def as_list(self) -> list[Any]:
        return [self.offset, self.length, self.sha256, self.codec, self.width, self.raw_len,
                list(self.planes)]


def _bad(path: Path | str, message: str, rule: str = "delta-format") -> DeltaFormatError:
    return DeltaFormatError(f"{path}: {message}", path=str(path), rule=rule)


INDEX_LEVEL = 9


class DeltaWriter:
    """Append records, then ``finish(index)``. Written to ``path`` directly; the caller renames."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh = open(path, "wb")  # noqa: SIM115 - closed in finish/abort
        self._fh.write(PREAMBLE.pack(MAGIC, FORMAT_VERSION, 0))
        self._pos = PREAMBLE.size
        self.records: list[Record] = []

    def add(self, enc: codec.Encoded) -> int:
        self._fh.write(enc.payload)
        rec = Record(self._pos, len(enc.payload), record_digest(enc.payload), enc.codec,
                     enc.width, enc.raw_len, tuple(enc.planes))
        self._pos += len(enc.payload)
        self.records.append(rec)
        if len(self.records) == 2:
            fault_point("delta.make.mid-write")
        return len(self.records) - 1

    def finish(self, index: dict[str, Any]) -> int:
        index = {**index, "records": [r.as_list() for r in self.records]}
        raw = json.dumps(index, separators=(",", ":")).encode()
        # level 9: an index of mostly hex digests gains little from level 19, whose context for a
        # multi-MB input would be the largest allocation of the whole make (~90 MiB at 8 GB)
        blob = zstandard.ZstdCompressor(level=INDEX_LEVEL).compress(raw)
        del raw
        self._fh.write(blob)
        self._fh.write(TRAILER.pack(self._pos, len(blob), hashlib.sha256(blob).digest(), TRAILER_MAGIC))
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        return self._pos + len(blob) + TRAILER.size

    def abort(self) -> None:
        self._fh.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def read_index(path: Path) -> tuple[dict[str, Any], list[Record]]:
    """Validate preamble, trailer and index of a delta file; return the index and its records."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            pre = fh.read(PREAMBLE.size)
            if len(pre) < PREAMBLE.size or pre[:8] != MAGIC:
                raise _bad(path, "not an Airlock delta (bad magic)", "delta-foreign")
            _, version, flags = PREAMBLE.unpack(pre)
            if version != FORMAT_VERSION:
                raise _bad(path, f"unsupported delta format version {version} (this Airlock reads "
                           f"{FORMAT_VERSION})", "delta-version")
            if flags != 0:
                raise _bad(path, f"unknown flags {flags:#x} in the preamble")
            if size < PREAMBLE.size + TRAILER.size:
                raise _bad(path, "truncated: no trailer", "delta-truncated")
            fh.seek(size - TRAILER.size)
            off, length, digest, tmagic = TRAILER.unpack(fh.read(TRAILER.size))
            if tmagic != TRAILER_MAGIC:
                raise _bad(path, "truncated or corrupt: trailer magic missing", "delta-truncated")
            if off < PREAMBLE.size or length > MAX_INDEX or off + length != size - TRAILER.size:
                raise _bad(path, "trailer offsets do not match the file size", "delta-truncated")
            fh.seek(off)
            blob = fh.read(length)
    except OSError as exc:
        raise _bad(path, f"cannot read ({exc.strerror})", "delta-io") from exc
    if hashlib.sha256(blob).digest() != digest:
        raise _bad(path, "index checksum mismatch (corrupt index or trailer)", "delta-checksum")
    try:
        index = json.loads(zstandard.ZstdDecompressor().decompress(blob, max_output_size=MAX_INDEX))
        records = [Record(int(r[0]), int(r[1]), str(r[2]), int(r[3]), int(r[4]), int(r[5]),
                          tuple(int(p) for p in r[6])) for r in index.pop("records")]
    except (zstandard.ZstdError, ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise _bad(path, f"index is malformed ({exc})") from exc
    pos = PREAMBLE.size
    for i, rec in enumerate(records):
        if rec.offset != pos or rec.length < 0 or sum(rec.planes) != rec.length or rec.raw_len < 0:
            raise _bad(path, f"record {i} extent is inconsistent with the index")
        pos += rec.length
    if pos != off:
        raise _bad(path, "records do not end where the index starts")
    return index, records


def verify_records(path: Path, records: list[Record]) -> None:
    """Check every record's sha256 in one sequential pass (also those this direction will not use)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(PREAMBLE.size)
            for i, rec in enumerate(records):
                data = fh.read(rec.length)
                if len(data) != rec.length:
                    raise _bad(path, f"record {i} is truncated", "delta-truncated")
                if record_digest(data) != rec.sha256:
                    raise _bad(path, f"record {i} checksum mismatch (corrupt data at offset {rec.offset})",
                               "delta-checksum")
    except OSError as exc:
        raise _bad(path, f"cannot read ({exc.strerror})", "delta-io") from exc


class RecordReader:
    """Thread-safe access to records by id (``os.pread``), each checked against its sha256."""

    def __init__(self, path: Path, records: list[Record]) -> None:
        self.path = path
        self.records = records
        self._fd = os.open(path, os.O_RDONLY)

    def close(self) -> None:
        os.close(self._fd)

    def payload(self, rec_id: int) -> tuple[Record, bytes]:
        if not 0 <= rec_id < len(self.records):
            raise _bad(self.path, f"reference to unknown record {rec_id}")
        rec = self.records[rec_id]
        data = os.pread(self._fd, rec.length, rec.offset)
        if len(data) != rec.length:
            raise _bad(self.path, f"record {rec_id} is truncated", "delta-truncated")
        if record_digest(data) != rec.sha256:
            raise _bad(self.path, f"record {rec_id} checksum mismatch (corrupt data at offset {rec.offset})",
                       "delta-checksum")
        return rec, data

    def decode(self, rec_id: int, base: bytes | None = None, *, reverse: bool = False,
               dtype: str = "") -> bytes:
        rec, data = self.payload(rec_id)
        try:
            return codec.decode(rec.codec, rec.width, rec.raw_len, data, list(rec.planes), base,
                                reverse=reverse, dtype=dtype)
        except DeltaFormatError as exc:
            raise _bad(self.path, f"record {rec_id}: {exc}", exc.rule) from exc
