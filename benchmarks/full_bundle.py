"""Full-bundle benchmark (issue 18): compressed bundle size against ZipNN and ``zstd -19`` on the same
tensors, and staging throughput against ``sha256sum`` of the uncompressed model, in one run.

    nice -n 10 .venv/bin/python -m benchmarks.full_bundle [--fp8-size 256M] [--work benchmarks/work/full]

Models: the real all-MiniLM-L6-v2 in fp32 and bf16 (``airlock.fixtures``) and a synthetic
DeepSeek-V3-shaped model (fp8 e4m3 weights with fp32 scales, bf16 norms and embeddings) of
``--fp8-size``. For each: the raw model bytes; ``airlock bundle build --compress`` (whole bundle
directory: stored payloads, manifest, signature), ZipNN 0.5 on every tensor with its dtype (header and
non-tensor files counted at their zstd -19 size, as for Airlock), ``zstd -19 -T0`` per file; then
``sha256sum`` of the uncompressed files and ``airlock bundle stage`` of the compressed and of the raw
bundle (CLI, fresh staging directory, page cache warm), with peak RSS (``/usr/bin/time -v``).
Writes ``benchmarks/FULL_BUNDLE.md`` and prints it. Ratios, not seconds, are the result: the
machine's load changes the seconds, all columns of a row are measured in the same run."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from statistics import median

import yaml

from airlock.fixtures.__main__ import parse_size
from benchmarks.run import AIRLOCK, Run, timed
from benchmarks.signer import throwaway_signer

ROOT = Path(__file__).resolve().parents[1]
PAIRS = 5
ZIPNN_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F8_E4M3": "float8_e4m3fn",
                "F8_E5M2": "float8_e5m2"}


@dataclass
class Staging:
    """``airlock bundle stage`` of one bundle against ``sha256sum`` of the uncompressed model, in
    alternating pairs (sha256sum, stage, sha256sum, stage, ...): medians of the per-pair ratios, so
    the ratio holds while the shared machine's speed drifts. ``seconds`` is the stage's own wall time
    (the CLI's ``seconds``: signature check, read, frame and block checks, decode, write, fsync),
    ``wall`` the whole CLI process (plus interpreter start and imports)."""

    ratio: float  # sha256sum seconds / stage seconds: the throughput ratio (> 1: faster than sha256sum)
    ratio_cli: float  # sha256sum seconds / CLI wall
    ratio_cpu: float  # sha256sum CPU seconds / CLI CPU seconds (user + system, all threads)
    sha256sum: float  # median seconds
    seconds: float  # median stage seconds
    rss: int  # peak RSS of the stage CLI, bytes (largest of the runs)


@dataclass
class Row:
    model: str
    raw: int
    airlock: int
    zipnn: int
    zstd19: int
    build: Run
    stage: Staging
    stage_raw: Staging


def stop_agent(work: Path) -> None:
    """The gpg-agent the throwaway key started (it outlives its deleted home otherwise)."""
    if (work / "gnupg").is_dir():
        subprocess.run(["gpgconf", "--homedir", str(work / "gnupg"), "--kill", "gpg-agent"], check=False,
                       capture_output=True)


def files_of(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in files_of(root))


def zstd19(path: Path) -> int:
    out = subprocess.run(["zstd", "-19", "-T0", "-q", "-c", str(path)], check=True, capture_output=True)
    return len(out.stdout)


def zipnn_size(model: Path) -> int:
    """ZipNN on every tensor with its dtype; the safetensors header and other files at zstd -19."""
    import zipnn

    from airlock.safetensors_io import read_header

    total = 0
    for f in files_of(model):
        if not f.name.endswith(".safetensors"):
            total += zstd19(f)
            continue
        h = read_header(f)
        total += len(subprocess.run(["zstd", "-19", "-q", "-c"], input=h.raw, check=True,
                                    capture_output=True).stdout)
        with open(f, "rb") as fh:
            for t in h.tensors:
                fh.seek(h.data_start + t.start)
                data = fh.read(t.nbytes)
                dtype = ZIPNN_DTYPES.get(t.dtype)
                if dtype is None or not data:  # ZipNN 0.5 codes float tensors only (int64 ids: raw)
                    total += len(data)
                    continue
                z = zipnn.ZipNN(input_format="byte", bytearray_dtype=dtype, threads=os.cpu_count() or 1)
                total += len(z.compress(data))
    return total


def warm(paths: list[Path]) -> None:
    for p in paths:
        with open(p, "rb") as fh:
            while fh.read(1 << 24):
                pass


def side_by_side(bundle: Path, to: Path, files: list[Path], trust: list[str], log: Path,
                 pairs: int = PAIRS) -> Staging:
    """``pairs`` alternating runs of ``sha256sum`` (uncompressed model) and ``airlock bundle stage``
    (fresh staging directory each time), after one warm-up pair; medians of the pair ratios."""
    sha: list[float] = []
    stage: list[float] = []
    wall: list[float] = []
    cpu: list[float] = []
    rss = 0
    sha_log = log.with_name(log.stem + "-sha256sum.log")
    for k in range(pairs + 1):
        shutil.rmtree(to, ignore_errors=True)
        ref = timed(["sha256sum", *map(str, files)], 7200, sha_log)
        ref_cpu = cpu_seconds(sha_log)
        run = timed([AIRLOCK, "bundle", "stage", str(bundle), "--to", str(to), "--json", *trust], 7200, log)
        assert run.rc == 0 and ref.rc == 0, log.read_text()
        if k == 0:
            continue  # warm-up (page cache, first gpg-agent start)
        sha.append(ref.wall)
        stage.append(last_json(log)["seconds"])
        wall.append(run.wall)
        cpu.append(ref_cpu / cpu_seconds(log))
        rss = max(rss, run.rss)
    return Staging(median([a / b for a, b in zip(sha, stage, strict=True)]),
                   median([a / b for a, b in zip(sha, wall, strict=True)]), median(cpu), median(sha),
                   median(stage), rss)


def cpu_seconds(log: Path) -> float:
    """User + system CPU seconds of the last command ``timed`` ran into ``log``."""
    text = log.with_suffix(".time").read_text(errors="replace")
    total = 0.0
    for what in ("User", "System"):
        m = re.search(rf"{what} time \(seconds\): ([0-9.]+)", text)
        total += float(m.group(1)) if m else 0.0
    return total


def last_json(log: Path) -> dict[str, float]:
    """The last JSON object the CLI printed into ``log`` (its result)."""
    text = log.read_text()
    return json.loads(text[text.rindex("\n{") + 1:] if "\n{" in text else text[text.index("{"):])


def bench_model(name: str, model: Path, work: Path, signer: tuple[str, Path, Path], *,
                sizes: bool = True) -> Row:
    """Build the model's bundles (compressed and raw), measure sizes against ZipNN and zstd -19
    (unless ``sizes`` is False: a staging-only row) and staging against sha256sum."""
    fpr, home, ring = signer
    d = work / name
    d.mkdir()
    spec = d / "spec.yml"
    spec.write_text(yaml.safe_dump({"compatible": "bench", "sequence": 1,
                                    "models": [{"name": name, "version": "1.0.0", "path": str(model)}]}))
    sign = ["--signer", fpr, "--gnupghome", str(home)]
    trust = ["--trust", fpr, "--keyring", str(ring)]
    build = timed([AIRLOCK, "bundle", "build", str(spec), "-o", str(d / "z"), "--compress", *sign], 7200,
                  d / "build.log")
    assert build.rc == 0, (d / "build.log").read_text()
    raw_build = timed([AIRLOCK, "bundle", "build", str(spec), "-o", str(d / "raw"), *sign], 7200,
                      d / "raw.log")
    assert raw_build.rc == 0, (d / "raw.log").read_text()
    files = files_of(model)
    print(f"{name}: built ({tree_bytes(d / 'z') / tree_bytes(model):.3f}x); zipnn, zstd -19 ...", flush=True)
    zn = zipnn_size(model) if sizes else 0
    zs = sum(zstd19(f) for f in files) if sizes else 0
    warm(files + files_of(d / "z") + files_of(d / "raw"))
    stage = side_by_side(d / "z", d / "st-z", files, trust, d / "stage.log")
    stage_raw = side_by_side(d / "raw", d / "st-raw", files, trust, d / "stage-raw.log")
    for f in files:  # the staged model is the model
        rel = f.relative_to(model)
        assert (d / "st-z" / "models" / name / "1.0.0" / rel).read_bytes() == f.read_bytes(), rel
    row = Row(name, tree_bytes(model), tree_bytes(d / "z"), zn, zs, build, stage, stage_raw)
    for sub in ("z", "raw", "st-z", "st-raw"):
        shutil.rmtree(d / sub, ignore_errors=True)
    return row


def render(rows: list[Row], note: str) -> str:
    def mb(n: int) -> str:
        return f"{n / 1e6:.1f}"

    out = ["# Full bundles: size and staging (issue 18)", "",
           f"Measured by `make bench` (`python -m benchmarks.full_bundle`), {note}. MB = 10^6 bytes; "
           "sizes of the whole bundle directory (payloads, manifest, signature).", "",
           "| model | raw MB | Airlock MB | ratio | ZipNN | Airlock / ZipNN | zstd -19 | Airlock / zstd -19 "
           "| build peak RSS MB |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if not r.zipnn:
            continue  # a staging-only row
        out.append(
            f"| {r.model} | {mb(r.raw)} | {mb(r.airlock)} | {r.airlock / r.raw:.3f}x | {mb(r.zipnn)} "
            f"({r.zipnn / r.raw:.3f}x) | {r.airlock / r.zipnn:.3f} | {mb(r.zstd19)} "
            f"({r.zstd19 / r.raw:.3f}x) | {r.airlock / r.zstd19:.3f} | {r.build.rss / 1e6:.0f} |")
    out += ["", "Staging (stick -> staged, verified) against `sha256sum` of the uncompressed model, side by "
            f"side: {PAIRS} alternating pairs (sha256sum, then `airlock bundle stage` into a fresh dir; "
            "page cache warm), medians of the pair ratios (throughput ratio: > 1 is faster than sha256sum). "
            "`stage / sha256sum`: the stage's own seconds as the CLI reports them (signature check, read, "
            "frame and block checks, decode, write, fsync once per file); `CLI / sha256sum`: the whole "
            "`airlock` process (plus interpreter start and imports, ~0.5 s here, which dominates on the "
            "90 MB models); `CPU`: sha256sum's CPU seconds / the whole stage CLI's (user + system, all "
            "threads; on a machine shared with other jobs the wall ratios follow the CPU share the "
            "scheduler gives, the CPU ratio does not).", "",
            "| model | sha256sum MB/s | stage MB/s (compressed) | stage / sha256sum (compressed) "
            "| stage / sha256sum (raw bundle) | CLI / sha256sum (compressed) | CLI / sha256sum (raw) "
            "| CPU: sha256sum / CLI (compressed) | CPU (raw) | stage peak RSS MB (compressed) "
            "| stage peak RSS MB (raw) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        z, w = r.stage, r.stage_raw
        out.append(
            f"| {r.model} | {r.raw / 1e6 / z.sha256sum:.0f} | {r.raw / 1e6 / z.seconds:.0f} | {z.ratio:.2f}x "
            f"| {w.ratio:.2f}x | {z.ratio_cli:.2f}x | {w.ratio_cli:.2f}x | {z.ratio_cpu:.2f}x "
            f"| {w.ratio_cpu:.2f}x | {z.rss / 1e6:.0f} "
            f"| {w.rss / 1e6:.0f} |")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fp8-size", type=parse_size, default=parse_size("256M"))
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks/work/full")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/FULL_BUNDLE.md")
    ap.add_argument("--models", default="minilm-fp32,minilm-bf16,deepseek-fp8")
    ap.add_argument("--stage-size", type=parse_size, default=parse_size("2G"),
                    help="also stage a DeepSeek-shaped fp8 model of this size (staging row only; 0: none)")
    args = ap.parse_args()
    from airlock.fixtures.minilm import ensure_minilm_pair
    from airlock.fixtures.synthetic import generate_synthetic

    args.work.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=args.work))
    try:
        signer = throwaway_signer(work)
        rows = []
        for name in args.models.split(","):
            if name.startswith("minilm-"):
                model = ensure_minilm_pair(name.split("-")[1]).old
            else:
                model = generate_synthetic(work / "src" / name, size_bytes=args.fp8_size)
            rows.append(bench_model(name, model, work, signer))
            print(json.dumps({"model": name, "raw": rows[-1].raw, "airlock": rows[-1].airlock,
                              "zipnn": rows[-1].zipnn, "zstd19": rows[-1].zstd19}), flush=True)
        if args.stage_size:
            name = f"deepseek-fp8-{args.stage_size / 1e9:.1f}GB"
            model = generate_synthetic(work / "src" / name, size_bytes=args.stage_size)
            rows.append(bench_model(name, model, work, signer, sizes=False))
            shutil.rmtree(model)
        cpus = len(os.sched_getaffinity(0))
        text = render(rows, f"{cpus} CPUs, DeepSeek-shaped fp8 model of {args.fp8_size / 1e6:.0f} MB")
        args.out.write_text(text)
        sys.stdout.write(text)
    finally:
        stop_agent(work)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
