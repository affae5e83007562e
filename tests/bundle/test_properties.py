"""Property tests: manifest round-trip through canonical bytes, and part splitting / reassembly."""

from __future__ import annotations

import hashlib
import io
import itertools
import math
import tempfile
from pathlib import Path, PurePosixPath

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airlock.bundle import FileEntry, Manifest, ModelEntry, PartEntry, canonical_bytes, parse_manifest
from airlock.bundle.build import write_payload
from airlock.bundle.safeio import PartsReader, open_payload
from airlock.bundle.verify import check_stream
from airlock.names import first_collision

HEX = st.text("0123456789abcdef", min_size=64, max_size=64)
SEGMENT = st.text(st.characters(codec="utf-8", exclude_characters="/\\\x00",
                                exclude_categories=("Cc", "Cf", "Cs", "Co", "Zl", "Zp")),
                  min_size=1, max_size=12).filter(lambda s: s not in (".", ".."))
WORD = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True).filter(
    lambda s: s not in ("current", "metadata", "update_packages"))


@st.composite
def file_entries(draw: st.DrawFn) -> FileEntry:
    block = draw(st.integers(1, 1 << 30))
    size = draw(st.integers(0, 1 << 40))
    n_blocks = math.ceil(size / block)
    if n_blocks > 50:
        block = max(1, math.ceil(size / 50))
        n_blocks = math.ceil(size / block)
    parts: list[PartEntry] = []
    if size >= 2 and draw(st.booleans()):
        n = draw(st.integers(2, min(5, size)))
        cuts = sorted(draw(st.lists(st.integers(1, size - 1), min_size=n - 1, max_size=n - 1, unique=True)))
        bounds = [0, *cuts, size]
        parts = [PartEntry(b - a, draw(HEX)) for a, b in itertools.pairwise(bounds)]
    return FileEntry(size=size, sha256=draw(HEX), block_size=block,
                     blocks=[draw(HEX) for _ in range(n_blocks)], parts=parts)


@st.composite
def manifests(draw: st.DrawFn) -> Manifest:
    names = draw(st.lists(st.lists(SEGMENT, min_size=1, max_size=3).map("/".join), max_size=6, unique=True))
    names = [n for n in names if not any(o != n and o.startswith(n + "/") for o in names)]
    names = [n for n in names if not n.startswith("MANIFEST.json") and ".part" not in n]
    if first_collision(sorted({p for n in [*names, "MANIFEST.json", "MANIFEST.json.asc"]
                               for p in [n, *(str(q) for q in PurePosixPath(n).parents if str(q) != ".")]})):
        names = names[:1]  # names that fold together (case, NFC/NFD) are refused; see test_hostile
    files = {n: draw(file_entries()) for n in names}
    models = []
    if names and draw(st.booleans()):
        models.append(ModelEntry(name=draw(WORD), version="1.1.0", kind="delta", path=names[0],
                                 from_version="1.0.0", target_files={"model.safetensors": {
                                     "size": draw(st.integers(0, 1 << 40)), "sha256": draw(HEX)}},
                                 description=draw(st.text(max_size=20)),
                                 dependencies=draw(st.dictionaries(SEGMENT, SEGMENT, max_size=2)),
                                 golden=draw(st.none() | st.fixed_dictionaries(
                                     {"input": st.text(max_size=10),
                                      "expected": st.lists(st.integers(-5, 5), max_size=3),
                                      "tolerance": st.integers(0, 3)}))))
    return Manifest(bundle_id=draw(WORD), kind="delta" if models else "full", compatible=draw(WORD),
                    sequence=draw(st.integers(0, 1 << 62)), created="2026-11-29T00:00:00Z",
                    builder_version="0.1.0", files=files, models=models, rollback=draw(st.booleans()))


@settings(max_examples=150, deadline=None)
@given(manifests())
def test_manifest_round_trip(m: Manifest) -> None:
    data = canonical_bytes(m)
    back = parse_manifest(data)
    assert back == m
    assert canonical_bytes(back) == data


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=20_000), split=st.integers(1, 9000), block=st.integers(1, 5000))
def test_split_and_reassemble(data: bytes, split: int, block: int) -> None:
    with tempfile.TemporaryDirectory() as td:
        root = Path(td)
        src = root / "src.bin"
        src.write_bytes(data)
        entry = write_payload(src, root / "bundle", "x/payload.bin", block_size=block, split_size=split)
        assert entry.size == len(data) and entry.sha256 == hashlib.sha256(data).hexdigest()
        if len(data) > split:
            assert all(p.size == split for p in entry.parts[:-1]) and 0 < entry.parts[-1].size <= split
            assert sum(p.size for p in entry.parts) == len(data)
            offset = 0
            for i, p in enumerate(entry.parts):
                on_disk = (root / "bundle" / f"x/payload.bin.part{i:03d}").read_bytes()
                assert on_disk == data[offset:offset + p.size]
                assert hashlib.sha256(on_disk).hexdigest() == p.sha256
                offset += p.size
        else:
            assert entry.parts == [] and (root / "bundle/x/payload.bin").read_bytes() == data
        sizes = [p.size for p in entry.parts]
        with open_payload(root / "bundle", "x/payload.bin", entry.size, sizes) as fh:
            assert fh.read() == data
        with open_payload(root / "bundle", "x/payload.bin", entry.size, sizes) as fh:
            check_stream(fh, "x/payload.bin", entry)
        assert len(entry.blocks) == math.ceil(len(data) / block)
        names = ([f"x/payload.bin.part{i:03d}" for i in range(len(sizes))] if sizes else ["x/payload.bin"])
        for offset in sorted({0, len(data) // 3, split, len(data)}):
            if offset > len(data):
                continue
            raw = PartsReader(root / "bundle", names, sizes or [len(data)], "x/payload.bin")
            raw.seek_to(offset)  # what a resumed stage does
            with io.BufferedReader(raw) as fh:
                assert fh.read() == data[offset:]
