"""The whole path at scale (issue 18): a synthetic DeepSeek-V3-shaped model of ``--size`` from bundle
build to rollback, every step timed against its physical bound measured in the same run.

    nice -n 10 .venv/bin/python -m benchmarks.scale [--size 16G] [--work DIR] [--out benchmarks/scale]

Steps (real CLI, one throwaway signing key, one appliance root): compressed full bundle build,
bundle verify, bundle stage, model install-bundle (stage + install), delta bundle build (delta make
of the ``partial`` v1.1 variant), delta install-bundle (delta update), model verify, model rollback.
Bounds, measured on the same files in the same run with a warm page cache: ``sha256sum`` of the
model (hashing bound), ``zstd -3 -T0`` of the model (compression bound), ``cp -r`` of the model
(copy bound). Each step: wall seconds, GB/s of model bytes, its bound's time over its own (1.0 =
as fast as the bound), peak RSS (``/usr/bin/time -v``). Intermediates are deleted as soon as no
later step needs them (disk). Writes ``<out>.md`` (table) and ``<out>.png`` (plot)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from airlock.fixtures.__main__ import parse_size
from benchmarks.full_bundle import files_of, stop_agent, tree_bytes, warm
from benchmarks.run import AIRLOCK, timed
from benchmarks.signer import throwaway_signer

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Step:
    name: str
    seconds: float
    bytes: int
    bound: str
    bound_seconds: float
    rss: int

    @property
    def gbps(self) -> float:
        return self.bytes / self.seconds / 1e9

    @property
    def ratio(self) -> float:
        return self.bound_seconds / self.seconds


def _wall(cmd: list[str]) -> float:
    t = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - t


def bounds(model: Path, scratch: Path) -> dict[str, float]:
    files = [str(p) for p in files_of(model)]
    warm(files_of(model))
    out = {"sha256": _wall(["sha256sum", *files])}
    out["zstd"] = _wall(["sh", "-c", 'cat "$@" | zstd -3 -T0 -q -c > /dev/null', "sh", *files])
    out["copy"] = _wall(["cp", "-r", str(model), str(scratch)]) + _wall(["sync"])
    shutil.rmtree(scratch)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=parse_size, default=parse_size("16G"))
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks/work/scale")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/scale")
    args = ap.parse_args()
    from airlock.fixtures.synthetic import generate_synthetic, make_variant

    args.work.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=args.work))
    logs = work / "logs"
    logs.mkdir()
    steps: list[Step] = []
    try:
        fpr, home, ring = throwaway_signer(work)
        sign = ["--signer", fpr, "--gnupghome", str(home)]
        trust = ["--trust", fpr, "--keyring", str(ring)]
        v1 = generate_synthetic(work / "src" / "1.0.0", size_bytes=args.size)
        size = tree_bytes(v1)
        b = bounds(v1, work / "copy-bound")
        print(json.dumps({"size": size, "bounds": b}), flush=True)

        def step(name: str, cmd: list[str], nbytes: int, bound: str, bound_seconds: float) -> None:
            r = timed(cmd, 4 * 3600, logs / f"{len(steps):02d}-{name.replace(' ', '-')}.log")
            assert r.rc == 0, (logs / f"{len(steps):02d}-{name.replace(' ', '-')}.log").read_text()[-3000:]
            steps.append(Step(name, r.wall, nbytes, bound, bound_seconds, r.rss))
            print(json.dumps({**asdict(steps[-1]), "GB/s": round(steps[-1].gbps, 3),
                              "ratio": round(steps[-1].ratio, 3)}), flush=True)

        spec = work / "full.yml"
        spec.write_text(yaml.safe_dump({"compatible": "bench", "sequence": 1, "compress": True,
                                        "models": [{"name": "dsv3", "version": "1.0.0", "path": str(v1)}]}))
        full = work / "full"
        step("bundle build", [AIRLOCK, "bundle", "build", str(spec), "-o", str(full), *sign], size, "zstd",
             b["zstd"])
        stored = tree_bytes(full)
        step("bundle verify", [AIRLOCK, "bundle", "verify", str(full), *trust], size, "sha256",
             b["sha256"] * stored / size)
        step("bundle stage", [AIRLOCK, "bundle", "stage", str(full), "--to", str(work / "st"), *trust], size,
             "sha256", b["sha256"])
        shutil.rmtree(work / "st")
        appliance = ["--root", str(work / "appliance")]
        step("install-bundle", [AIRLOCK, "model", "install-bundle", str(full), *trust, *appliance], size,
             "sha256", b["sha256"])
        shutil.rmtree(full)
        v2 = make_variant(v1, work / "src" / "1.1.0", "partial")
        dspec = work / "delta.yml"
        dspec.write_text(yaml.safe_dump({"compatible": "bench", "sequence": 2, "models": [
            {"name": "dsv3", "version": "1.1.0", "from_version": "1.0.0",
             "delta": {"old": str(v1), "new": str(v2)}}]}))
        delta = work / "delta"
        step("delta make (bundle)", [AIRLOCK, "bundle", "build", str(dspec), "-o", str(delta), *sign], size,
             "zstd", b["zstd"])
        shutil.rmtree(work / "src")
        step("delta update", [AIRLOCK, "model", "install-bundle", str(delta), *trust, *appliance], size,
             "sha256", b["sha256"])
        step("model verify", [AIRLOCK, "model", "verify", "dsv3", *appliance], size, "sha256", b["sha256"])
        step("rollback", [AIRLOCK, "model", "rollback", "dsv3", *appliance], size, "copy", b["copy"])
        write(args.out, steps, size, b, stored)
    finally:
        stop_agent(work)
        shutil.rmtree(work, ignore_errors=True)


def write(out: Path, steps: list[Step], size: int, b: dict[str, float], stored: int) -> None:
    cpus = len(os.sched_getaffinity(0))
    lines = [f"# The whole path at scale ({size / 1e9:.1f} GB DeepSeek-V3-shaped model)", "",
             f"`make bench-scale` (`python -m benchmarks.scale`), {cpus} CPUs shared with other work. Bounds "
             f"in the same run: sha256sum {size / b['sha256'] / 1e9:.2f} GB/s, zstd -3 -T0 "
             f"{size / b['zstd'] / 1e9:.2f} GB/s, cp -r {size / b['copy'] / 1e9:.2f} GB/s. Compressed "
             f"bundle: {stored / 1e9:.2f} GB ({stored / size:.3f}x). Ratio = the bound's time / the step's "
             "time (1.0: as fast as the bound).", "",
             "| step | seconds | GB/s | bound | ratio to bound | peak RSS MB |",
             "|---|---:|---:|---|---:|---:|"]
    for s in steps:
        lines.append(f"| {s.name} | {s.seconds:.1f} | {s.gbps:.3f} | {s.bound} | {s.ratio:.2f} | "
                     f"{s.rss / 1e6:.0f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    (out.with_suffix(".json")).write_text(json.dumps({"size": size, "stored": stored, "bounds": b,
                                                      "steps": [asdict(s) for s in steps]}, indent=1) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = [s.name for s in steps]
    ax1.barh(names, [s.gbps for s in steps], color="tab:blue")
    for label, secs in b.items():
        ax1.axvline(size / secs / 1e9, linestyle="--", linewidth=1, label=f"{label} bound", color={
            "sha256": "tab:red", "zstd": "tab:green", "copy": "tab:gray"}[label])
    ax1.set_xlabel("GB/s of model bytes")
    ax1.invert_yaxis()
    ax1.legend(fontsize=8)
    ax2.barh(names, [s.ratio for s in steps], color=["tab:orange" if s.ratio < 0.5 else "tab:blue"
                                                      for s in steps])
    ax2.axvline(1.0, color="black", linewidth=1)
    ax2.axvline(0.5, color="tab:orange", linestyle=":", linewidth=1)
    ax2.set_xlabel("bound time / step time")
    ax2.invert_yaxis()
    ax2.set_yticklabels([])
    fig.suptitle(f"Airlock at scale: {size / 1e9:.1f} GB synthetic DeepSeek-V3-shaped model")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)


if __name__ == "__main__":
    main()
