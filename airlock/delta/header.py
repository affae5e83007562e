"""The decoded delta index (``DeltaHeader``): versions, both file/tensor inventories, both recipes.

Recipe pieces (rows of the ``pieces`` columns, handed out as lists), interpreted against the *input*
side of the chosen direction (source for forward, target for reverse):

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

import numpy as np

from airlock.delta.container import read_index
from airlock.delta.inventory import TENSOR_DIGEST, FileInfo
from airlock.delta.tables import PieceTable, RecordTable, TensorTable
from airlock.errors import DeltaFormatError, UnsafePathError
from airlock.fsutil import safe_relpath

INDEX_FORMAT_VERSION = 2


@dataclass(frozen=True, eq=False)
class FileRecipe:
    """One output file's recipe: its pieces are materialised on access (one file at a time)."""

    path: str
    table: PieceTable
    span: tuple[int, int]
    in_files: tuple[str, ...]
    """Input files of the direction, sorted: ``file`` and ``prefix`` pieces index into them."""

    @property
    def pieces(self) -> list[list[Any]]:
        out: list[list[Any]] = []
        for kind, a, b, c in self.table.rows(*self.span):
            if kind in ("file", "prefix"):
                if not 0 <= a < len(self.in_files):
                    raise DeltaFormatError(f"recipe for {self.path} references unknown input file #{a}",
                                           rule="delta-format")
                out.append(["file", self.in_files[a]] if kind == "file" else ["prefix", self.in_files[a], b])
            elif kind == "rec":
                out.append(["rec", a])
            else:
                out.append([kind, a, b, c])
        return out

    def whole_file(self) -> bool:
        """The output is an identical input file (a hard-link candidate)."""
        lo, hi = self.span
        return hi - lo == 1 and self.table.rows(lo, hi)[0][0] == "file"


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
    source_tensors: TensorTable
    target_tensors: TensorTable
    forward: list[FileRecipe]
    reverse: list[FileRecipe] | None
    records: RecordTable
    path: Path | None = None

    def recipes(self, reverse: bool) -> list[FileRecipe]:
        if reverse:
            if self.reverse is None:
                raise DeltaFormatError(f"{self.path}: this delta was made with --no-reverse; it cannot take "
                                       f"{self.to_version} back to {self.from_version}", path=str(self.path),
                                       rule="delta-not-reversible")
            return self.reverse
        return self.forward

    def sides(self, reverse: bool) -> tuple[dict[str, FileInfo], TensorTable, dict[str, FileInfo]]:
        """(input files, input tensors, output files) for the direction."""
        if reverse:
            return self.target_files, self.target_tensors, self.source_files
        return self.source_files, self.source_tensors, self.target_files

    def payload_bytes(self) -> int:
        return int(self.records.column("length").sum())

    def summary(self) -> dict[str, Any]:
        from airlock.delta.codec import CODEC_NAMES

        codecs = self.records.column("codec")
        by_codec: dict[str, dict[str, int]] = {}
        for code in np.unique(codecs).tolist():
            sel = codecs == code
            by_codec[CODEC_NAMES.get(code, str(code))] = {
                "count": int(sel.sum()), "bytes": int(self.records.column("length")[sel].sum()),
                "raw_bytes": int(self.records.column("raw_len")[sel].sum())}
        return {
            "format_version": self.format_version, "from_version": self.from_version,
            "to_version": self.to_version, "source_id": self.source_id, "target_id": self.target_id,
            "reversible": self.reversible, "chunk_bytes": self.chunk_bytes, "created_by": self.created_by,
            "source_files": {k: {"size": v.size, "sha256": v.sha256} for k, v in self.source_files.items()},
            "target_files": {k: {"size": v.size, "sha256": v.sha256} for k, v in self.target_files.items()},
            "source_tensors": len(self.source_tensors), "target_tensors": len(self.target_tensors),
            "records": by_codec, "payload_bytes": self.payload_bytes(),
        }


def _files(obj: Any) -> dict[str, FileInfo]:
    out: dict[str, FileInfo] = {}
    for rel, v in obj.items():
        safe_relpath(rel)
        out[rel] = FileInfo(int(v["size"]), str(v["sha256"]))
    return out


def _paths(obj: Any) -> list[str]:
    out = [str(p) for p in obj]
    for p in out:
        safe_relpath(p)
    return out


def _recipes(paths: list[str], table: PieceTable, base: int,
             in_files: dict[str, FileInfo]) -> list[FileRecipe]:
    names = tuple(sorted(in_files))
    return [FileRecipe(p, table, table.recipe_span(base + i), names) for i, p in enumerate(paths)]


def parse_header(meta: dict[str, Any], columns: dict[str, np.ndarray], records: RecordTable,
                 path: Path | None = None) -> DeltaHeader:
    try:
        if meta.get("format") != "airlock-delta":
            raise ValueError("index does not describe an airlock delta")
        if meta.get("format_version") != INDEX_FORMAT_VERSION:
            raise ValueError(f"index format_version {meta.get('format_version')!r}, "
                             f"expected {INDEX_FORMAT_VERSION}")
        if meta.get("tensor_digest") != TENSOR_DIGEST:
            raise ValueError(f"tensor digest {meta.get('tensor_digest')!r}, expected {TENSOR_DIGEST!r}")
        fwd = _paths(meta["forward"])
        rev = None if meta["reverse"] is None else _paths(meta["reverse"])
        pieces = PieceTable.load(columns, len(fwd) + len(rev or []))
        source_files, target_files = _files(meta["source_files"]), _files(meta["target_files"])
        return DeltaHeader(
            format_version=int(meta["format_version"]),
            from_version=str(meta["from_version"]), to_version=str(meta["to_version"]),
            source_id=str(meta["source_id"]), target_id=str(meta["target_id"]),
            reversible=bool(meta["reversible"]) and rev is not None,
            chunk_bytes=int(meta["chunk_bytes"]), created_by=str(meta.get("created_by", "")),
            source_files=source_files, target_files=target_files,
            source_tensors=TensorTable.load(meta["source_tensors"], columns, "source_tensors"),
            target_tensors=TensorTable.load(meta["target_tensors"], columns, "target_tensors"),
            forward=_recipes(fwd, pieces, 0, source_files),
            reverse=None if rev is None else _recipes(rev, pieces, len(fwd), target_files),
            records=records, path=path,
        )
    except DeltaFormatError as exc:
        raise DeltaFormatError(f"{path}: {exc}", path=str(path), rule=exc.rule) from exc
    except UnsafePathError as exc:
        raise DeltaFormatError(f"{path}: unsafe path in delta index: {exc}", path=str(path),
                               rule="delta-format") from exc
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise DeltaFormatError(f"{path}: delta index is malformed ({exc})", path=str(path),
                               rule="delta-format") from exc


def read_delta_header(delta_path: Path) -> DeltaHeader:
    """Validate the container and decode its index (records are not read)."""
    index = read_index(Path(delta_path))
    return parse_header(index.meta, index.columns, index.records, Path(delta_path))
