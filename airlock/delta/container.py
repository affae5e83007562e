"""The ``.aldelta`` container: preamble, records, zstd-compressed index (JSON + columns), trailer.

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

import numpy as np
import zstandard

from airlock.delta import codec
from airlock.delta.tables import RECORD_DIGEST, Record, RecordTable, pack_columns, unpack_columns
from airlock.errors import DeltaFormatError
from airlock.faults import fault_point

MAGIC = b"ALDELTA\x00"
TRAILER_MAGIC = b"ALDEND\x00\x00"
FORMAT_VERSION = 2
PREAMBLE = struct.Struct("<8sII")  # magic, format version, flags
TRAILER = struct.Struct("<QQ32s8s")  # index offset, index length, sha256(index), magic
DIGEST_HEX = 2 * RECORD_DIGEST
"""Records are checked with the first 64 bits of their sha256: corruption detection for the
container (the signed bundle manifest authenticates the file, the outputs are checked in full)."""


def record_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:DIGEST_HEX]


MAX_INDEX = 512 * 1024 * 1024


def _bad(path: Path | str, message: str, rule: str = "delta-format") -> DeltaFormatError:
    return DeltaFormatError(f"{path}: {message}", path=str(path), rule=rule)


INDEX_PARAMS = zstandard.ZstdCompressionParameters.from_level(9, window_log=23, hash_log=18, chain_log=18)
"""Level 9 with bounded tables: ~2 MiB of compressor state whatever the index size (plain level 9
sizes its tables to the input: ~10 MiB for a 4 MB index), the same ratio on these indexes. The
8 MiB window still reaches from one tensor table's names to the other's."""
INDEX_PREFIX = struct.Struct("<Q")  # length of the JSON part of the decompressed index


class DeltaWriter:
    """Append records, then ``finish(index)``. Written to ``path`` directly; the caller renames."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh = open(path, "wb")  # noqa: SIM115 - closed in finish/abort
        self._fh.write(PREAMBLE.pack(MAGIC, FORMAT_VERSION, 0))
        self._pos = PREAMBLE.size
        self.records = RecordTable()

    def add(self, enc: codec.Encoded) -> int:
        self._fh.write(enc.payload)
        digest = hashlib.sha256(enc.payload).digest()
        rid = self.records.append(self._pos, len(enc.payload), digest, enc.codec, enc.width, enc.raw_len,
                                  enc.planes)
        self._pos += len(enc.payload)
        if len(self.records) == 2:
            fault_point("delta.make.mid-write")
        return rid

    def finish(self, index: dict[str, Any], columns: dict[str, Any]) -> int:
        """Write the index: ``index`` (JSON) and ``columns`` (name -> numpy array), with the records."""
        layout, parts = pack_columns({**columns, **self.records.columns()})
        raw = json.dumps({**index, "columns": layout}, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # columns start 8-byte aligned
        whole = b"".join([INDEX_PREFIX.pack(len(raw)), raw, *parts])
        del raw, parts
        blob = zstandard.ZstdCompressor(compression_params=INDEX_PARAMS).compress(whole)
        del whole
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


@dataclass
class Index:
    """A decoded index: the JSON part, its columns (read-only views) and the record table."""

    meta: dict[str, Any]
    columns: dict[str, np.ndarray]
    records: RecordTable


def read_index(path: Path) -> Index:
    """Validate preamble, trailer and index of a delta file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            pre = fh.read(PREAMBLE.size)
            if len(pre) < PREAMBLE.size or pre[:8] != MAGIC:
                raise _bad(path, "not an Airlock delta (bad magic)", "delta-foreign")
            _, version, flags = PREAMBLE.unpack(pre)
            if version != FORMAT_VERSION:
                older = " (made by an older Airlock: make it again)" if version < FORMAT_VERSION else ""
                raise _bad(path, f"unsupported delta format version {version}; this Airlock reads "
                           f"{FORMAT_VERSION}{older}", "delta-version")
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
        raw = zstandard.ZstdDecompressor().decompress(blob, max_output_size=MAX_INDEX)
        del blob
        if len(raw) < INDEX_PREFIX.size:
            raise ValueError("index too short")
        (n,) = INDEX_PREFIX.unpack_from(raw)
        if INDEX_PREFIX.size + n > len(raw):
            raise ValueError("index JSON runs past the end of the index")
        meta = json.loads(raw[INDEX_PREFIX.size:INDEX_PREFIX.size + n])
        if not isinstance(meta, dict):
            raise ValueError("index JSON is not an object")
        columns = unpack_columns(meta.pop("columns"), memoryview(raw)[INDEX_PREFIX.size + n:])
        records = RecordTable.load(columns, PREAMBLE.size, off)
    except DeltaFormatError as exc:
        raise _bad(path, str(exc)) from exc
    except (zstandard.ZstdError, ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise _bad(path, f"index is malformed ({exc})") from exc
    return Index(meta, columns, records)


def verify_records(path: Path, records: RecordTable) -> None:
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

    def __init__(self, path: Path, records: RecordTable) -> None:
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
