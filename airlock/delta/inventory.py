"""Inventory of a model directory: every file with its sha256, and every tensor of every safetensors
file with its location and sha256, computed in one streaming pass per file."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airlock.errors import UnsafePathError
from airlock.fsutil import safe_relpath
from airlock.hashing import CHUNK, tree_files
from airlock.parallel import ordered_map
from airlock.safetensors_io import SafetensorsHeader, read_header

Progress = Callable[[int], None]
TENSOR_DIGEST_HEX = 16


@dataclass(frozen=True, slots=True)
class FileInfo:
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class TensorEntry:
    """A tensor of one model version; ``offset`` is absolute within ``file``."""

    file: str
    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    sha256: str

    def as_list(self) -> list[Any]:
        """Stored form; the tensor digest is shortened to ``TENSOR_DIGEST_HEX`` characters (it names
        the first differing tensor of a source whose full-file sha256 already failed)."""
        return [self.file, self.name, self.dtype, list(self.shape), self.offset, self.nbytes,
                self.sha256[:TENSOR_DIGEST_HEX]]

    @classmethod
    def from_list(cls, v: list[Any], names: dict[str, str] | None = None) -> TensorEntry:
        """``names`` shares one string object per file name and dtype across the entries (a parsed
        index otherwise holds a copy per tensor, and a model has ~10^5 tensors)."""
        file, dtype = str(v[0]), str(v[2])
        if names is not None:
            file, dtype = names.setdefault(file, file), names.setdefault(dtype, dtype)
        return cls(file, str(v[1]), dtype, tuple(int(d) for d in v[3]), int(v[4]), int(v[5]), str(v[6]))


@dataclass
class Inventory:
    root: Path
    files: dict[str, FileInfo] = field(default_factory=dict)
    tensors: list[TensorEntry] = field(default_factory=list)
    headers: dict[str, SafetensorsHeader] = field(default_factory=dict)

    def content_id(self) -> str:
        return content_id(self.files)


def content_id(files: dict[str, FileInfo]) -> str:
    """A version id derived from content: sha256 over the sorted (path, sha256) list."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(f"{rel}\x00{files[rel].sha256}\n".encode())
    return "sha256-" + h.hexdigest()


def hash_regions(path: Path, regions: list[tuple[int, int]],
                 progress: Progress | None = None) -> tuple[int, str, list[str]]:
    """Stream ``path`` once: (size, sha256 of the file, sha256 of each ``[start, end)`` region).
    ``regions`` must be sorted and non-overlapping."""
    whole = hashlib.sha256()
    digests: list[str] = []
    ri = 0
    cur = hashlib.sha256()
    pos = 0
    with open(path, "rb") as fh:
        while True:
            data = fh.read(CHUNK)
            if not data:
                break
            whole.update(data)
            end = pos + len(data)
            while ri < len(regions):
                start, stop = regions[ri]
                lo, hi = max(start, pos), min(stop, end)
                if lo < hi:
                    cur.update(data[lo - pos:hi - pos])
                if stop <= end:
                    digests.append(cur.hexdigest())
                    cur = hashlib.sha256()
                    ri += 1
                else:
                    break
            pos = end
            if progress:
                progress(len(data))
    while ri < len(regions):  # empty tensors at the end, or a file shorter than its header claims
        digests.append(cur.hexdigest())
        cur = hashlib.sha256()
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
               progress: Progress | None) -> tuple[FileInfo, SafetensorsHeader | None, list[TensorEntry]]:
    path = root / rel
    if not is_safetensors(rel):
        size, sha, _ = hash_regions(path, [], progress)
        return FileInfo(size, sha), None, []
    header = read_header(path)
    regions = [(header.data_start + t.start, header.data_start + t.end) for t in header.tensors]
    size, sha, digests = hash_regions(path, regions, progress)
    tensors = [TensorEntry(rel, t.name, t.dtype, t.shape, header.data_start + t.start, t.nbytes, d)
               for t, d in zip(header.tensors, digests, strict=True)]
    return FileInfo(size, sha), header, tensors


def scan(root: Path, progress: Progress | None = None) -> Inventory:
    """Hash every file of the model and each tensor (files on both cores: hashlib releases the GIL)."""
    inv = Inventory(root)
    rels = model_paths(root)
    for rel, (info, header, tensors) in zip(rels, ordered_map(lambda r: _scan_file(root, r, progress), rels),
                                            strict=True):
        if header is not None:
            inv.headers[rel] = header
        inv.tensors.extend(tensors)
        inv.files[rel] = info
    return inv


def total_bytes(root: Path) -> int:
    return sum((root / rel).stat().st_size for rel in model_paths(root))
