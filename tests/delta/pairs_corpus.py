"""A generated corpus of unusual but legitimate model pairs (v1.0 -> v1.1), and hostile safetensors
files, shared by tests/delta/test_pairs.py and tests/bundle/test_odd_models.py.

Each case is two dicts ``relpath -> bytes``. Tensors are tiny (the whole corpus is ~2 MB) and every
byte is derived from a fixed seed, so a failure reproduces exactly."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from airlock.safetensors_io import DTYPE_SIZES

Tensor = tuple[str, str, tuple[int, ...], bytes]
Files = dict[str, bytes]

CONFIG = b'{"architectures": ["OddModel"], "model_type": "odd"}\n'
ALL_DTYPES = ["F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "F8_E8M0", "I64", "I32", "I16", "I8",
              "U8", "BOOL", "U16", "U32", "U64"]
_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def rand(g: np.random.Generator, name: str, dtype: str, shape: tuple[int, ...]) -> Tensor:
    n = math.prod(shape) * DTYPE_SIZES[dtype]
    data = g.integers(0, 256, n, dtype=np.uint8)
    if dtype == "BOOL":
        data &= 1  # a valid bool is 0 or 1
    return name, dtype, shape, data.tobytes()


def nudge(t: Tensor, g: np.random.Generator, frac: float = 0.5) -> Tensor:
    """A fine-tune-like change: some elements move a few units in the last place (bools flip)."""
    name, dtype, shape, data = t
    w = DTYPE_SIZES[dtype]
    arr = np.frombuffer(data, dtype=_UINT[w]).copy()
    mask = g.random(arr.size) < frac
    if dtype == "BOOL":
        arr[mask] ^= 1
    else:
        step = g.integers(-3, 4, arr.size).astype(np.int64).astype(_UINT[w])
        arr[mask] += step[mask]
    return name, dtype, shape, arr.tobytes()


def floats(name: str, dtype: str, values: np.ndarray) -> Tensor:
    np_type = {"F64": np.float64, "F32": np.float32, "F16": np.float16}[dtype]
    arr = np.ascontiguousarray(values.astype(np_type))
    return name, dtype, tuple(arr.shape), arr.tobytes()


def st(tensors: list[Tensor], metadata: dict[str, str] | None = None, *, data_order: list[int] | None = None,
       writer: str = "compact") -> bytes:
    """A safetensors file. ``data_order``: the order of the tensors' data (default: listed order).
    ``writer``: ``compact`` (sorted keys, no spaces, 8-byte aligned: the reference writer's layout),
    or ``other`` (another writer: entry keys in a different order, spaces after separators, the
    header padded with trailing spaces to an odd length, JSON key order unlike the data order)."""
    order = data_order if data_order is not None else list(range(len(tensors)))
    offsets: dict[int, tuple[int, int]] = {}
    pos = 0
    for i in order:
        n = len(tensors[i][3])
        offsets[i] = (pos, pos + n)
        pos += n
    entries: list[tuple[str, dict[str, Any]]] = []
    for i, (name, dtype, shape, _data) in enumerate(tensors):
        b, e = offsets[i]
        if writer == "other":
            entries.append((name, {"data_offsets": [b, e], "shape": list(shape), "dtype": dtype}))
        else:
            entries.append((name, {"dtype": dtype, "shape": list(shape), "data_offsets": [b, e]}))
    if writer == "other":
        body = "{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in reversed(entries))
        if metadata is not None:
            body += (", " if entries else "") + f'"__metadata__": {json.dumps(metadata)}'
        raw = (body + "}").encode() + b" " * 13
    else:
        obj: dict[str, Any] = dict(sorted(entries))
        if metadata is not None:
            obj = {"__metadata__": metadata, **obj}
        raw = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
        raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"".join(tensors[i][3] for i in order)


def model(tensors: list[Tensor], metadata: dict[str, str] | None = None, /, **extra: bytes) -> Files:
    files: Files = {"config.json": CONFIG, "model.safetensors": st(tensors, metadata)}
    files.update({_rel(k): v for k, v in extra.items()})
    return files


def _rel(key: str) -> str:
    """A keyword to a path: ``__`` separates directories, the last ``_`` of a name without a dot is
    its dot (``sub__notes_md`` -> ``sub/notes.md``)."""
    *dirs, name = key.split("__")
    if "." not in name and "_" in name:
        stem, ext = name.rsplit("_", 1)
        name = f"{stem}.{ext}"
    return "/".join([*dirs, name])


@dataclass(frozen=True)
class Pair:
    id: str
    old: Files
    new: Files


def _dtype_pair(dtype: str) -> Pair:
    g = rng(sum(map(ord, dtype)))
    a = rand(g, "w", dtype, (1031, 5))  # over 16 KiB for 4- and 8-byte types: several delta chunks
    b = rand(g, "b", dtype, (7,))
    return Pair(f"dtype-{dtype}", model([a, b]), model([nudge(a, g), b]))


def _special_floats(dtype: str) -> Pair:
    g = rng(11)
    n = 4099
    base = g.standard_normal(n)
    base[::3] = np.nan
    base[1::5] = np.inf
    base[2::7] = -np.inf
    base[3::4] = -0.0
    old = floats("x", dtype, base)
    arr = np.frombuffer(old[3], dtype=_UINT[DTYPE_SIZES[dtype]]).copy()
    # NaNs with other payloads and signs, -0.0 <-> +0.0, inf -> nan: bit patterns a float path would fold
    sign = _UINT[DTYPE_SIZES[dtype]](1 << (8 * DTYPE_SIZES[dtype] - 1))
    arr[::3] ^= _UINT[DTYPE_SIZES[dtype]](1)
    arr[6::9] ^= sign
    arr[3::8] ^= sign
    arr[1::10] |= _UINT[DTYPE_SIZES[dtype]](1)
    new = ("x", dtype, old[2], arr.tobytes())
    return Pair(f"nan-inf-negzero-{dtype}", model([old]), model([new]))


def _finetune(dtype: str) -> Pair:
    """Weights like a real fine-tune (normal, small; most elements move a little, some are NaN/-0.0):
    the delta codec groups these by exponent (codecs 9 and 10)."""
    import ml_dtypes

    np_type = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
               "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2}[dtype]
    g = rng(len(dtype) * 31 + 7)
    w = (g.standard_normal((97, 131)) * 0.02).astype(np.float32)
    w2 = w + (g.standard_normal(w.shape) * 2e-4).astype(np.float32) * (g.random(w.shape) < 0.7)
    w[0, :5], w2[1, :3] = np.nan, -0.0
    old = ("layers.0.mlp.w", dtype, w.shape, np.ascontiguousarray(w.astype(np_type)).tobytes())
    new = ("layers.0.mlp.w", dtype, w.shape, np.ascontiguousarray(w2.astype(np_type)).tobytes())
    return Pair(f"finetune-{dtype}", model([old]), model([new]))


def _bf16_special() -> Pair:
    specials = np.array([0x7FC0, 0xFFC0, 0x7F81, 0x7F80, 0xFF80, 0x8000, 0x0000, 0x0001, 0xFFFF],
                        dtype=np.uint16)
    old = ("x", "BF16", (4, 9), np.tile(specials, 4).tobytes())
    new = ("x", "BF16", (4, 9), np.tile(specials[::-1], 4).tobytes())
    return Pair("nan-inf-negzero-BF16", model([old]), model([new]))


def pairs() -> list[Pair]:
    g = rng(1)
    blob = rng(5).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    out: list[Pair] = [_dtype_pair(d) for d in ALL_DTYPES]
    out += [_special_floats(d) for d in ("F64", "F32", "F16")] + [_bf16_special()]
    out += [_finetune(d) for d in ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")]

    scalars = [rand(g, f"s.{d}", d, ()) for d in ("F32", "BF16", "I64", "F8_E4M3", "BOOL")]
    out.append(Pair("scalars", model(scalars), model([nudge(t, g, 1.0) for t in scalars])))
    empties = [("e0", "F32", (0,), b""), ("e1", "BF16", (3, 0), b""), ("e2", "I8", (0, 0, 5), b"")]
    w = rand(g, "w", "F32", (5, 3))
    out.append(Pair("empty-tensors", model([empties[0], w, *empties[1:]]),
                    model([empties[0], nudge(w, g), *empties[1:], ("e3", "U8", (0,), b"")])))
    out.append(Pair("empty-to-filled", model([("t", "F32", (0, 4), b""), w]),
                    model([rand(g, "t", "F32", (3, 4)), w])))
    out.append(Pair("filled-to-empty", model([rand(g, "t", "F32", (3, 4)), w]),
                    model([("t", "F32", (0, 4), b""), w])))
    ones = [rand(g, f"one.{d}", d, (1,)) for d in ("F64", "F16", "I32", "U8")]
    out.append(Pair("one-element", model(ones), model([nudge(t, g, 1.0) for t in ones])))
    odd = [rand(g, "odd.a", "F32", (5003,)), rand(g, "odd.b", "BF16", (3, 4111)),
           rand(g, "odd.c", "F64", (2051,)), rand(g, "odd.d", "U8", (16411,))]
    out.append(Pair("odd-sizes", model(odd), model([nudge(t, g, 0.3) for t in odd])))

    meta_old = {f"key-{i:04d}": "v" * (i % 37) for i in range(3000)}
    meta_old.update({"ключ": "значение", "鍵 with space": "値", "emoji 🦙": "\u00e9\u0301", "": "empty key"})
    meta_new = dict(meta_old, **{"key-0001": "changed", "新しい": "👍"})
    t = rand(g, "w", "F16", (16, 16))
    out.append(Pair("big-unicode-metadata", model([t], meta_old), model([t], meta_new)))
    out.append(Pair("metadata-only-change", model([t], {"format": "pt"}), model([t], {"format": "np"})))
    out.append(Pair("metadata-added", model([t]), model([t], {"format": "pt"})))

    names = ["层.0/权重 weight", "a b.c/d", "ключ.вес", "emoji 🦙.w", "dots...", "/lead/slash", "tab\tname",
             'quote"back\\slash', "nul\x00inside"]
    uni = [rand(g, n, "F32", (4, 4)) for n in names]
    out.append(Pair("unicode-names", model(uni), model([nudge(t, g) for t in uni[:4]] + uni[4:])))

    a, b, c = rand(g, "a", "F32", (8, 8)), rand(g, "b", "BF16", (8, 8)), rand(g, "c", "I64", (5,))
    out.append(Pair("renamed", model([a, b, c]), model([("a2", *a[1:]), ("b2", *b[1:]), c])))
    out.append(Pair("renamed-and-changed", model([a, b]), model([("a2", *nudge(a, g)[1:]), b])))
    out.append(Pair("swapped-names", model([a, ("b", *a[1:2], (8, 8), rand(g, "x", "F32", (8, 8))[3])]),
                    model([("b", *a[1:]), ("a", "F32", (8, 8), rand(g, "y", "F32", (8, 8))[3])])))
    out.append(Pair("added-removed", model([a, b]), model([b, c, rand(g, "d", "F16", (9,))])))
    out.append(Pair("dtype-changed", model([a, ("k", "F32", (10,), rand(g, "k", "F32", (10,))[3])]),
                    model([("a", "BF16", (8, 8), rand(g, "a", "BF16", (8, 8))[3]),
                           ("k", "I32", (10,), rand(g, "k", "I32", (10,))[3])])))
    out.append(Pair("dtype-changed-same-bytes", model([a]), model([("a", "I32", a[2], a[3])])))
    base = rand(g, "m", "F32", (16, 8))
    grown = ("m", "F32", (20, 8), base[3] + rand(g, "x", "F32", (4, 8))[3])
    out.append(Pair("shape-transposed", model([base]), model([("m", "F32", (8, 16), base[3])])))
    out.append(Pair("shape-grown-rows", model([base]), model([nudge(grown, g, 0.2)])))
    out.append(Pair("shape-shrunk-rows", model([grown]), model([nudge(base, g, 0.2)])))
    vec, cube = rand(g, "vec", "F32", (100,)), rand(g, "cube", "BF16", (4, 3, 5))
    out.append(Pair("shape-grown-1d-3d", model([vec, cube]),
                    model([("vec", "F32", (137,), vec[3] + rand(g, "x", "F32", (37,))[3]),
                           ("cube", "BF16", (6, 3, 5),
                            nudge(cube, g)[3] + rand(g, "y", "BF16", (2, 3, 5))[3])])))
    out.append(Pair("shape-rank-changed", model([base]), model([("m", "F32", (128,), base[3])])))
    out.append(Pair("shape-to-scalar", model([("s", "F32", (1,), b"\0\0\x80?")]),
                    model([("s", "F32", (), b"\0\0\x80?")])))

    ts = [rand(g, f"t{i}", "F32", (3, 5)) for i in range(5)]
    out.append(Pair("reordered-data", {"config.json": CONFIG, "model.safetensors": st(ts)},
                    {"config.json": CONFIG, "model.safetensors": st(ts, data_order=[4, 2, 0, 3, 1])}))
    out.append(Pair("other-writer-header", {"config.json": CONFIG, "model.safetensors": st(ts, {"a": "b"})},
                    {"config.json": CONFIG,
                     "model.safetensors": st(ts, {"a": "b"}, data_order=[1, 0, 2, 4, 3], writer="other")}))
    out.append(Pair("other-writer-both", {"config.json": CONFIG, "model.safetensors": st(ts, writer="other")},
                    {"config.json": CONFIG,
                     "model.safetensors": st([nudge(x, g) for x in ts], writer="other")}))
    # JSON the reference reader accepts as well: null metadata, names spelled with escapes (the same
    # names as in v1.0), whitespace before, inside and after the object (newlines, tabs)
    t0, t1 = ts[0][3], nudge(ts[1], g)[3]
    hand = (b'\n\t{ "__metadata__" : null ,\n "\\u0074\\u0031" : {"shape":[3,5],"dtype":"F32",'
            b'"data_offsets":[60,120]},\r\n"t\\u0030":{"data_offsets":[0,60],"dtype":"F32",'
            b'"shape":[3,5]}}\t\n ')
    out.append(Pair("hand-written-json", {"config.json": CONFIG, "model.safetensors": st(ts[:2])},
                    {"config.json": CONFIG, "model.safetensors": _raw_st(hand, t0 + t1)}))
    ident = model(ts, {"format": "pt"}, tokenizer_json=b'{"v": 1}')
    out.append(Pair("identical", ident, dict(ident)))
    zeros = ("z", "F32", (64, 4), bytes(1024))
    out.append(Pair("zeros", model([zeros, a]), model([zeros, nudge(a, g)])))
    out.append(Pair("zeros-to-random", model([zeros]), model([rand(g, "z", "F32", (64, 4))])))
    out.append(Pair("random-to-zeros", model([rand(g, "z", "F32", (64, 4))]), model([zeros])))
    dup = rand(g, "d1", "BF16", (6, 6))
    out.append(Pair("duplicate-content", model([dup, ("d2", *dup[1:])]),
                    model([("d2", *dup[1:]), ("d3", *dup[1:]), nudge(("d1", *dup[1:]), g)])))
    out.append(Pair("no-tensors", {"config.json": CONFIG, "model.safetensors": st([], {"only": "meta"})},
                    {"config.json": CONFIG, "model.safetensors": st([a])}))
    out.append(Pair("tensors-to-none", {"config.json": CONFIG, "model.safetensors": st([a])},
                    {"config.json": CONFIG, "model.safetensors": st([])}))

    old_files = model([a, b], tokenizer_json=b'{"vocab": {"a": 1}}', vocab_bin=blob, empty_txt=b"",
                      gone_txt=b"bye", sub__dir__notes_md=b"# notes\n")
    new_files = model([a, b], tokenizer_json=b'{"vocab": {"a": 1, "b": 2}}',
                      vocab_bin=blob[:1234] + b"\xff" + blob[1235:] + b"tail", empty_txt=b"now filled",
                      sub__dir__notes_md=b"# notes\n", new_bin=blob[::-1])
    new_files["model-2.safetensors"] = st([c])
    out.append(Pair("files-added-removed", old_files, new_files))
    out.append(Pair("file-to-empty", {"config.json": CONFIG, "model.safetensors": st([a]), "x.bin": blob},
                    {"config.json": CONFIG, "model.safetensors": st([a]), "x.bin": b""}))

    shards = [[rand(g, f"layers.{i}.{j}", "BF16", (12, 4)) for j in range(3)] for i in range(4)]
    tuned = [[nudge(t, g, 0.2) for t in s] for s in shards]
    out.append(Pair("sharded-index", _sharded(shards, 2), _sharded(tuned, 2)))
    out.append(Pair("resharded", _sharded(shards, 2), _sharded(shards, 3)))
    out.append(Pair("resharded-and-tuned", _sharded(shards, 3), _sharded(tuned, 2)))
    out.append(Pair("sharded-to-single", _sharded(shards, 2), model([t for s in shards for t in s])))

    # elements straddle bundle blocks (odd header length, a 3-byte tensor first): compressed bundles
    # cut blocks inside elements; one element changed in a tensor of many delta chunks
    long = [("p", "U8", (3,), b"abc"), rand(g, "q", "F64", (9001,)), rand(g, "r", "F32", (15001,)),
            rand(g, "s", "BF16", (40001,)), rand(g, "t", "I16", (20001,)), rand(g, "u", "U64", (3001,)),
            rand(g, "v", "F8_E4M3", (20001,)), rand(g, "w", "BOOL", (17001,)), rand(g, "x", "F16", (9001,))]
    one = bytearray(long[2][3])
    one[4 * 10000] ^= 0x40
    out.append(Pair("unaligned-one-element-changed",
                    {"config.json": CONFIG, "model.safetensors": st(long, writer="other")},
                    {"config.json": CONFIG,
                     "model.safetensors": st([*long[:2], ("r", "F32", (15001,), bytes(one)), *long[3:]],
                                             writer="other")}))
    names_old: Files = {"config.json": CONFIG, "model.safetensors": st([a]), ".gitattributes": b"*.bin lfs\n",
                        "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}',
                        "special tokens map.json": b"{}", "vocab-\u00fc\u00df-\u4e2d.txt": b"a\nb\n",
                        "deep/a/b/c/d/e/f/g.txt": b"deep"}
    names_new = dict(names_old, **{"special tokens map.json": b'{"pad": "[PAD]"}',
                                   "vocab-\u00fc\u00df-\u4e2d.txt": b"a\nb\nc\n"})
    out.append(Pair("file-names", names_old, names_new))
    out.append(Pair("file-renamed", model([a, b]),
                    {"config.json": CONFIG, "model-00001-of-00001.safetensors": st([a, b])}))
    out.append(Pair("file-duplicated", model([a], tokenizer_json=blob),
                    model([a, c], tokenizer_json=blob, copy__tokenizer_json=blob,
                          **{"2_Dense__model.safetensors": st([("linear.weight", *a[1:])])})))

    # sizes at the bundle test's block (32 KiB) and split (300 000) edges, and at zstd's 128 KiB block
    sizes = {f"blob-{n}.bin": rng(n).bytes(n) for n in (1, 32767, 32768, 32769, 131072, 300_000, 300_001)}
    out.append(Pair("boundary-sizes", model([a], **{"x": b""}) | sizes,
                    model([a]) | {k: v[:-1] + b"!" for k, v in sizes.items()}))

    unrel_old = [rand(g, f"u{i}", d, (17, 3)) for i, d in enumerate(("F32", "BF16", "F8_E5M2"))]
    unrel_new = [rand(g, f"v{i}", d, (5, 11)) for i, d in enumerate(("F16", "I8", "F64", "U32"))]
    out.append(Pair("unrelated", model(unrel_old, {"a": "1"}, tokenizer_json=b"{}"),
                    {"config.json": b'{"other": true}', "weights.safetensors": st(unrel_new),
                     "README.md": rng(9).bytes(777)}))
    out.append(Pair("unrelated-same-names", model(unrel_old),
                    model([rand(g, n, d, s) for n, d, s, _ in unrel_old])))
    return out


def _sharded(shards: list[list[Tensor]], n: int) -> Files:
    flat = [t for s in shards for t in s]
    per = math.ceil(len(flat) / n)
    files: Files = {"config.json": CONFIG}
    wmap: dict[str, str] = {}
    for k in range(n):
        name = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
        part = flat[k * per:(k + 1) * per]
        files[name] = st(part)
        wmap.update({t[0]: name for t in part})
    total = sum(len(t[3]) for t in flat)
    files["model.safetensors.index.json"] = json.dumps({"metadata": {"total_size": total},
                                                        "weight_map": wmap}, indent=2).encode()
    return files


def write(root: Path, files: Files) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


# -- hostile sources: headers that lie -------------------------------------------------------------

def _raw_st(header: dict[str, Any] | bytes, data: bytes, length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def _e(dtype: str, shape: list[int], b: int, e: int) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [b, e]}


HOSTILE: dict[str, tuple[bytes, str]] = {
    # case -> (file bytes, rule of the refusal)
    "overlap": (_raw_st({"a": _e("F32", [4], 0, 16), "b": _e("F32", [4], 8, 24)}, bytes(24)),
                "safetensors-overlap"),
    "out-of-range": (_raw_st({"a": _e("F32", [4], 0, 16), "b": _e("F32", [4], 16, 32)}, bytes(20)),
                     "safetensors-bounds"),
    "shape-size-mismatch": (_raw_st({"a": _e("F32", [5], 0, 16)}, bytes(16)), "safetensors-size"),
    "gap": (_raw_st({"a": _e("F32", [2], 0, 8), "b": _e("F32", [2], 12, 20)}, bytes(20)), "safetensors-gap"),
    "trailing-bytes": (_raw_st({"a": _e("F32", [2], 0, 8)}, bytes(12)), "safetensors-trailing"),
    "reversed-offsets": (_raw_st({"a": _e("F32", [0], 8, 0)}, bytes(8)), "safetensors-offsets"),
    "negative-shape": (_raw_st({"a": _e("F32", [-1, -4], 0, 16)}, bytes(16)), "safetensors-shape"),
    "huge-shape": (_raw_st({"a": _e("F32", [2**62, 2**62], 0, 16)}, bytes(16)), "safetensors-size"),
    "bool-shape": (_raw_st({"a": _e("F32", [True, 4], 0, 16)}, bytes(16)), "safetensors-shape"),
    "unknown-dtype": (_raw_st({"a": _e("F4", [4], 0, 2)}, bytes(2)), "safetensors-dtype"),
    "header-past-end": (_raw_st(b"{}", b"", length=4096), "safetensors-truncated"),
    "short-file": (b"\x02\x00\x00", "safetensors-truncated"),
    "not-json": (_raw_st(b"{not json", b""), "safetensors-json"),
    "duplicate-key": (_raw_st(b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
                              b'"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"\0"),
                      "safetensors-json"),
    "bad-metadata": (_raw_st({"__metadata__": {"a": 1}}, b""), "safetensors-metadata"),
    "extra-entry-key": (_raw_st({"a": {**_e("U8", [1], 0, 1), "x": 1}}, b"\0"), "safetensors-entry"),
    # a lone surrogate parses in Python's json, not in the reference reader; it cannot be UTF-8 encoded
    "lone-surrogate-name": (_raw_st(b'{"a\\ud800":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"\0"),
                            "safetensors-unicode"),
    "lone-surrogate-metadata": (_raw_st(b'{"__metadata__":{"k":"\\udc00"}}', b""), "safetensors-unicode"),
    # a clone without git-lfs: the pointer file where the weights should be
    "git-lfs-pointer": (b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"0" * 64
                        + b"\nsize 90868376\n", "safetensors-lfs-pointer"),
    "deep-json": (_raw_st(b"[" * 5000 + b"]" * 5000, b""), "safetensors-json"),
}

