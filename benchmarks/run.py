"""Delta benchmark: Airlock against bsdiff, xdelta3, zstd --patch-from and plain zstd (issue 8).

    nice -n 10 .venv/bin/python -m benchmarks.run [--size 2G] [--cases ...] [--quick]

Cases: the real all-MiniLM-L6-v2 fine-tune (fp32, bf16) and synthetic DeepSeek-shaped models of
``--size`` with each v1.1 variant (full, partial, vocab, reshard, config). For every case and method:
delta size (MB = 10^6 bytes, and % of the new version), make and apply wall time and MB/s (of the new
version's bytes), peak RSS (``/usr/bin/time -v``) and a round-trip check (sha256 of every rebuilt file
equals the new version). Baselines run per file and on the concatenation of all files; the better
of the two counts. Methods too slow or too memory-hungry at full size run on a sample (the first K
bytes of every tensor of both versions, by name) and are marked so; xdelta3 then runs on the
concatenation only. The physical bound for apply (sha256 and zstd
decompression throughput here) and the target ratios close the report, written to
``benchmarks/RESULTS.md`` (and the raw figures to ``benchmarks/work/results-<size>.json``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

ROOT = Path(__file__).resolve().parents[1]
AIRLOCK = str(ROOT / ".venv/bin/airlock") if (ROOT / ".venv/bin/airlock").exists() else "airlock"
MB = 1_000_000
MiB = 1 << 20
SYNTHETIC = ("full", "partial", "vocab", "reshard", "config")
ALL_CASES = ("real-fp32", "real-bf16", *(f"synthetic-{v}" for v in SYNTHETIC))
METHODS = ("airlock", "bsdiff", "xdelta3", "zstd-patch", "zstd")
METHOD_LABEL = {
    "airlock": "Airlock",
    "bsdiff": "bsdiff",
    "xdelta3": "xdelta3 -9 -S djw",
    "zstd-patch": "zstd -19 --long=31 --patch-from",
    "zstd": "zstd -19 (new only)",
}


# ---------------------------------------------------------------------------------------------- records


@dataclass
class Run:
    """One timed command: wall seconds and peak RSS (bytes) from /usr/bin/time -v."""

    wall: float
    rss: int
    rc: int


@dataclass
class Result:
    case: str
    method: str
    scope: str  # "full (per file)", "full (concatenated)", "sample: 32 MB, <= 16 KiB of every tensor"
    new_bytes: int  # bytes of the new version inside the scope
    delta_bytes: int | None = None
    make_s: float | None = None
    apply_s: float | None = None
    make_rss: int | None = None
    apply_rss: int | None = None
    roundtrip: bool | None = None
    note: str = ""

    @property
    def full(self) -> bool:
        return self.scope.startswith("full")

    @property
    def pct(self) -> float | None:
        return None if self.delta_bytes is None else 100.0 * self.delta_bytes / self.new_bytes


@dataclass
class Report:
    command: str
    size: str
    machine: str
    started: str
    results: list[Result] = field(default_factory=list)
    bound: dict[str, float] = field(default_factory=dict)
    extra: dict[str, dict[str, float]] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- running


def timed(cmd: list[str], timeout: float, log: Path) -> Run:
    """Run ``cmd`` under ``/usr/bin/time -v``; stdout/stderr go to ``log``."""
    tv = log.with_suffix(".time")
    full = ["/usr/bin/time", "-v", "-o", str(tv), *cmd]
    start = time.perf_counter()
    with open(log, "ab") as fh:
        fh.write(("$ " + shlex.join(cmd) + "\n").encode())
        fh.flush()
        try:
            rc = subprocess.run(full, stdout=fh, stderr=fh, timeout=timeout, check=False).returncode
        except subprocess.TimeoutExpired:
            return Run(time.perf_counter() - start, 0, 124)
    wall = time.perf_counter() - start
    text = tv.read_text(errors="replace") if tv.exists() else ""
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    return Run(wall, int(m.group(1)) * 1024 if m else 0, rc)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def files_of(model: Path) -> list[str]:
    return sorted(p.relative_to(model).as_posix() for p in model.rglob("*") if p.is_file())


def tree_bytes(model: Path) -> int:
    return sum((model / f).stat().st_size for f in files_of(model))


def concat(model: Path, out: Path) -> Path:
    with open(out, "wb") as dst:
        for rel in files_of(model):
            with open(model / rel, "rb") as src:
                shutil.copyfileobj(src, dst, 4 * MiB)
    return out


def pair_files(old: Path, new: Path) -> list[tuple[Path | None, Path]]:
    """Each new file with its old counterpart: same name, else the shard at the same position."""
    old_files, new_files = files_of(old), files_of(new)
    old_shards = [f for f in old_files if f.endswith(".safetensors")]
    new_shards = [f for f in new_files if f.endswith(".safetensors")]
    pairs: list[tuple[Path | None, Path]] = []
    for rel in new_files:
        if rel in old_files:
            pairs.append((old / rel, new / rel))
        elif rel in new_shards and new_shards.index(rel) < len(old_shards):
            pairs.append((old / old_shards[new_shards.index(rel)], new / rel))
        else:
            pairs.append((None, new / rel))
    return pairs


# ---------------------------------------------------------------------------------------------- tools

# A tool is (make argv, apply argv) for one old/new/patch/restored file quadruple.
Tool = Callable[[Path, Path, Path, Path], tuple[list[str], list[str]]]


def _window(*paths: Path) -> int:
    size = max([p.stat().st_size for p in paths] + [1 << 20])
    return min(1 << 31, 1 << (size - 1).bit_length())


def tool_bsdiff(old: Path, new: Path, patch: Path, out: Path) -> tuple[list[str], list[str]]:
    return ["bsdiff", str(old), str(new), str(patch)], ["bspatch", str(old), str(out), str(patch)]


def tool_xdelta3(old: Path, new: Path, patch: Path, out: Path) -> tuple[list[str], list[str]]:
    b = str(_window(old, new))
    return (["xdelta3", "-9", "-S", "djw", "-B", b, "-e", "-f", "-s", str(old), str(new), str(patch)],
            ["xdelta3", "-d", "-f", "-B", b, "-s", str(old), str(patch), str(out)])


def tool_zstd_patch(old: Path, new: Path, patch: Path, out: Path) -> tuple[list[str], list[str]]:
    mem = f"--memory={max(_window(old, new), 128 << 20) // MiB}MB"
    pf = f"--patch-from={old}"
    return (["zstd", "-q", "-f", "-19", "-T0", "--long=31", pf, str(new), "-o", str(patch)],
            ["zstd", "-q", "-f", "-d", "--long=31", mem, pf, str(patch), "-o", str(out)])


def tool_zstd(_old: Path, new: Path, patch: Path, out: Path) -> tuple[list[str], list[str]]:
    return (["zstd", "-q", "-f", "-19", "-T0", str(new), "-o", str(patch)],
            ["zstd", "-q", "-f", "-d", str(patch), "-o", str(out)])


TOOLS: dict[str, Tool] = {"bsdiff": tool_bsdiff, "xdelta3": tool_xdelta3, "zstd-patch": tool_zstd_patch,
                          "zstd": tool_zstd}


def run_pairs(tool: Tool, pairs: list[tuple[Path, Path]], work: Path, timeout: float) -> Result | str:
    """Run ``tool`` over (old, new) file pairs; sums times, max RSS, checks every rebuilt file."""
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    res = Result("", "", "", sum(n.stat().st_size for _, n in pairs), 0, 0.0, 0.0, 0, 0, True)
    for i, (old, new) in enumerate(pairs):
        patch, out = work / f"{i}.patch", work / f"{i}.out"
        make, apply = tool(old, new, patch, out)
        r = timed(make, timeout, log)
        if r.rc:
            return "timeout" if r.rc == 124 else f"make failed (rc {r.rc})"
        a = timed(apply, timeout, log)
        if a.rc:
            return "timeout" if a.rc == 124 else f"apply failed (rc {a.rc})"
        assert res.delta_bytes is not None and res.make_s is not None and res.apply_s is not None
        assert res.make_rss is not None and res.apply_rss is not None
        res.delta_bytes += patch.stat().st_size
        res.make_s += r.wall
        res.apply_s += a.wall
        res.make_rss = max(res.make_rss, r.rss)
        res.apply_rss = max(res.apply_rss, a.rss)
        res.roundtrip = bool(res.roundtrip) and sha256(out) == sha256(new)
        patch.unlink()
        out.unlink()
    return res


# ---------------------------------------------------------------------------------------------- cases


def prepare_cases(names: list[str], size: int, size_label: str, models: Path) -> dict[str, tuple[Path, Path]]:
    from airlock.fixtures import ensure_minilm_pair, generate_synthetic, make_variant

    out: dict[str, tuple[Path, Path]] = {}
    for name in names:
        if name.startswith("real-"):
            pair = ensure_minilm_pair(name.removeprefix("real-"))
            out[name] = (pair.old, pair.new)
            continue
        variant = name.removeprefix("synthetic-")
        root = models / f"synthetic-{size_label}-s0"
        base = root / "1.0.0"
        if not base.exists():
            print(f"generating {base} ({size_label})", flush=True)
            generate_synthetic(base, size_bytes=size, seed=0)
        target = root / f"1.1.0-{variant}"
        if not target.exists():
            print(f"generating {target}", flush=True)
            make_variant(base, target, variant, seed=1)
        out[name] = (base, target)
    return out


@dataclass
class Limits:
    """Above ``full_max`` bytes of new version a method runs on a tensor sample of ``slice_bytes``."""

    full_max: dict[str, int]
    slice_bytes: dict[str, int]
    timeout: float
    xdelta3_concat_max: int = 0


def warm(*paths: Path) -> None:
    """Read the inputs once so every method is timed from the page cache, not the disk (the sample
    files of the baselines are fresh, hence cached; the whole models may have been evicted)."""
    for p in paths:
        for f in ([p] if p.is_file() else [p / r for r in files_of(p)]):
            with open(f, "rb") as fh:
                while fh.read(16 << 20):
                    pass


def bench_airlock(case: str, old: Path, new: Path, work: Path, timeout: float) -> Result:
    work.mkdir(parents=True, exist_ok=True)
    delta, out, log = work / "delta.aldelta", work / "out", work / "log.txt"
    shutil.rmtree(out, ignore_errors=True)
    res = Result(case, "airlock", "full", tree_bytes(new))
    warm(old, new)
    m = timed([AIRLOCK, "delta", "make", str(old), str(new), "-o", str(delta)], timeout, log)
    if m.rc:
        res.note = "timeout" if m.rc == 124 else f"make failed (rc {m.rc}), see {log}"
        return res
    warm(old, delta)
    a = timed([AIRLOCK, "delta", "apply", str(old), str(delta), "-o", str(out)], timeout, log)
    res.delta_bytes, res.make_s, res.make_rss = delta.stat().st_size, m.wall, m.rss
    if a.rc:
        res.note = "timeout" if a.rc == 124 else f"apply failed (rc {a.rc}), see {log}"
        return res
    res.apply_s, res.apply_rss = a.wall, a.rss
    res.roundtrip = files_of(out) == files_of(new) and all(
        sha256(out / f) == sha256(new / f) for f in files_of(new))
    shutil.rmtree(out, ignore_errors=True)
    return res


def bench_baseline(case: str, method: str, old: Path, new: Path, work: Path, lim: Limits) -> list[Result]:
    tool = TOOLS[method]
    new_total = tree_bytes(new)
    results: list[Result] = []
    if new_total <= lim.full_max[method]:
        empty = work / "empty"  # counterpart of a file the old version lacks (bsdiff refuses 0 bytes)
        work.mkdir(parents=True, exist_ok=True)
        empty.write_bytes(b"\0")
        per_file = [(o or empty, n) for o, n in pair_files(old, new)]
        attempts = [("full (per file)", per_file, work / "perfile")]
        if sum(1 for _, n in per_file if n.suffix == ".safetensors") > 1:  # one shard: per file == joined
            cat = work / "cat"
            cat.mkdir(parents=True, exist_ok=True)
            attempts.append(("full (concatenated)", [(concat(old, cat / "old"), concat(new, cat / "new"))],
                             work / "concat"))
        for scope, pairs, sub in attempts:
            r = run_pairs(tool, pairs, sub, lim.timeout)
            results.append(_finish(r, case, method, scope, new_total))
        shutil.rmtree(work / "cat", ignore_errors=True)
        return results
    if method == "xdelta3" and new_total <= lim.xdelta3_concat_max:  # whole model, joined
        cat = work / "cat"
        cat.mkdir(parents=True, exist_ok=True)
        joined = [(concat(old, cat / "old"), concat(new, cat / "new"))]
        r = run_pairs(tool, joined, work / "concat", lim.timeout)
        shutil.rmtree(cat, ignore_errors=True)
        return [_finish(r, case, method, "full (concatenated)", new_total)]
    sl = work / "sample"
    sl.mkdir(parents=True, exist_ok=True)
    o, n, frac = sample_tensors(old, new, lim.slice_bytes[method], sl)
    length = n.stat().st_size
    scope = f"sample: {length / MB:.0f} MB = {100 * frac:.2g}% of every tensor"
    r = run_pairs(tool, [(o, n)], work / "sampled", lim.timeout)
    shutil.rmtree(sl, ignore_errors=True)
    return [_finish(r, case, method, scope, length)]


def _tensor_table(model: Path) -> dict[str, tuple[Path, int, int]]:
    from airlock.safetensors_io import read_header

    out: dict[str, tuple[Path, int, int]] = {}
    for shard in sorted(model.glob("*.safetensors")):
        h = read_header(shard)
        for t in h.tensors:
            out[t.name] = (shard, h.data_start + t.start, t.nbytes)
    return out


def sample_tensors(old: Path, new: Path, budget: int, work: Path) -> tuple[Path, Path, float]:
    """Old and new sample files for methods too slow for the whole model, proportional by bytes:
    the first ``f`` of every tensor (matched by name; f = budget / size of the new version), plus
    ``f`` of the added tail of tensors that grew or are new, so the sample has the model's mix of
    changed, unchanged and added bytes. Matching by name favours the baseline on a re-shard (it
    sees identical data)."""
    before, after = _tensor_table(old), _tensor_table(new)
    f = min(1.0, budget / max(1, sum(n for _, _, n in after.values())))

    def take(n: int) -> int:
        return min(n, max(64, int(n * f)) // 64 * 64)  # whole elements of any dtype

    def put(dst: BinaryIO, path: Path, offset: int, length: int) -> None:
        with open(path, "rb") as fh:
            fh.seek(offset)
            dst.write(fh.read(length))

    o_path, n_path = work / "old", work / "new"
    with open(o_path, "wb") as o_fh, open(n_path, "wb") as n_fh:
        for name in sorted(after):
            n_file, n_off, n_len = after[name]
            old_len = before[name][2] if name in before else 0
            k = take(min(n_len, old_len) if name in before else 0)
            if k:
                put(n_fh, n_file, n_off, k)
                put(o_fh, before[name][0], before[name][1], k)
            if n_len > old_len:
                tail = take(n_len - old_len)
                put(n_fh, n_file, n_off + n_len - tail, tail)
    return o_path, n_path, f


def _finish(r: Result | str, case: str, method: str, scope: str, new_bytes: int) -> Result:
    if isinstance(r, str):
        return Result(case, method, scope, new_bytes, note=r)
    r.case, r.method, r.scope, r.new_bytes = case, method, scope, new_bytes
    return r


# ---------------------------------------------------------------------------------------------- bound


def physical_bound(sample: Path, work: Path, runs: int = 3) -> dict[str, float]:
    """sha256 (hashlib, as apply uses) and zstd -d (CLI, single thread) MB/s on ``sample``: the best
    of ``runs`` each, as a bound should be (one slow run on a shared VM would flatter every ratio)."""
    work.mkdir(parents=True, exist_ok=True)
    size = sample.stat().st_size
    sha256(sample)  # warm the page cache
    sha = 0.0
    for _ in range(runs):
        t = time.perf_counter()
        sha256(sample)
        sha = max(sha, size / (time.perf_counter() - t) / MB)
    z = work / "sample.zst"
    subprocess.run(["zstd", "-q", "-f", "-3", "-T0", str(sample), "-o", str(z)], check=True)
    zd = max(size / timed(["zstd", "-q", "-d", "-f", str(z), "-o", "/dev/null"], 3600,
                          work / "bound.log").wall / MB for _ in range(runs))
    z.unlink()
    return {"sha256_MBps": sha, "zstd_d_MBps": zd, "combined_MBps": 1.0 / (1.0 / sha + 1.0 / zd),
            "sample_MB": size / MB}


def new_rows_compressed(old: Path, new: Path) -> float:
    """zstd -19 size (bytes) of only the rows a vocabulary extension added to grown tensors."""
    import zstandard

    before, after = _tensor_table(old), _tensor_table(new)
    cctx = zstandard.ZstdCompressor(level=19, threads=-1)
    total = 0
    for name, (path, start, nbytes) in after.items():
        if name in before and nbytes > before[name][2]:
            grown = nbytes - before[name][2]
            with open(path, "rb") as fh:
                fh.seek(start + before[name][2])
                total += len(cctx.compress(fh.read(grown)))  # the added rows only: small
    return float(total)


# ---------------------------------------------------------------------------------------------- report


def _f(v: float | None, fmt: str = "{:.2f}") -> str:
    return "—" if v is None else fmt.format(v)


def _mbps(nbytes: int, secs: float | None) -> str:
    return "—" if not secs else f"{nbytes / MB / secs:.1f}"


def _rss(v: int | None) -> str:
    return "—" if not v else f"{v / MiB:.0f}"


def best_baselines(results: list[Result], case: str) -> dict[str, Result]:
    """Per method, the better (smaller %) of its per-file and concatenated runs for ``case``."""
    best: dict[str, Result] = {}
    for r in results:
        if r.case != case or r.method == "airlock" or r.pct is None or not r.roundtrip:
            continue
        if r.method not in best or r.pct < (best[r.method].pct or 0.0):
            best[r.method] = r
    return best


def render(rep: Report, other: Report | None) -> str:
    lines = [
        "# Delta benchmark",
        "",
        f"Measured {rep.started} on {rep.machine}. Regenerate with:",
        "",
        f"    {rep.command}",
        "",
        "MB = 10^6 bytes; MB/s are bytes of the new version (in the measured scope) per wall second; RSS is",
        "the peak resident set of the make / apply process (`/usr/bin/time -v`). \"per file\" pairs each",
        "new file with the old one of the same name (or the shard at the same position); \"concatenated\"",
        "runs the tool once on all files of each version joined. A \"sample\" row ran on the same",
        "fraction f of every tensor of both versions (its first bytes; tensors matched by name) plus f of",
        "the rows a grown tensor added, so the sample has the model's mix of changed, unchanged and new",
        "bytes; used where the method is too slow or too memory-hungry for the whole model (bsdiff:",
        "~0.1-0.4 MB/s and ~9x the input in RAM; zstd -19 runs at 0.2-2 MB/s on this shared machine).",
        "Matching by name favours the baseline on a re-shard (it sees identical bytes), so re-shard and",
        "config rows compare against the 0.1% target, not the baselines. MB/s of a sample row are of",
        "the sample. The machine is a shared 2-core VM (load average 2-16 during the run): compare",
        "ratios, not seconds. Airlock always runs on the whole model",
        "(`airlock delta make` / `airlock delta apply`, CLI end to end: apply re-hashes the source,",
        "hard-links unchanged files, hashes every output and renames a staging dir into place); its",
        "inputs are read once before each timed command, so it is timed from the page cache like the",
        "baselines' freshly written sample files.",
        "",
        "## Physical bound for apply",
        "",
    ]
    b = rep.bound
    if b:
        lines += [
            f"On a {b['sample_MB']:.0f} MB shard: sha256 {b['sha256_MBps']:.0f} MB/s, `zstd -d` "
            f"{b['zstd_d_MBps']:.0f} MB/s; hashing and decompressing every output byte in series: "
            f"**{b['combined_MBps']:.0f} MB/s**.",
            "",
        ]
    lines += [
        "## Results",
        "",
        "| case | method | scope | new MB | delta MB | % of new | make s | make MB/s | apply s | apply MB/s "
        "| make RSS MiB | apply RSS MiB | round-trip |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rep.results:
        rt = "—" if r.roundtrip is None else ("ok" if r.roundtrip else "**FAIL**")
        if r.note:
            rt = f"{rt} ({r.note})"
        lines.append(
            f"| {r.case} | {METHOD_LABEL[r.method]} | {r.scope} | {r.new_bytes / MB:.1f} | "
            f"{_f(None if r.delta_bytes is None else r.delta_bytes / MB, '{:.3f}')} | "
            f"{_f(r.pct, '{:.3f}')} | "
            f"{_f(r.make_s, '{:.1f}')} | {_mbps(r.new_bytes, r.make_s)} | {_f(r.apply_s, '{:.1f}')} | "
            f"{_mbps(r.new_bytes, r.apply_s)} | {_rss(r.make_rss)} | {_rss(r.apply_rss)} | {rt} |")
    lines += ["", "## Ratios (same session, same inputs)", ""]
    lines += [
        "| case | Airlock % of new | best baseline (method, scope) | Airlock / best "
        "| Airlock / best at full size | Airlock / bsdiff | make speed vs bsdiff | make speed vs xdelta3 "
        "| apply vs bound |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    cases = list(dict.fromkeys(r.case for r in rep.results))
    for case in cases:
        al = next((r for r in rep.results if r.case == case and r.method == "airlock"), None)
        if al is None or al.pct is None or not al.roundtrip:
            lines.append(f"| {case} | {'n/a' if al is None else (al.note or 'round-trip failed')} "
                         "| | | | | | | |")
            continue
        best = best_baselines(rep.results, case)
        top = min(best.values(), key=lambda r: r.pct or 0.0, default=None)
        full = [r for r in best.values() if r.full]
        top_full = min(full, key=lambda r: r.pct or 0.0, default=None)

        def speed(r: Result | None, which: str) -> float | None:
            if r is None:
                return None
            secs = r.make_s if which == "make" else r.apply_s
            return None if not secs else r.new_bytes / secs / MB

        def ratio(a: float | None, c: float | None) -> str:
            return "—" if a is None or not c else f"{a / c:.3f}x"

        al_make = speed(al, "make")
        al_apply = speed(al, "apply")
        lines.append(
            f"| {case} | {al.pct:.3f} | "
            f"{'—' if top is None else f'{METHOD_LABEL[top.method]}, {top.scope}: {top.pct:.3f}%'} | "
            f"{ratio(al.pct, None if top is None else top.pct)} | "
            f"{ratio(al.pct, None if top_full is None else top_full.pct)} | "
            f"{ratio(al.pct, best['bsdiff'].pct if 'bsdiff' in best else None)} | "
            f"{ratio(al_make, speed(best.get('bsdiff'), 'make'))} | "
            f"{ratio(al_make, speed(best.get('xdelta3'), 'make'))} | "
            f"{ratio(al_apply, b.get('combined_MBps'))} |")
    lines += targets(rep, other)
    vocab = rep.extra.get("synthetic-vocab")
    if vocab:
        share = vocab["airlock_bytes"] / vocab["new_rows_bytes"]
        lines += ["", f"Vocabulary extension: the added rows alone compress (zstd -19) to "
                  f"{vocab['new_rows_bytes'] / MB:.3f} MB; the Airlock delta is "
                  f"{vocab['airlock_bytes'] / MB:.3f} MB = {share:.3f}x of that."]
    lines += ["", "## Peak RSS of Airlock (MiB)", ""]
    if other is not None:
        lines += [f"Same cases at {other.size} (`--size {other.size} --methods airlock`). Synthetic "
                  "models below 1 GB use a narrower width tier (hidden 1024 instead of 2048), so their "
                  "tensors are 4x smaller.", "",
                  f"| case | make {rep.size} | make {other.size} | apply {rep.size} | apply {other.size} |",
                  "|---|---|---|---|---|"]
        for case in cases:
            a = next((r for r in rep.results if r.case == case and r.method == "airlock"), None)
            o = next((r for r in other.results if r.case == case and r.method == "airlock"), None)
            if a and o:
                lines.append(f"| {case} | {_rss(a.make_rss)} | {_rss(o.make_rss)} | {_rss(a.apply_rss)} | "
                             f"{_rss(o.apply_rss)} |")
    else:
        lines += ["Only one size measured so far; run again with another `--size` (e.g. 8G) to compare "
                  "peak RSS across model sizes (results of each size are kept in benchmarks/work)."]
    return "\n".join(lines) + "\n"


FULL_SIZE_METHODS = ("xdelta3", "zstd-patch", "zstd")
"""Baselines that can run on a whole 100 GB model (bsdiff needs ~9x the file in RAM); here they may
still be measured on a sample, for time."""
SIZE_TARGETS = {"real-fp32": 0.65, "real-bf16": 0.85}
SPARSE_TARGET = 0.5
TINY_CASES = ("synthetic-reshard", "synthetic-config")


def targets(rep: Report, other: Report | None) -> list[str]:
    """The issue's targets, each as measured in this run: (case, target, measured, met)."""
    rows: list[tuple[str, str, str, bool | None]] = []

    def add(case: str, what: str, value: float | None, limit: float, unit: str = "x",
            below: bool = True) -> None:
        if value is None:
            rows.append((case, what, "not measured", None))
            return
        met = value <= limit if below else value >= limit
        rows.append((case, what, f"{value:.3f}{unit}", met))

    def speed(r: Result | None, which: str) -> float | None:
        secs = None if r is None else (r.make_s if which == "make" else r.apply_s)
        return None if r is None or not secs else r.new_bytes / secs / MB

    bound = rep.bound.get("combined_MBps")
    for case in dict.fromkeys(r.case for r in rep.results):
        al = next((r for r in rep.results if r.case == case and r.method == "airlock"), None)
        if al is None or al.pct is None or not al.roundtrip:
            continue
        best = best_baselines(rep.results, case)
        top = min(best.values(), key=lambda r: r.pct or 0.0, default=None)
        bsdiff = best.get("bsdiff")
        if case in TINY_CASES:
            add(case, "delta < 0.1% of the model", al.pct, 0.1, "%")
        elif top is not None and top.pct:
            add(case, f"smaller than every baseline (best: {METHOD_LABEL[top.method]}, {top.scope})",
                al.pct / top.pct, 1.0)
        if case in SIZE_TARGETS and top is not None and top.pct:
            add(case, f"<= {SIZE_TARGETS[case]}x the smallest baseline", al.pct / top.pct, SIZE_TARGETS[case])
        if case in ("synthetic-full", "synthetic-partial"):
            fullsize = [best[m] for m in FULL_SIZE_METHODS if m in best and best[m].pct]
            low = min(fullsize, key=lambda r: r.pct or 0.0, default=None)
            add(case, f"<= {SPARSE_TARGET}x the smallest baseline that can run at full size"
                + ("" if low is None else f" ({METHOD_LABEL[low.method]}, {low.scope})"),
                None if low is None or not low.pct else al.pct / low.pct, SPARSE_TARGET)
            add(case, "no larger than bsdiff" + ("" if bsdiff is None else f" ({bsdiff.scope})"),
                None if bsdiff is None or not bsdiff.pct else al.pct / bsdiff.pct, 1.0)
        if case == "synthetic-vocab":
            vocab = rep.extra.get(case)
            add(case, "within 5% of the new rows compressed alone",
                None if not vocab else vocab["airlock_bytes"] / vocab["new_rows_bytes"], 1.05)
        add(case, "make speed >= 10x bsdiff's", _ratio(speed(al, "make"), speed(bsdiff, "make")), 10.0,
            below=False)
        add(case, "make speed >= xdelta3's", _ratio(speed(al, "make"), speed(best.get("xdelta3"), "make")),
            1.0, below=False)
        add(case, "apply speed >= 0.5x the sha256 + zstd -d bound", _ratio(speed(al, "apply"), bound), 0.5,
            below=False)
        add(case, "peak RSS of make and apply < 512 MiB",
            None if not al.make_rss or not al.apply_rss else max(al.make_rss, al.apply_rss) / MiB, 512.0,
            " MiB")
        o = None if other is None else next((r for r in other.results if r.case == case
                                             and r.method == "airlock"), None)
        if o is not None and o.make_rss and o.apply_rss and al.make_rss and al.apply_rss:
            spread = max(max(a, b) / min(a, b) for a, b in ((al.make_rss, o.make_rss),
                                                            (al.apply_rss, o.apply_rss)))
            add(case, f"peak RSS at {rep.size} and {other.size if other else ''} within 20%", spread, 1.2)
    out = ["", "## Targets of the issue, as measured here", "",
           "| case | target | measured | met |", "|---|---|---|---|"]
    for case, what, value, met in rows:
        out.append(f"| {case} | {what} | {value} | {'—' if met is None else ('yes' if met else '**no**')} |")
    return out


def _ratio(a: float | None, c: float | None) -> float | None:
    return None if a is None or not c else a / c


# ---------------------------------------------------------------------------------------------- main


def parse_size(text: str) -> int:
    from airlock.fixtures.__main__ import parse_size as parse

    return parse(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default=None, help="synthetic model size (default 2G; --quick: 200M)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 200 MB synthetic models")
    ap.add_argument("--cases", default=",".join(ALL_CASES), help=f"comma list of {', '.join(ALL_CASES)}")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {', '.join(METHODS)}")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks/work")
    ap.add_argument("--output", type=Path, default=ROOT / "benchmarks/RESULTS.md")
    ap.add_argument("--bsdiff-full-max", type=parse_size, default=parse_size("1"),
                    help="largest new version bsdiff runs on whole (default: always a sample; bsdiff took "
                         "17 min on the 91 MB MiniLM in the issue)")
    ap.add_argument("--bsdiff-sample", type=parse_size, default=parse_size("8M"))
    ap.add_argument("--full-max", type=parse_size, default=parse_size("100M"),
                    help="largest new version the other baselines run on whole")
    ap.add_argument("--sample", type=parse_size, default=parse_size("64M"),
                    help="tensor sample size for zstd/zstd --patch-from above --full-max (xdelta3 then runs "
                         "on the concatenation only)")
    ap.add_argument("--xdelta3-concat-max", type=parse_size, default=parse_size("1G"),
                    help="above --full-max, xdelta3 still runs on the whole (joined) model up to this size")
    ap.add_argument("--render", action="store_true",
                    help="only rewrite RESULTS.md from benchmarks/work/results-<size>.json (no runs)")
    ap.add_argument("--resume", action="store_true",
                    help="keep the (case, method) results already in benchmarks/work/results-<size>.json")
    ap.add_argument("--redo", default="", help="with --resume: methods measured again on every case")
    ap.add_argument("--resample", default="",
                    help="with --resume: methods whose sampled rows are measured again (e.g. after the "
                         "sampling changed)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per command")
    args = ap.parse_args(argv)
    size_label = args.size or ("200M" if args.quick else "2G")
    size = parse_size(size_label)
    cases = [c for c in args.cases.split(",") if c]
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(cases) - set(ALL_CASES)) + sorted(set(methods) - set(METHODS))
    if unknown:
        ap.error(f"unknown case/method: {', '.join(unknown)}")
    lim = Limits(full_max={"bsdiff": args.bsdiff_full_max, "xdelta3": args.full_max,
                           "zstd-patch": args.full_max, "zstd": args.full_max},
                 slice_bytes={"bsdiff": args.bsdiff_sample, "xdelta3": args.sample,
                              "zstd-patch": args.sample, "zstd": args.sample},
                 timeout=args.timeout, xdelta3_concat_max=args.xdelta3_concat_max)
    if args.render:
        rendered = _load(args.work / f"results-{size_label}.json")
        args.output.write_text(render(rendered, _other_size(args.work, size_label)))
        print(f"wrote {args.output}")
        return 0
    for tool in ("bsdiff", "bspatch", "xdelta3", "zstd", "/usr/bin/time"):
        if not shutil.which(tool):
            print(f"{tool} not found: apt-get install bsdiff xdelta3 zstd time", file=sys.stderr)
            return 2
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    shown = list(argv if argv is not None else sys.argv[1:])
    for flag, has_value in (("--resume", False), ("--resample", True), ("--redo", True)):
        if flag in shown:  # how the run was split up is not part of the command that regenerates it
            i = shown.index(flag)
            del shown[i:i + 1 + has_value]
    command = "nice -n 10 .venv/bin/python -m benchmarks.run " + " ".join(shlex.quote(a) for a in shown)
    rep = Report(command.strip(), size_label, f"{platform.node()} ({os.cpu_count()} CPUs, "
                 f"{platform.machine()}, Python {platform.python_version()})",
                 time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()) + f", commit {_commit()}")
    pairs = prepare_cases(cases, size, size_label, work / "models")
    airlock_present = _airlock_present()
    raw_path = work / f"results-{size_label}.json"
    done: set[tuple[str, str]] = set()
    resample = set(args.resample.split(",")) - {""}
    redo = set(args.redo.split(",")) - {""}
    if args.resume and raw_path.exists():
        prev = _load(raw_path)
        for r in prev.results:
            if r.case in cases and r.method in methods and r.method not in redo and not (
                    r.method in resample and r.scope.startswith("sample")):
                rep.results.append(r)
                done.add((r.case, r.method))
        rep.extra.update(prev.extra)
        rep.started = prev.started.split(" (resumed")[0] + f" (resumed {rep.started})"
    sample = max((f for _, new in pairs.values() for f in new.glob("*.safetensors")),
                 key=lambda p: p.stat().st_size)
    rep.bound = physical_bound(sample, work / "bound")
    other = _other_size(work, size_label)
    for case, (old, new) in pairs.items():
        if all((case, m) in done for m in methods):
            continue
        cw = work / "runs" / size_label / case
        shutil.rmtree(cw, ignore_errors=True)
        for method in methods:
            if (case, method) in done:
                continue
            print(f"[{time.strftime('%H:%M:%S')}] {case}: {method}", flush=True)
            if method == "airlock":
                if not airlock_present:
                    rep.results.append(Result(case, "airlock", "full", tree_bytes(new),
                                              note="n/a (engine not present)"))
                    continue
                rep.results.append(bench_airlock(case, old, new, cw / method, args.timeout))
            else:
                rep.results.extend(bench_baseline(case, method, old, new, cw / method, lim))
            _order(rep, cases)
            _save(rep, raw_path)
        if case == "synthetic-vocab":
            al = next((r for r in rep.results if r.case == case and r.method == "airlock"), None)
            if al and al.delta_bytes:
                rep.extra[case] = {"new_rows_bytes": new_rows_compressed(old, new),
                                   "airlock_bytes": float(al.delta_bytes)}
        shutil.rmtree(cw, ignore_errors=True)
        args.output.write_text(render(rep, other))  # after every case: partial results survive
    _save(rep, raw_path)
    args.output.write_text(render(rep, other))
    print(f"wrote {args.output}")
    return 0


def _commit() -> str:
    out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True, check=False)
    return out.stdout.strip() or "unknown"


def _order(rep: Report, cases: list[str]) -> None:
    rep.results.sort(key=lambda r: (cases.index(r.case) if r.case in cases else len(cases),
                                    METHODS.index(r.method), r.scope))


def _airlock_present() -> bool:
    try:
        from airlock.delta import apply_delta, make_delta  # noqa: F401
    except ImportError:
        return False
    return True


def _save(rep: Report, path: Path) -> None:
    path.write_text(json.dumps(asdict(rep), indent=1))


def _load(path: Path) -> Report:
    raw = json.loads(path.read_text())
    raw["results"] = [Result(**r) for r in raw["results"]]
    return Report(**raw)


def _other_size(work: Path, size_label: str) -> Report | None:
    for p in sorted(work.glob("results-*.json")):
        if p.name != f"results-{size_label}.json":
            try:
                return _load(p)
            except (ValueError, TypeError, KeyError):
                continue
    return None


if __name__ == "__main__":
    sys.exit(main())
