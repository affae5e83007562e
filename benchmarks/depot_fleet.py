"""Depot vs copy mode: the time to get one full bundle onto N hosts of the local fleet (issue 16 item 2).

    nice -n 10 .venv/bin/python -m benchmarks.depot_fleet [--size 256M] [--hosts 3 6] [--repeat 1]

For every N, a fresh fleet of N local-connection hosts (one repository root each, as
tests/fleet/test_rollout_local.py builds them) runs the real playbooks/install.yml twice:

* copy mode (today): ``airlock_bundle_copy: true``: model_update's copy.yml copies the bundle file by
  file from the control node (``ansible.builtin.copy``), then each host stages from its copy;
* depot mode: the bundle was imported once into a depot directory (``airlock depot import``, timed
  on its own), and each host stages from the depot itself (``airlock_depot``).

The figure is the *distribution window*, taken from ansible-runner's own task timestamps: from the
start of the role's first distribution task ("Copy the bundle from the control node", which runs or
is skipped first in both modes) to the end of the last host's "Verify and stage the bundle", i.e.
until every host holds a verified staged copy. The whole playbook's wall time is reported too. The
ratio is copy / depot (above 1: the depot is faster). All hosts share this machine's disk and cores,
so this measures the per-host work each mode does (copy mode: an Ansible copy with its checksums,
then a stage; depot mode: one stage), not a network: docs/depot.md models the site's links.
Raw figures go to benchmarks/work/depot-<size>.json; the Markdown table is printed."""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from airlock.bundle import Trust, build_bundle
from airlock.demo.keys import ensure_demo_key, export_public_key
from airlock.depot import Depot
from airlock.fixtures.__main__ import parse_size
from airlock.fixtures.synthetic import generate_synthetic
from airlock.fleet import run_playbook
from airlock.repo import Repository

ROOT = Path(__file__).resolve().parents[1]
PROFILE = "airlock-bench-cpu"
MODEL = "bench"
FIRST_TASK = "Copy the bundle from the control node"
LAST_TASK = "Verify and stage the bundle"


@dataclass
class Run:
    hosts: int
    mode: str
    window_s: float
    playbook_s: float


def _ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def distribution_window(events: list[dict[str, Any]]) -> float:
    """Seconds from the first distribution task's start to the last host's staged bundle."""
    starts, ends = [], []
    for e in events:
        d = e.get("event_data", {})
        if not str(e.get("event", "")).startswith("runner_on_") or "start" not in d or "end" not in d:
            continue
        if d.get("task") == FIRST_TASK:
            starts.append(_ts(d["start"]))
        elif d.get("task") == LAST_TASK:
            ends.append(_ts(d["end"]))
    if not starts or not ends:
        raise RuntimeError("no distribution task events (did the playbook run the model_update role?)")
    return max(ends) - min(starts)


def make_bundle(work: Path, size: int, split: int) -> tuple[Path, str, Path]:
    home = work / "gnupg"
    fpr = ensure_demo_key(home)
    keyring = export_public_key(home, fpr, work / "trusted.asc")
    model = generate_synthetic(work / "model", size_bytes=size, seed=1)
    spec = work / "bench.yml"
    spec.write_text(yaml.safe_dump({"compatible": PROFILE, "sequence": 1, "bundle_id": "bench-full",
                                    "split_size": split,
                                    "models": [{"name": MODEL, "version": "1.0.0", "path": str(model)}]}))
    bundle = work / "stick" / "bench-full"
    build_bundle(spec, bundle, signer=fpr, gnupghome=home)
    return bundle, fpr, keyring


def run_mode(work: Path, n: int, mode: str, bundle: Path, fpr: str, keyring: Path, depot: Path) -> Run:
    fleet = work / "fleet"
    shutil.rmtree(fleet, ignore_errors=True)
    hosts = {f"bench-{i}": {"airlock_root": str(fleet / f"bench-{i}")} for i in range(n)}
    inv = {"all": {"children": {"appliances": {"hosts": hosts}},
                   "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                            "airlock_state_dir": str(fleet / "control"), "airlock_compatible": PROFILE}}}
    inventory = work / "inventory.yml"
    inventory.write_text(yaml.safe_dump(inv))
    ev: dict[str, Any] = {"airlock_trust": [fpr], "airlock_keyring": str(keyring)}
    if mode == "copy":
        ev.update(airlock_bundle=str(bundle), airlock_bundle_copy=True)
    else:
        ev.update(airlock_bundle="bench-full", airlock_depot=str(depot))
    t0 = time.monotonic()
    r = run_playbook("install", inventory, ev, private_data_dir=work / "runner", rotate_artifacts=2)
    wall = time.monotonic() - t0
    if r.rc != 0:
        raise RuntimeError(f"{mode} mode on {n} hosts failed: {json.dumps(r.as_dict())[-2000:]}")
    for h in hosts:  # every host really holds and serves the version
        repo = Repository(fleet / h)
        try:
            assert repo.state()["models"][MODEL]["active"] == "1.0.0", h
        finally:
            repo.close()
    return Run(n, mode, distribution_window(r.events), wall)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="256M", help="model size (default 256M)")
    ap.add_argument("--split", default="64M", help="payload split size on the stick (default 64M)")
    ap.add_argument("--hosts", type=int, nargs="+", default=[3, 6])
    ap.add_argument("--repeat", type=int, default=1, help="runs per mode and N (the median counts)")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "depot")
    a = ap.parse_args()
    size, split = parse_size(a.size), parse_size(a.split)
    work: Path = a.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    bundle, fpr, keyring = make_bundle(work, size, split)
    depot = work / "warm" / "depot"
    imp = Depot(depot).import_bundle(bundle, Trust([fpr], keyring=keyring))
    runs: list[Run] = []
    for n in a.hosts:
        for _ in range(a.repeat):
            for mode in ("copy", "depot"):
                runs.append(run_mode(work, n, mode, bundle, fpr, keyring, depot))
                print(f"{n} hosts, {mode}: {runs[-1].window_s:.1f} s to stage everywhere, "
                      f"playbook {runs[-1].playbook_s:.1f} s", flush=True)
    shutil.rmtree(work / "fleet", ignore_errors=True)
    rows = []
    for n in a.hosts:
        def med(mode: str, key: str, n: int = n) -> float:
            return statistics.median(getattr(r, key) for r in runs if r.hosts == n and r.mode == mode)

        rows.append({"hosts": n, "copy_s": med("copy", "window_s"), "depot_s": med("depot", "window_s"),
                     "copy_playbook_s": med("copy", "playbook_s"),
                     "depot_playbook_s": med("depot", "playbook_s")})
    bytes_ = imp.entry.bytes
    doc = {"bundle_bytes": bytes_, "files": imp.entry.files, "import_s": imp.seconds, "rows": rows,
           "runs": [asdict(r) for r in runs], "repeat": a.repeat}
    (work.parent / f"depot-{a.size}.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nbundle {bytes_ / 1e6:.0f} MB in {imp.entry.files} files; one-time depot import "
          f"{imp.seconds:.1f} s\n")
    print("| hosts | copy mode: staged everywhere | depot: staged everywhere | ratio copy/depot "
          "| playbook copy / depot | ratio incl. import |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ratio = r["copy_s"] / r["depot_s"]
        print(f"| {r['hosts']} | {r['copy_s']:.1f} s | {r['depot_s']:.1f} s | {ratio:.2f} "
              f"| {r['copy_playbook_s']:.1f} s / {r['depot_playbook_s']:.1f} s "
              f"| {r['copy_s'] / (r['depot_s'] + imp.seconds):.2f} |")


if __name__ == "__main__":
    main()
