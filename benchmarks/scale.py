"""The whole path at scale (issue 18): a synthetic DeepSeek-V3-shaped model of ``--size`` from bundle
build to rollback, every step timed against its physical bound measured in the same run.

    nice -n 10 .venv/bin/python -m benchmarks.scale [--size 16G] [--sweep 2G,8G] [--work DIR] [--out PREFIX]

Steps (real CLI, one throwaway signing key, one appliance root): compressed full bundle build,
bundle verify, bundle stage, model install-bundle (stage + install), delta bundle build (delta make
of the ``partial`` v1.1 variant against the installed 1.0.0), delta install-bundle (delta update),
model verify, model rollback. Bounds, measured on the same files in the same run: ``sha256sum`` of
the model (hashing bound), ``zstd -3 -T0`` of the model (compression bound), ``cp -r`` + ``sync`` of
the model (copy bound). Each step: wall seconds, GB/s of model bytes, its bound's time over its own
(1.0 = as fast as the bound), peak RSS (``/usr/bin/time -v``). ``--sweep``: peak RSS of bundle build,
stage and install-bundle at smaller sizes too (memory flat with model size).

Disk: the peak is about 2x the model + the compressed bundle (install-bundle: staged copy, installed
copy, bundle). The source model is deleted once the bundle is built; the v1.1 variant is written
from the installed 1.0.0 with its unchanged shards as hard links; every intermediate is deleted as
soon as no later step needs it, and a step refuses to start when it would leave less than
``--keep-free`` on the file system.

Resumable: the run's state (bounds, finished steps) is kept in ``<work>/state.json``; run the same
command again after an interruption and finished steps are skipped (an interrupted step is redone from
scratch). ``--fresh`` discards a previous run. Writes ``<out>.md`` (table), ``<out>.json`` and
``<out>.png`` (plot); the work directory is removed at the end unless ``--keep``."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from airlock.fixtures.__main__ import parse_size
from benchmarks.full_bundle import files_of, stop_agent, tree_bytes, warm
from benchmarks.run import AIRLOCK, timed
from benchmarks.signer import throwaway_signer

ROOT = Path(__file__).resolve().parents[1]
GB = 1e9
STEPS = ("bundle build", "bundle verify", "bundle stage", "install-bundle", "delta make (bundle)",
         "delta update", "model verify", "rollback")


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
        return self.bytes / self.seconds / GB

    @property
    def ratio(self) -> float:
        return self.bound_seconds / self.seconds


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _wall(cmd: list[str]) -> float:
    t = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - t


def bounds(model: Path, scratch: Path) -> dict[str, float]:
    files = [str(p) for p in files_of(model)]
    shutil.rmtree(scratch, ignore_errors=True)
    warm(files_of(model))
    out = {"sha256": _wall(["sha256sum", *files])}
    out["zstd"] = _wall(["sh", "-c", 'cat "$@" | zstd -3 -T0 -q -c > /dev/null', "sh", *files])
    out["copy"] = _wall(["cp", "-r", str(model), str(scratch)]) + _wall(["sync"])
    shutil.rmtree(scratch)
    return out


class Run:
    """One resumable run in ``work``: state.json holds what is done."""

    def __init__(self, work: Path, keep_free: int) -> None:
        self.work = work
        self.keep_free = keep_free
        self.path = work / "state.json"
        self.state: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.state.setdefault("steps", [])
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=1) + "\n")
        os.replace(tmp, self.path)

    def once(self, key: str, fn: Callable[[], Any]) -> Any:
        """``fn()`` the first time, its saved result after that."""
        if key not in self.state:
            t = time.monotonic()
            self.state[key] = fn()
            self.state.setdefault("setup_seconds", {})[key] = time.monotonic() - t
            self.save()
        return self.state[key]

    def done(self, name: str) -> bool:
        return any(s["name"] == name for s in self.state["steps"])

    def need(self, nbytes: int, what: str) -> None:
        """Refuse to start ``what`` when it would leave less than keep_free on the file system."""
        free = free_bytes(self.work)
        log(f"{what}: needs ~{nbytes / GB:.1f} GB, {free / GB:.1f} GB free")
        if free - nbytes < self.keep_free:
            sys.exit(f"{what}: needs ~{nbytes / GB:.1f} GB and {free / GB:.1f} GB are free; it would leave "
                     f"less than {self.keep_free / GB:.0f} GB (--keep-free); free space, rerun.")

    def step(self, name: str, cmd: list[str], nbytes: int, bound: str, bound_seconds: float, *,
             clean: tuple[Path, ...] = (), disk: int = 0) -> None:
        if self.done(name):
            log(f"{name}: done before, skipped")
            return
        for p in clean:  # what an interrupted try left
            shutil.rmtree(p, ignore_errors=True)
        self.need(disk, name)
        slug = name.replace(" ", "-").replace("(", "").replace(")", "")
        logfile = self.logs / f"{len(self.state['steps']):02d}-{slug}.log"
        log(f"{name}: start")
        r = timed(cmd, 4 * 3600, logfile)
        if r.rc != 0:
            sys.exit(f"{name}: exit {r.rc}\n{logfile.read_text(errors='replace')[-3000:]}")
        s = Step(name, r.wall, nbytes, bound, bound_seconds, r.rss)
        self.state["steps"].append(asdict(s))
        self.save()
        log(f"{name}: {s.seconds:.1f} s, {s.gbps:.3f} GB/s, {s.ratio:.2f}x of {bound}, "
            f"peak RSS {s.rss / 1e6:.0f} MB, {free_bytes(self.work) / GB:.1f} GB free")


def signer(run: Run) -> tuple[list[str], list[str]]:
    def make() -> list[str]:
        shutil.rmtree(run.work / "gnupg", ignore_errors=True)
        fpr, _home, _ring = throwaway_signer(run.work)
        return [fpr]

    fpr = run.once("signer", make)[0]
    return (["--signer", fpr, "--gnupghome", str(run.work / "gnupg")],
            ["--trust", fpr, "--keyring", str(run.work / "signer.asc")])


def full_spec(path: Path, model: Path) -> Path:
    path.write_text(yaml.safe_dump({"compatible": "bench", "sequence": 1, "compress": True,
                                    "models": [{"name": "dsv3", "version": "1.0.0", "path": str(model)}]}))
    return path


def generate(run: Run, v1: Path, size: int) -> int:
    from airlock.fixtures.synthetic import generate_synthetic

    def make() -> int:
        if not v1.exists():
            run.need(size, f"generate {size / GB:.1f} GB")
            log(f"generating the {size / GB:.1f} GB model")
            generate_synthetic(v1, size_bytes=size)
        return tree_bytes(v1)

    return int(run.once("size", make))


def main_path(run: Run, size_arg: int) -> None:
    """Build .. rollback at ``size_arg``."""
    from airlock.fixtures.synthetic import make_variant

    work = run.work
    sign, trust = signer(run)
    src = work / "src"
    v1, v2 = src / "1.0.0", src / "1.1.0"
    full, delta, appliance = work / "full", work / "delta", work / "appliance"
    root = ["--root", str(appliance)]
    if not run.done("bundle build"):
        size = generate(run, v1, size_arg)
        run.need(0 if "bounds" in run.state else size, "bounds (cp -r of the model)")
        b = run.once("bounds", lambda: bounds(v1, work / "copy-bound"))
        log(f"model {size / GB:.2f} GB; bounds: " + ", ".join(f"{k} {size / v / GB:.2f} GB/s"
                                                               for k, v in b.items()))
        spec = full_spec(work / "full.yml", v1)
        run.step("bundle build", [AIRLOCK, "bundle", "build", str(spec), "-o", str(full), *sign], size,
                 "zstd", b["zstd"], clean=(full,), disk=size)
    size, b = int(run.state["size"]), run.state["bounds"]
    shutil.rmtree(src / "1.0.0", ignore_errors=True)  # the bundle holds it now
    stored = int(run.once("stored", lambda: tree_bytes(full)))
    run.step("bundle verify", [AIRLOCK, "bundle", "verify", str(full), *trust], size, "sha256",
             b["sha256"] * stored / size)
    run.step("bundle stage", [AIRLOCK, "bundle", "stage", str(full), "--to", str(work / "st"), *trust], size,
             "sha256", b["sha256"], clean=(work / "st",), disk=size)
    shutil.rmtree(work / "st", ignore_errors=True)
    run.step("install-bundle", [AIRLOCK, "model", "install-bundle", str(full), *trust, *root], size,
             "sha256", b["sha256"], clean=(appliance,), disk=2 * size)
    shutil.rmtree(full, ignore_errors=True)
    installed = appliance / "model_repo" / "dsv3" / "1.0.0"
    if not run.done("delta make (bundle)"):
        if not v2.exists():
            log("writing the partial v1.1 (unchanged shards hard-linked to the installed 1.0.0)")
            t = time.monotonic()
            make_variant(installed, v2, "partial", link_unchanged=True)
            run.state.setdefault("setup_seconds", {})["variant"] = time.monotonic() - t
            run.save()
        dspec = work / "delta.yml"
        dspec.write_text(yaml.safe_dump({"compatible": "bench", "sequence": 2, "models": [
            {"name": "dsv3", "version": "1.1.0", "from_version": "1.0.0",
             "delta": {"old": str(installed), "new": str(v2)}}]}))
        run.step("delta make (bundle)", [AIRLOCK, "bundle", "build", str(dspec), "-o", str(delta), *sign],
                 size, "zstd", b["zstd"], clean=(delta,), disk=size // 4)
        run.state["delta_bytes"] = tree_bytes(delta)
        run.save()
    shutil.rmtree(src, ignore_errors=True)
    run.step("delta update", [AIRLOCK, "model", "install-bundle", str(delta), *trust, *root], size,
             "sha256", b["sha256"], disk=size // 2)
    shutil.rmtree(delta, ignore_errors=True)
    run.step("model verify", [AIRLOCK, "model", "verify", "dsv3", *root], size, "sha256", b["sha256"])
    run.step("rollback", [AIRLOCK, "model", "rollback", "dsv3", *root], size, "copy", b["copy"])
    shutil.rmtree(appliance, ignore_errors=True)


def sweep(run: Run, size_arg: int) -> None:
    """Peak RSS (and seconds) of bundle build, stage and install-bundle at ``size_arg``."""
    key = f"{size_arg}"
    done: dict[str, Any] = run.state.setdefault("sweep", {})
    if key in done and "install-bundle" in done[key]:
        return
    sign, trust = signer(run)
    d = run.work / f"sweep-{key}"
    d.mkdir(exist_ok=True)
    src, full, st, appliance = d / "src", d / "full", d / "st", d / "appliance"
    size = generate(Run(d, run.keep_free), src, size_arg)
    row: dict[str, Any] = done.setdefault(key, {"size": size})

    def timed_step(name: str, cmd: list[str], clean: Path, disk: int) -> None:
        if name in row:
            return
        shutil.rmtree(clean, ignore_errors=True)
        run.need(disk, f"sweep {size / GB:.1f} GB {name}")
        r = timed(cmd, 3600, run.logs / f"sweep-{key}-{name}.log")
        if r.rc != 0:
            sys.exit(f"sweep {name}: exit {r.rc}")
        row[name] = {"seconds": r.wall, "rss": r.rss}
        run.save()
        log(f"sweep {size / GB:.2f} GB {name}: {r.wall:.1f} s, peak RSS {r.rss / 1e6:.0f} MB")

    spec = full_spec(d / "full.yml", src)
    timed_step("bundle build", [AIRLOCK, "bundle", "build", str(spec), "-o", str(full), *sign], full, size)
    shutil.rmtree(src, ignore_errors=True)
    timed_step("bundle stage", [AIRLOCK, "bundle", "stage", str(full), "--to", str(st), *trust], st, size)
    shutil.rmtree(st, ignore_errors=True)
    timed_step("install-bundle", [AIRLOCK, "model", "install-bundle", str(full), *trust, "--root",
                                  str(appliance)], appliance, 2 * size)
    shutil.rmtree(d, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=parse_size, default=parse_size("16G"))
    ap.add_argument("--sweep", default="", help="comma-separated smaller sizes, peak-RSS sweep (2G,8G)")
    ap.add_argument("--work", type=Path, default=None, help="default benchmarks/work/scale-<size>")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/scale")
    ap.add_argument("--keep-free", type=parse_size, default=parse_size("20G"))
    ap.add_argument("--fresh", action="store_true", help="discard a previous interrupted run in --work")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (state, logs) at the end")
    ap.add_argument("--report", action="store_true", help="only write the report of the steps done so far")
    args = ap.parse_args()
    sweep_sizes = [parse_size(s) for s in args.sweep.split(",") if s.strip()]
    work: Path = args.work or ROOT / f"benchmarks/work/scale-{args.size}"
    if args.fresh and work.exists():
        stop_agent(work)
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    run = Run(work, args.keep_free)
    if args.report:
        write(args.out, run.state)
        return
    if run.state.get("size_arg", args.size) != args.size:
        sys.exit(f"{work}: holds a run of another size; pass --fresh or another --work")
    run.state["size_arg"] = args.size
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=False)
    run.state.setdefault("commit", head.stdout.strip() or None)
    run.save()
    try:
        main_path(run, args.size)
        write(args.out, run.state)
        log(f"wrote {args.out}.md/.json/.png")
        for s in sweep_sizes:
            sweep(run, s)
            write(args.out, run.state)
            log(f"wrote {args.out}.md/.json/.png with the {s / GB:.1f} GB sweep")
    finally:
        stop_agent(work)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


def write(out: Path, state: dict[str, Any]) -> None:
    size, b, stored = int(state["size"]), state["bounds"], int(state["stored"])
    steps = [Step(**s) for s in state["steps"]]
    setup = state.get("setup_seconds", {})
    cpus = len(os.sched_getaffinity(0))
    lines = [f"# The whole path at scale ({size / GB:.1f} GB DeepSeek-V3-shaped model)", "",
             f"`make bench-scale` (`python -m benchmarks.scale`), {cpus} CPUs. Bounds "
             f"in the same run: sha256sum {size / b['sha256'] / GB:.2f} GB/s, zstd -3 -T0 "
             f"{size / b['zstd'] / GB:.2f} GB/s, cp -r + sync {size / b['copy'] / GB:.2f} GB/s. Compressed "
             f"bundle: {stored / GB:.2f} GB ({stored / size:.3f}x)"
             + (f"; delta bundle: {state['delta_bytes'] / 1e6:.0f} MB" if "delta_bytes" in state else "")
             + ". Ratio = the bound's time / the step's time (1.0: as fast as the bound). Not timed: "
             f"generating the model ({setup.get('size', 0):.0f} s) and its v1.1 variant "
             f"({setup.get('variant', 0):.0f} s)."
             + (f" Code: commit {state['commit']}." if state.get("commit") else ""),
             "",
             "| step | seconds | GB/s | bound | ratio to bound | vs sha256 | vs zstd | vs copy | peak RSS MB"
             " |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for s in steps:
        each = " | ".join(f"{b[k] / s.seconds:.2f}" for k in ("sha256", "zstd", "copy"))
        lines.append(f"| {s.name} | {s.seconds:.1f} | {s.gbps:.3f} | {s.bound} | **{s.ratio:.2f}** | {each} "
                     f"| {s.rss / 1e6:.0f} |")
    slow = [f"{s.name} ({s.ratio:.2f}x of {s.bound})" for s in steps if s.ratio < 0.5]
    lines += ["", f"Below 0.5x of its bound: {', '.join(slow) or 'none'}."]
    missing = [n for n in STEPS if n not in {s.name for s in steps}]
    if missing:
        lines += ["", f"Not reached in this run: {', '.join(missing)}."]
    rss_rows = rss_table(state)
    if len(rss_rows) > 1:
        lines += ["", "Peak RSS (MB) against model size (same code, same run):", "",
                  "| model GB | bundle build | bundle stage | install-bundle |", "|---:|---:|---:|---:|"]
        for gb, row in rss_rows:
            lines.append(f"| {gb:.1f} | " + " | ".join(
                f"{row[k] / 1e6:.0f}" if k in row else "-" for k in ("bundle build", "bundle stage",
                                                                   "install-bundle")) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({
        "size": size, "stored": stored, "bounds": b, "cpus": cpus, "setup_seconds": setup,
        "commit": state.get("commit"), "delta_bytes": state.get("delta_bytes"), "steps": state["steps"],
        "sweep": state.get("sweep", {})},
        indent=1) + "\n")
    plot(out, steps, size, b, rss_rows)


def rss_table(state: dict[str, Any]) -> list[tuple[float, dict[str, int]]]:
    rows = [(int(r["size"]) / GB, {k: int(v["rss"]) for k, v in r.items() if isinstance(v, dict)})
            for r in state.get("sweep", {}).values()]
    main = {s["name"]: int(s["rss"]) for s in state["steps"]
            if s["name"] in ("bundle build", "bundle stage", "install-bundle")}
    return sorted([*rows, (int(state["size"]) / GB, main)])


def plot(out: Path, steps: list[Step], size: int, b: dict[str, float],
         rss_rows: list[tuple[float, dict[str, int]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_rss = len(rss_rows) > 1
    fig, axes = plt.subplots(1, 3 if with_rss else 2, figsize=(17 if with_rss else 12, 4.5))
    ax1, ax2 = axes[0], axes[1]
    names = [s.name for s in steps]
    ax1.barh(names, [s.gbps for s in steps], color="tab:blue")
    for label, secs in b.items():
        ax1.axvline(size / secs / GB, linestyle="--", linewidth=1, label=f"{label} bound", color={
            "sha256": "tab:red", "zstd": "tab:green", "copy": "tab:gray"}[label])
    ax1.set_xlabel("GB/s of model bytes (log)")
    ax1.set_xscale("log")
    ax1.invert_yaxis()
    ax1.legend(fontsize=8)
    ax2.barh(names, [s.ratio for s in steps], color=["tab:orange" if s.ratio < 0.5 else "tab:blue"
                                                      for s in steps])
    ax2.axvline(1.0, color="black", linewidth=1)
    ax2.axvline(0.5, color="tab:orange", linestyle=":", linewidth=1)
    for i, s in enumerate(steps):
        ax2.text(s.ratio, i, f" {s.ratio:.2f}x {s.bound}", va="center", fontsize=8)
    ax2.set_xlabel("bound time / step time (log; 1 = at the bound)")
    ax2.set_xscale("log")
    ax2.invert_yaxis()
    ax2.set_yticklabels([])
    if with_rss:
        ax3 = axes[2]
        for k in ("bundle build", "bundle stage", "install-bundle"):
            pts = [(gb, row[k] / 1e6) for gb, row in rss_rows if k in row]
            ax3.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=k)
        ax3.set_xlabel("model GB")
        ax3.set_ylabel("peak RSS MB")
        ax3.set_ylim(bottom=0)
        ax3.legend(fontsize=8)
    fig.suptitle(f"Airlock at scale: {size / GB:.1f} GB synthetic DeepSeek-V3-shaped model")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
