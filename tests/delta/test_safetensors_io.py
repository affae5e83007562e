"""The safetensors reader: every malformed header is refused with TensorFormatError naming the rule;
valid files (every dtype, metadata, empty tensors, sharded index) parse and stream exactly."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from airlock.errors import TensorFormatError
from airlock.safetensors_io import (
    DTYPE_SIZES,
    MAX_HEADER_BYTES,
    build_header,
    iter_tensor_chunks,
    read_header,
    read_index,
    write_safetensors,
)


def _raw(path: Path, header: object, data: bytes = b"", *, raw_json: bytes | None = None) -> Path:
    body = raw_json if raw_json is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(body)) + body + data)
    return path


def _entry(dtype: str, shape: list[int], start: int, end: int) -> dict[str, object]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [start, end]}


def test_reads_file_written_by_the_safetensors_library(tmp_path: Path) -> None:
    arrays = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.array([1, 2], dtype=np.int64),
              "c": np.zeros((0, 4), dtype=np.float16)}
    path = tmp_path / "m.safetensors"
    safetensors.numpy.save_file(arrays, str(path), metadata={"format": "np"})
    h = read_header(path)
    assert h.metadata == {"format": "np"}
    assert {t.name: (t.dtype, t.shape) for t in h.tensors} == {
        "a": ("F32", (3, 4)), "b": ("I64", (2,)), "c": ("F16", (0, 4))}
    assert h.raw == path.read_bytes()[:h.data_start]
    with open(path, "rb") as fh:
        a = next(t for t in h.tensors if t.name == "a")
        chunks = list(iter_tensor_chunks(fh, h, a, chunk=10))
    assert all(len(c) % 4 == 0 for c in chunks)  # aligned to the element size even for odd chunk sizes
    assert b"".join(chunks) == arrays["a"].tobytes()


def test_writer_roundtrip_every_dtype(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    specs = [(f"t_{d}", d, (3, 2), rng.integers(0, 256, 6 * n, np.uint8).tobytes())
             for d, n in DTYPE_SIZES.items()]
    path = tmp_path / "all.safetensors"
    write_safetensors(path, [(n, d, s, [b[:5], b[5:]]) for n, d, s, b in specs], metadata={"k": "v"})
    h = read_header(path)
    assert [(t.name, t.dtype, t.shape) for t in h.tensors] == [(n, d, s) for n, d, s, _ in specs]
    with open(path, "rb") as fh:
        for t, (_, _, _, data) in zip(h.tensors, specs, strict=True):
            assert b"".join(iter_tensor_chunks(fh, h, t)) == data
    assert h.data_start % 8 == 0


def test_writer_refuses_wrong_byte_count(tmp_path: Path) -> None:
    with pytest.raises(TensorFormatError, match="needs 8"):
        write_safetensors(tmp_path / "x.safetensors", [("a", "F32", (2,), [b"1234"])])


BAD_HEADERS: list[tuple[str, object, bytes, str]] = [
    ("not-object", [1, 2], b"", "json"),
    ("unknown-dtype", {"a": _entry("F12", [1], 0, 2)}, b"\0\0", "dtype"),
    ("missing-key", {"a": {"dtype": "F32", "shape": [1]}}, b"\0" * 4, "entry"),
    ("extra-key", {"a": {**_entry("F32", [1], 0, 4), "x": 1}}, b"\0" * 4, "entry"),
    ("negative-dim", {"a": _entry("F32", [-1], 0, 4)}, b"\0" * 4, "shape"),
    ("float-dim", {"a": _entry("F32", [1.5], 0, 4)}, b"\0" * 4, "shape"),
    ("bool-dim", {"a": _entry("F32", [True], 0, 4)}, b"\0" * 4, "shape"),
    ("reversed-offsets", {"a": _entry("F32", [1], 4, 0)}, b"\0" * 4, "offsets"),
    ("three-offsets", {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}}, b"\0" * 4, "offsets"),
    ("size-mismatch", {"a": _entry("F32", [2], 0, 4)}, b"\0" * 4, "size"),
    ("overlap", {"a": _entry("F32", [2], 0, 8), "b": _entry("F32", [1], 4, 8)}, b"\0" * 8, "overlap"),
    ("gap", {"a": _entry("F32", [1], 0, 4), "b": _entry("F32", [1], 8, 12)}, b"\0" * 12, "gap"),
    ("out-of-bounds", {"a": _entry("F32", [4], 0, 16)}, b"\0" * 8, "bounds"),
    ("trailing-bytes", {"a": _entry("F32", [1], 0, 4)}, b"\0" * 9, "trailing"),
    ("not-starting-at-zero", {"a": _entry("F32", [1], 4, 8)}, b"\0" * 8, "gap"),
    ("bad-metadata", {"__metadata__": {"k": 1}}, b"", "metadata"),
]


@pytest.mark.parametrize(("case", "header", "data", "rule"), BAD_HEADERS, ids=[c[0] for c in BAD_HEADERS])
def test_rejects_malformed_header(tmp_path: Path, case: str, header: object, data: bytes, rule: str) -> None:
    path = _raw(tmp_path / f"{case}.safetensors", header, data)
    with pytest.raises(TensorFormatError) as err:
        read_header(path)
    assert err.value.rule == f"safetensors-{rule}"
    assert str(path) in str(err.value)


DUP = (b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
       b'"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}')


@pytest.mark.parametrize(("case", "content", "rule"), [
    ("empty", b"", "truncated"),
    ("short-prefix", b"\x05\0\0", "truncated"),
    ("length-past-eof", struct.pack("<Q", 1000) + b"{}", "truncated"),
    ("length-over-limit", struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{}", "header-size"),
    ("invalid-json", struct.pack("<Q", 5) + b"{abc}", "json"),
    ("invalid-utf8", struct.pack("<Q", 4) + b'{"\xff}', "json"),
    ("duplicate-key", struct.pack("<Q", len(DUP)) + DUP + b"\0", "json"),
])
def test_rejects_malformed_file(tmp_path: Path, case: str, content: bytes, rule: str) -> None:
    path = tmp_path / f"{case}.safetensors"
    path.write_bytes(content)
    with pytest.raises(TensorFormatError) as err:
        read_header(path)
    assert err.value.rule == f"safetensors-{rule}"


def test_header_bytes_reproduced_exactly(tmp_path: Path) -> None:
    # odd spacing and key order are kept: the raw header is what a delta stores
    raw_json = b'{ "b" : {"dtype":"U8","shape":[2],"data_offsets":[0,2]} ,"a":{"dtype":"U8","shape":[1],' \
               b'"data_offsets":[2,3]}}   '
    path = _raw(tmp_path / "odd.safetensors", None, b"xyz", raw_json=raw_json)
    h = read_header(path)
    assert h.raw == path.read_bytes()[:8 + len(raw_json)]
    assert [t.name for t in h.tensors] == ["b", "a"]


def test_sharded_index(tmp_path: Path) -> None:
    write_safetensors(tmp_path / "m-1.safetensors", [("a", "U8", (1,), [b"x"])])
    write_safetensors(tmp_path / "m-2.safetensors", [("b", "U8", (1,), [b"y"])])
    assert read_index(tmp_path) is None
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": "m-1.safetensors", "b": "m-2.safetensors"}}))
    assert read_index(tmp_path) == {"a": "m-1.safetensors", "b": "m-2.safetensors"}
    index.write_text(json.dumps({"weight_map": {"a": "m-2.safetensors"}}))
    with pytest.raises(TensorFormatError, match="does not contain it"):
        read_index(tmp_path)
    index.write_text(json.dumps({"weight_map": {"a": "../m-1.safetensors"}}))
    with pytest.raises(TensorFormatError, match="not a file"):
        read_index(tmp_path)


def test_build_header_matches_library(tmp_path: Path) -> None:
    raw = build_header([("w", "F32", (2, 2))])
    (n,) = struct.unpack("<Q", raw[:8])
    assert json.loads(raw[8:8 + n]) == {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}
    assert len(raw) % 8 == 0
