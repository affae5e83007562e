"""Inventory of a model directory: every file with its sha256, and every tensor of every safetensors
file with its location and XXH3-128 digest (files: sha256), computed in one streaming pass per file."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import xxhash

from airlock.delta.tables import TensorTable
from airlock.errors import UnsafePathError
from airlock.fsutil import safe_relpath
from airlock.hashing import iter_views, tree_files
from airlock.parallel import ordered_map
from airlock.safetensors_io import read_header

Progress = Callable[[int], None]
TENSOR_DIGEST = "xxh3-128"
"""Tensors are told apart by XXH3-128 of their bytes (~15 GB/s, so scanning costs one sha256 pass
per file instead of two). It only decides identity, never integrity: a collision would make a copy
piece of the wrong bytes, and apply would then refuse the output by its file sha256."""


@dataclass(frozen=True, slots=True)
class FileInfo:
    size: int
    sha256: str


@dataclass
class Inventory:
    root: Path
    files: dict[str, FileInfo] = field(default_factory=dict)
    tensors: TensorTable = field(default_factory=lambda: TensorTable.concat([]))
    headers: dict[str, bytes] = field(default_factory=dict)
    """The raw ``8 + N`` header bytes of each safetensors file."""
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)
    """The tensor ids ``[lo, hi)`` of each safetensors file, in data order."""

    def content_id(self) -> str:
        return content_id(self.files)


def content_id(files: dict[str, FileInfo]) -> str:
    """A version id derived from content: sha256 over the sorted (path, sha256) list."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(f"{rel}\x00{files[rel].sha256}\n".encode())
    return "sha256-" + h.hexdigest()


def hash_regions(path: Path, regions: list[tuple[int, int]],
                 progress: Progress | None = None) -> tuple[int, str, list[bytes]]:
    """Stream ``path`` once: (size, hex sha256 of the file, raw XXH3-128 of each ``[start, end)``
    region). ``regions`` must be sorted and non-overlapping."""
    whole = hashlib.sha256()
    digests: list[bytes] = []
    ri = 0
    cur = xxhash.xxh3_128()
    pos = 0
    with open(path, "rb") as fh:
        for view in iter_views(fh):
            whole.update(view)
            end = pos + len(view)
            while ri < len(regions):
                start, stop = regions[ri]
                lo, hi = max(start, pos), min(stop, end)
                if lo < hi:
                    cur.update(view[lo - pos:hi - pos])
                if stop <= end:
                    digests.append(cur.digest())
                    cur.reset()
                    ri += 1
                else:
                    break
            pos = end
            if progress:
                progress(len(view))
    while ri < len(regions):  # empty tensors at the end, or a file shorter than its header claims
        digests.append(cur.digest())
        cur.reset()
        ri += 1
    return pos, whole.hexdigest(), digests


def is_safetensors(rel: str) -> bool:
    return rel.endswith(".safetensors")


def model_paths(root: Path) -> list[str]:
    """Relative paths of the model's files; symlinks and special files are refused."""
    rels = tree_files(root)
    for rel in rels:
        safe_relpath(rel)
        mode = os.lstat(root / rel).st_mode
        if not stat.S_ISREG(mode):
            raise UnsafePathError(f"{root / rel}: not a regular file (symlink or special file)",
                                  path=str(root / rel), rule="path-type")
    return rels


def _scan_file(root: Path, rel: str,
               progress: Progress | None) -> tuple[FileInfo, bytes | None, TensorTable | None]:
    path = root / rel
    if not is_safetensors(rel):
        size, sha, _ = hash_regions(path, [], progress)
        return FileInfo(size, sha), None, None
    header = read_header(path)
    regions = [(header.data_start + t.start, header.data_start + t.end) for t in header.tensors]
    size, sha, digests = hash_regions(path, regions, progress)
    table = TensorTable.of_file(rel, header.tensors, header.data_start, digests)
    return FileInfo(size, sha), header.raw, table


def scan(root: Path, progress: Progress | None = None) -> Inventory:
    """Hash every file of the model and each tensor (files on both cores: hashlib releases the GIL)."""
    inv = Inventory(root)
    rels = model_paths(root)
    tables: list[TensorTable] = []
    count = 0
    for rel, (info, raw, table) in zip(rels, ordered_map(lambda r: _scan_file(root, r, progress), rels),
                                       strict=True):
        if raw is not None and table is not None:
            inv.headers[rel] = raw
            inv.spans[rel] = (count, count + len(table))
            count += len(table)
            tables.append(table)
        inv.files[rel] = info
    inv.tensors = TensorTable.concat(tables)
    return inv


def total_bytes(root: Path) -> int:
    return sum((root / rel).stat().st_size for rel in model_paths(root))
