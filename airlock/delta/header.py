"""The decoded delta index (``DeltaHeader``): versions, both file/tensor inventories, both recipes.

Recipe pieces (JSON lists), interpreted against the *input* side of the chosen direction (source
for forward, target for reverse):

* ``["file", rel]``            the whole input file ``rel`` (identical content; hard-link candidate)
* ``["rec", rid]``             the decoded bytes of record ``rid`` (zstd or byte planes, no base)
* ``["copy", tid, off, n]``    ``n`` bytes of input tensor ``tid`` from byte ``off``
* ``["diff", tid, off, rid]``  record ``rid`` (xor / zdiff) applied to the same-length range of input
                               tensor ``tid`` starting at ``off``
* ``["prefix", rel, rid]``     record ``rid`` decompressed with input file ``rel`` as zstd prefix
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airlock.delta.container import Record, read_index
from airlock.delta.inventory import FileInfo, TensorEntry
from airlock.errors import DeltaFormatError, UnsafePathError
from airlock.fsutil import safe_relpath

PIECE_ARITY = {"file": 2, "rec": 2, "copy": 4, "diff": 4, "prefix": 3}


@dataclass(slots=True)
class FileRecipe:
    path: str
    pieces: list[list[Any]]


@dataclass
class DeltaHeader:
    format_version: int
    from_version: str
    to_version: str
    source_id: str
    target_id: str
    reversible: bool
    chunk_bytes: int
    created_by: str
    source_files: dict[str, FileInfo]
    target_files: dict[str, FileInfo]
    source_tensors: list[TensorEntry]
    target_tensors: list[TensorEntry]
    forward: list[FileRecipe]
    reverse: list[FileRecipe] | None
    records: list[Record]
    path: Path | None = None

    def recipes(self, reverse: bool) -> list[FileRecipe]:
        if reverse:
            if self.reverse is None:
                raise DeltaFormatError(f"{self.path}: this delta was made with --no-reverse; it cannot take "
                                       f"{self.to_version} back to {self.from_version}", path=str(self.path),
                                       rule="delta-not-reversible")
            return self.reverse
        return self.forward

    def sides(self, reverse: bool) -> tuple[dict[str, FileInfo], list[TensorEntry], dict[str, FileInfo]]:
        """(input files, input tensors, output files) for the direction."""
        if reverse:
            return self.target_files, self.target_tensors, self.source_files
        return self.source_files, self.source_tensors, self.target_files

    def payload_bytes(self) -> int:
        return sum(r.length for r in self.records)

    def summary(self) -> dict[str, Any]:
        by_codec: dict[str, list[int]] = {}
        from airlock.delta.codec import CODEC_NAMES

        for r in self.records:
            c = by_codec.setdefault(CODEC_NAMES.get(r.codec, str(r.codec)), [0, 0, 0])
            c[0] += 1
            c[1] += r.length
            c[2] += r.raw_len
        return {
            "format_version": self.format_version, "from_version": self.from_version,
            "to_version": self.to_version, "source_id": self.source_id, "target_id": self.target_id,
            "reversible": self.reversible, "chunk_bytes": self.chunk_bytes, "created_by": self.created_by,
            "source_files": {k: {"size": v.size, "sha256": v.sha256} for k, v in self.source_files.items()},
            "target_files": {k: {"size": v.size, "sha256": v.sha256} for k, v in self.target_files.items()},
            "source_tensors": len(self.source_tensors), "target_tensors": len(self.target_tensors),
            "records": {k: {"count": v[0], "bytes": v[1], "raw_bytes": v[2]} for k, v in by_codec.items()},
            "payload_bytes": self.payload_bytes(),
        }


def _files(obj: Any) -> dict[str, FileInfo]:
    out: dict[str, FileInfo] = {}
    for rel, v in obj.items():
        safe_relpath(rel)
        out[rel] = FileInfo(int(v["size"]), str(v["sha256"]))
    return out


def _recipes(obj: Any, n_records: int) -> list[FileRecipe]:
    out = []
    for r in obj:
        safe_relpath(r["path"])
        pieces = [list(p) for p in r["pieces"]]
        for p in pieces:
            if PIECE_ARITY.get(p[0]) != len(p):
                raise ValueError(f"bad piece {p!r} in {r['path']}")
        out.append(FileRecipe(str(r["path"]), pieces))
    return out


def parse_header(index: dict[str, Any], records: list[Record], path: Path | None = None) -> DeltaHeader:
    try:
        if index.get("format") != "airlock-delta":
            raise ValueError("index does not describe an airlock delta")
        rev = index["reverse"]
        names: dict[str, str] = {}
        return DeltaHeader(
            format_version=int(index["format_version"]),
            from_version=str(index["from_version"]), to_version=str(index["to_version"]),
            source_id=str(index["source_id"]), target_id=str(index["target_id"]),
            reversible=bool(index["reversible"]) and rev is not None,
            chunk_bytes=int(index["chunk_bytes"]), created_by=str(index.get("created_by", "")),
            source_files=_files(index["source_files"]), target_files=_files(index["target_files"]),
            source_tensors=[TensorEntry.from_list(t, names) for t in index["source_tensors"]],
            target_tensors=[TensorEntry.from_list(t, names) for t in index["target_tensors"]],
            forward=_recipes(index["forward"], len(records)),
            reverse=None if rev is None else _recipes(rev, len(records)),
            records=records, path=path,
        )
    except UnsafePathError as exc:
        raise DeltaFormatError(f"{path}: unsafe path in delta index: {exc}", path=str(path),
                               rule="delta-format") from exc
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise DeltaFormatError(f"{path}: delta index is malformed ({exc})", path=str(path),
                               rule="delta-format") from exc


def read_delta_header(delta_path: Path) -> DeltaHeader:
    """Validate the container and decode its index (records are not read)."""
    index, records = read_index(Path(delta_path))
    return parse_header(index, records, Path(delta_path))
