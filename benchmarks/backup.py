"""Backups with restic vs ``tar | zstd`` of the same data, in one run (issue 16 items 3-4).

    nice -n 10 .venv/bin/python -m benchmarks.backup [--size 256M] [--zstd-level 3]

A host root with a synthetic DeepSeek-shaped model 1.0.0 (``airlock.fixtures``) is backed up with
``airlock.backup.create`` into a fresh local restic repository (restic 0.14: repository v2, zstd
compression, AES-256 + Poly1305, content-defined chunks) and archived with ``tar -cf - | zstd -T0``;
both are restored into empty directories (``airlock.backup.restore`` without and with its
verification; ``zstd -dc | tar -xf``). Then the model gets a partial fine-tune 1.1.0 through a real
delta update (``Repository.update_from_delta``), and the second backup's added bytes are compared
with the data it covers (the dedup ratio) and with a second ``tar | zstd`` archive. Last, the restore
drill (restore onto a scratch root, verify, compare with the live root). Throughputs are the
model_repo bytes over wall time (restic's own ``restic check`` after the backup is timed apart).
Raw figures go to benchmarks/work/backup-<size>.json; the Markdown table is printed."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from airlock.backup import PasswordSource, Restic, create, drill, restore
from airlock.backup.engine import check
from airlock.fixtures.__main__ import parse_size
from airlock.fixtures.synthetic import generate_synthetic, make_variant
from airlock.hashing import tree_files

WORK = Path(__file__).resolve().parent / "work"


def du(path: Path) -> int:
    """Bytes of the regular files under ``path`` (hard links counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for rel in tree_files(path):
        st = os.lstat(path / rel)
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


def timed(cmd: str) -> float:
    t0 = time.monotonic()
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True)
    return time.monotonic() - t0


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="256M", help="model size (default 256M)")
    ap.add_argument("--zstd-level", type=int, default=3)
    args = ap.parse_args(argv)
    size = parse_size(args.size)
    from airlock.delta import make_delta
    from airlock.repo import Repository

    work = WORK / f"backup-{args.size}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    v1 = generate_synthetic(work / "src-1.0.0", size_bytes=size, seed=0)
    v2 = make_variant(v1, work / "src-1.1.0", "partial", seed=1)
    delta = work / "m-1.0.0-1.1.0.aldelta"
    make_delta(v1, v2, delta, from_version="1.0.0", to_version="1.1.0")
    root = work / "root"
    repo = Repository(root)
    repo.install_version("m", "1.0.0", v1)
    repo.close()
    pw = work / "secrets" / "restic.pw"
    pw.parent.mkdir(mode=0o700)
    pw.write_text("benchmark-password\n")
    pw.chmod(0o600)
    restic = Restic(str(work / "restic"), PasswordSource(file=pw), cache_dir=work / "cache")
    data1 = du(root / "model_repo")

    r1 = create(root, restic)
    t = time.monotonic()
    check(restic)
    check_s = time.monotonic() - t
    repo_after_1 = du(work / "restic")
    tar1 = work / "first.tar.zst"
    tar_s = timed(f"tar -C {root} -cf - model_repo | zstd -q -T0 -{args.zstd_level} -o {tar1}")
    untar_dir = work / "untar"
    untar_dir.mkdir()
    untar_s = timed(f"zstd -q -dc {tar1} | tar -C {untar_dir} -xf -")
    res_fast = restore(restic, work / "restored-noverify", verify=False)
    res_full = restore(restic, work / "restored-verified", verify=True)
    shutil.rmtree(untar_dir)
    shutil.rmtree(work / "restored-noverify")
    shutil.rmtree(work / "restored-verified")

    repo = Repository(root)
    repo.update_from_delta("m", delta)
    repo.close()
    data2 = du(root / "model_repo")
    r2 = create(root, restic)
    repo_after_2 = du(work / "restic")
    tar2 = work / "second.tar.zst"
    timed(f"tar -C {root} -cf - model_repo | zstd -q -T0 -{args.zstd_level} -o {tar2}")
    rep = drill(root, restic, work / "scratch")

    mib = 1 << 20
    out: dict[str, Any] = {
        "size": args.size, "model_repo_bytes_1": data1, "model_repo_bytes_2": data2,
        "restic_backup_s": r1.seconds, "restic_check_s": check_s, "restic_repo_bytes_1": repo_after_1,
        "tar_zstd_s": tar_s, "tar_zstd_bytes_1": tar1.stat().st_size,
        "restic_restore_s": res_fast.seconds, "restic_restore_verified_s": res_full.seconds,
        "untar_s": untar_s,
        "second_backup_added": r2.bytes_added, "second_backup_processed": r2.bytes_processed,
        "second_backup_s": r2.seconds, "restic_repo_growth": repo_after_2 - repo_after_1,
        "tar_zstd_bytes_2": tar2.stat().st_size, "delta_bytes": delta.stat().st_size,
        "drill_ok": rep["ok"], "drill_s": rep["seconds"],
        "drill_files_compared": rep.get("compare", {}).get("files_compared"),
    }
    WORK.mkdir(exist_ok=True)
    (WORK / f"backup-{args.size}.json").write_text(json.dumps(out, indent=2) + "\n")
    rows = [
        ("backup (first, full)", f"{data1 / mib / r1.seconds:.0f} MiB/s", f"{data1 / mib / tar_s:.0f} MiB/s",
         f"{tar_s / r1.seconds:.2f}"),
        ("restore (no verify)", f"{data1 / mib / res_fast.seconds:.0f} MiB/s",
         f"{data1 / mib / untar_s:.0f} MiB/s", f"{untar_s / res_fast.seconds:.2f}"),
        ("restore + verify (every file re-hashed)", f"{data1 / mib / res_full.seconds:.0f} MiB/s", "-", "-"),
        ("stored size, first", f"{repo_after_1 / mib:.1f} MiB", f"{tar1.stat().st_size / mib:.1f} MiB",
         f"{tar1.stat().st_size / repo_after_1:.2f}"),
        ("second backup after the delta update (stored)", f"{(repo_after_2 - repo_after_1) / mib:.1f} MiB",
         f"{tar2.stat().st_size / mib:.1f} MiB (a full archive again)",
         f"{tar2.stat().st_size / max(1, repo_after_2 - repo_after_1):.1f}"),
    ]
    print(f"\n### Backups: restic vs tar | zstd -{args.zstd_level} ({args.size} model, model_repo "
          f"{data1 / mib:.0f} MiB, then {data2 / mib:.0f} MiB)\n")
    print("| | restic (airlock backup) | tar \\| zstd | ratio (tar/restic) |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\nSecond backup: {r2.bytes_processed / mib:.0f} MiB covered (hard-linked paths counted each "
          f"time), {r2.bytes_added / mib:.1f} MiB added (dedup ratio "
          f"{r2.bytes_processed / max(1, r2.bytes_added):.1f}x; the delta file itself is "
          f"{delta.stat().st_size / mib:.1f} MiB). restic check after the backup: {check_s:.1f}s. "
          f"Restore drill: {'ok' if rep['ok'] else 'FAILED'}, {out['drill_files_compared']} files compared, "
          f"{rep['seconds']:.1f}s.")
    return out


if __name__ == "__main__":
    main()
