"""The column tables of the delta index: round trips, and a malformed column layout is refused."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zstandard

from airlock.delta import make_delta, read_delta_header
from airlock.delta.container import INDEX_PREFIX, TRAILER, TRAILER_MAGIC
from airlock.delta.tables import (
    PieceTable,
    RecordTable,
    TensorTable,
    pack_columns,
    unpack_columns,
)
from airlock.errors import DeltaFormatError
from airlock.safetensors_io import TensorInfo
from tests.delta.helpers import nudge, rand_tensor, write_model


def _file(name: str, prefix: str, n: int, base: int = 8) -> TensorTable:
    infos = [TensorInfo(f"{prefix}.{i}.wëight", "BF16" if i % 2 else "F8_E4M3", (i + 1, 3) if i % 3 else (),
                        16 * i, 16 * i + 16) for i in range(n)]
    return TensorTable.of_file(name, infos, base, [bytes([i]) * 16 for i in range(n)])


def test_tensor_table_round_trips_through_columns() -> None:
    a = _file("a.safetensors", "a", 5)
    b = _file("b.safetensors", "b", 3, base=100)
    empty = _file("c.safetensors", "c", 0)
    table = TensorTable.concat([a, empty, b]).truncated()
    layout, parts = pack_columns(table.columns("t"))
    cols = unpack_columns(layout, b"".join(parts))
    back = TensorTable.load(json.loads(json.dumps(table.meta())), cols, "t")
    assert list(back) == list(table)
    assert back[6].file == "b.safetensors" and back[6].name == "b.1.wëight" and back[6].offset == 116
    assert back[0].shape == () and back[1].shape == (2, 3) and back[1].dtype == "BF16"
    assert back[1].digest == "01" * 8
    assert back.name_list() == [t.name for t in table]


def test_piece_table_merges_contiguous_copies_but_not_across_a_barrier() -> None:
    p = PieceTable()
    p.append("copy", 3, 0, 10)
    p.append("copy", 3, 10, 5)  # contiguous: merged
    p.append("copy", 4, 15, 5)  # another tensor: not merged
    p.barrier = len(p)
    p.append("copy", 4, 20, 5)  # contiguous but behind the barrier: kept apart
    p.end_recipe()
    assert p.rows(*p.recipe_span(0)) == [("copy", 3, 0, 15), ("copy", 4, 15, 5), ("copy", 4, 20, 5)]


def _index(path: Path) -> tuple[dict[str, Any], bytes, int]:
    raw = path.read_bytes()
    off, length, _, _ = TRAILER.unpack(raw[-TRAILER.size:])
    index = zstandard.ZstdDecompressor().decompress(raw[off:off + length])
    (n,) = INDEX_PREFIX.unpack_from(index)
    return json.loads(index[8:8 + n]), index[8 + n:], off


def _rewrite(path: Path, meta: dict[str, Any], columns: bytes, off: int) -> None:
    body = json.dumps(meta).encode()
    body += b" " * (-len(body) % 8)
    blob = zstandard.ZstdCompressor().compress(INDEX_PREFIX.pack(len(body)) + body + columns)
    data = path.read_bytes()[:off]
    path.write_bytes(data + blob + TRAILER.pack(off, len(blob), hashlib.sha256(blob).digest(), TRAILER_MAGIC))


@pytest.fixture
def delta(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    old = [rand_tensor(rng, f"w{i}", "F32", (64, 8)) for i in range(6)]
    new = [(n, d, s, nudge(b, d, rng) if n == "w2" else b) for n, d, s, b in old]
    write_model(tmp_path / "old", {"a.safetensors": old[:3], "b.safetensors": old[3:]})
    write_model(tmp_path / "new", {"a.safetensors": new[:3], "b.safetensors": new[3:]})
    make_delta(tmp_path / "old", tmp_path / "new", tmp_path / "d.aldelta")
    return tmp_path / "d.aldelta"


@pytest.mark.parametrize("tamper", [
    "column past the end", "wrong column type", "short column", "name ends past the names",
    "unknown piece kind", "records do not tile", "file index out of range", "missing column",
])
def test_malformed_columns_are_refused_with_a_clear_error(delta: Path, tamper: str) -> None:
    read_delta_header(delta)  # sound before the change
    meta, cols, off = _index(delta)
    layout = meta["columns"]
    data = bytearray(cols)

    def col(name: str) -> np.ndarray:
        code, shape, pos = layout[name]
        dtype = np.dtype(f"<{code}")
        return np.frombuffer(data, dtype, int(np.prod(shape)), pos)

    if tamper == "column past the end":
        layout["records.offset"][2] = len(data)
    elif tamper == "wrong column type":
        layout["pieces.kind"][0] = "u8"
    elif tamper == "short column":
        layout["source_tensors.nbytes"][1] = [1]
    elif tamper == "name ends past the names":
        end = col("target_tensors.name_end").copy()
        end[-1] += 1
        pos = layout["target_tensors.name_end"][2]
        data[pos:pos + end.nbytes] = end.tobytes()
    elif tamper == "unknown piece kind":
        pos = layout["pieces.kind"][2]
        data[pos] = 9
    elif tamper == "records do not tile":
        pos = layout["records.offset"][2]
        data[pos:pos + 8] = struct.pack("<Q", 17)
    elif tamper == "file index out of range":
        meta["source_tensors"]["files"] = []
    elif tamper == "missing column":
        del layout["target_tensors.digest"]
    _rewrite(delta, meta, bytes(data), off)
    with pytest.raises(DeltaFormatError, match=r"malformed|outside|do not tile|out of range|wrong type"):
        read_delta_header(delta)


def test_record_table_checks_section_lengths() -> None:
    t = RecordTable()
    t.append(16, 10, b"\x01" * 32, 1, 2, 20, [4, 6])
    t.append(26, 5, b"\x02" * 32, 0, 1, 5, [5])
    cols = dict(t.columns())
    assert RecordTable.load(cols, 16, 31)[1].planes == (5,)
    cols["records.planes"] = np.array([4, 6, 4], np.uint64)
    with pytest.raises(DeltaFormatError, match="section lengths"):
        RecordTable.load(cols, 16, 31)
