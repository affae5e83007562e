"""Run one fuzz target with atheris (coverage-guided, libFuzzer):

    python -m tests.fuzz.run TARGET [--seconds N] [--corpus DIR] [--artifacts DIR] [--jobs J]

The corpus directory is seeded with the target's valid inputs (structure-aware starting points) and
keeps what the fuzzer finds; a crash is written to ``--artifacts`` and the run exits non-zero. Add
every finding to ``tests/fuzz/regressions/TARGET/`` (replayed by ``tests/fuzz/test_fuzz.py``)."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["airlock"]):
    from tests.fuzz.targets import TARGETS


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tests.fuzz.run")
    ap.add_argument("target", choices=sorted(TARGETS))
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--corpus", type=Path, default=None)
    ap.add_argument("--artifacts", type=Path, default=None)
    ap.add_argument("--max-len", type=int, default=65536)
    args, extra = ap.parse_known_args(argv)
    target = TARGETS[args.target]
    corpus = args.corpus or Path(tempfile.mkdtemp(prefix=f"airlock-fuzz-{args.target}-"))
    corpus.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(target.seeds()):
        (corpus / f"seed-{i}").write_bytes(seed)
    artifacts = args.artifacts or corpus.parent / f"{corpus.name}-crashes"
    artifacts.mkdir(parents=True, exist_ok=True)
    flags = [sys.argv[0], str(corpus), f"-max_total_time={args.seconds}", f"-max_len={args.max_len}",
             f"-artifact_prefix={artifacts}/", "-print_final_stats=1", "-timeout=30", "-rss_limit_mb=3072"]
    if target.tokens:
        tokens = corpus.parent / f"{corpus.name}.dict"
        tokens.write_text("".join(f'"{_escape(t)}"\n' for t in target.tokens))
        flags.append(f"-dict={tokens}")
    print(f"fuzz {args.target}: corpus {corpus}, artifacts {artifacts}, {args.seconds} s", flush=True)
    start = time.monotonic()
    atheris.Setup(flags + extra, target.run)
    try:
        atheris.Fuzz()
    finally:
        print(f"fuzz {args.target}: stopped after {time.monotonic() - start:.0f} s", flush=True)


def _escape(token: bytes) -> str:
    return "".join(chr(b) if 32 <= b < 127 and b not in (34, 92) else f"\\x{b:02x}" for b in token)


if __name__ == "__main__":
    main()
