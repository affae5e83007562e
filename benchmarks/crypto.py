"""Encryption-at-rest throughput: Airlock's chunked AES-256-GCM against OpenSSL on the same file.

    .venv/bin/python -m benchmarks.crypto [--size-mib 256] [--repeat 3] [--work benchmarks/work/crypto]

Measured in one run, warm page cache, best of --repeat, on the same random file:
  openssl speed -evp aes-256-gcm (16 KiB blocks)   in-memory AES-GCM bound of this CPU, no I/O
  openssl enc -aes-256-ctr   file -> file           OpenSSL's streaming file encryption (enc has no GCM)
  cryptography's AESGCM in memory, 1 and 2 threads (does threading pay?)
  airlock encrypt / decrypt, 1 and 2 worker threads (library call, file -> file incl. fsync)
  airlock random access: 1 MiB read at 64 offsets through open_decrypted
and prints a Markdown table with MiB/s and ratios to ``openssl enc``. The benchmark key is a
throwaway: OpenSSL gets a passphrase file, never a key on its command line.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from airlock.crypto import ProviderRegistry, decrypt_file, encrypt_file, open_decrypted

ROOT = Path(__file__).resolve().parents[1]
MiB = 1 << 20


def _best(fn: Callable[[], object], repeat: int, cleanup: Callable[[], None] | None = None) -> float:
    best = float("inf")
    for _ in range(repeat):
        if cleanup:
            cleanup()
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _openssl_speed() -> float:
    """MiB/s of `openssl speed -evp aes-256-gcm` at 16384-byte blocks."""
    out = subprocess.run(
        ["openssl", "speed", "-evp", "aes-256-gcm", "-seconds", "2", "-bytes", "16384"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(ln for ln in out.splitlines() if ln.lower().startswith("aes-256-gcm"))
    kbytes = float(re.findall(r"([\d.]+)k", line)[-1])  # 1000s of bytes per second
    return kbytes * 1000 / MiB


def _aead_threads(workers: int, chunks: int = 128) -> float:
    """MiB/s of in-memory AES-256-GCM on 1 MiB chunks with ``workers`` threads (does threading pay?)."""
    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    data, nonce = os.urandom(MiB), os.urandom(12)
    start = time.perf_counter()
    if workers == 1:
        for _ in range(chunks):
            aead.encrypt(nonce, data, b"")
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda _i: aead.encrypt(nonce, data, b""), range(chunks)))
    return chunks / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks/work/crypto")
    args = ap.parse_args(argv)
    work: Path = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    src = work / "plain.bin"
    with open(src, "wb") as f:
        for _ in range(args.size_mib):
            f.write(os.urandom(MiB))
    size = src.stat().st_size
    keydir = Path(tempfile.mkdtemp(prefix="airlock-bench-keys-"))
    reg = ProviderRegistry(
        {"providers": {"dev": {"type": "keyfile", "dir": str(keydir), "allow_development_keyfile": True}}}
    )
    reg.get("dev").generate("bench")
    provider = reg.get("dev")
    passfile = keydir / "openssl.pass"
    passfile.write_bytes(os.urandom(32).hex().encode())
    passfile.chmod(0o600)
    enc, out = work / "x.enc", work / "x.out"

    def rm(*paths: Path) -> Callable[[], None]:
        return lambda: [p.unlink(missing_ok=True) for p in paths] and None

    rows: list[tuple[str, float]] = []
    rows.append(("openssl speed -evp aes-256-gcm (memory, 16 KiB)", _openssl_speed()))
    for workers in (1, 2):
        rate = max(_aead_threads(workers) for _ in range(args.repeat))
        rows.append((f"cryptography AESGCM in memory, 1 MiB chunks, {workers} thread(s)", rate))
    ossl_out = work / "openssl.enc"
    t = _best(
        lambda: subprocess.run(
            [
                "openssl",
                "enc",
                "-aes-256-ctr",
                "-pbkdf2",
                "-iter",
                "1",
                "-pass",
                f"file:{passfile}",
                "-in",
                str(src),
                "-out",
                str(ossl_out),
            ],
            check=True,
        ),
        args.repeat,
        rm(ossl_out),
    )
    ossl = size / MiB / t
    rows.append(("openssl enc -aes-256-ctr (file -> file)", ossl))
    t = _best(
        lambda: subprocess.run(
            [
                "openssl",
                "enc",
                "-d",
                "-aes-256-ctr",
                "-pbkdf2",
                "-iter",
                "1",
                "-pass",
                f"file:{passfile}",
                "-in",
                str(ossl_out),
                "-out",
                str(out),
            ],
            check=True,
        ),
        args.repeat,
        rm(out),
    )
    rows.append(("openssl enc -d -aes-256-ctr (file -> file)", size / MiB / t))
    for workers in (1, 2):
        t = _best(
            lambda w=workers: encrypt_file(src, enc, provider, "bench", workers=w), args.repeat, rm(enc)
        )
        rows.append((f"airlock encrypt, {workers} worker(s)", size / MiB / t))
    for workers in (1, 2):
        t = _best(lambda w=workers: decrypt_file(enc, out, reg, workers=w), args.repeat, rm(out))
        rows.append((f"airlock decrypt, {workers} worker(s)", size / MiB / t))
    assert out.read_bytes()[:MiB] == src.read_bytes()[:MiB]
    rng = random.Random(0)
    offsets = [rng.randrange(0, max(1, size - MiB)) for _ in range(64)]

    def random_reads() -> None:
        with open_decrypted(enc, reg) as reader:
            for off in offsets:
                reader.seek(off)
                reader.read(MiB)

    t = _best(random_reads, args.repeat)
    rows.append(("airlock random access, 64 x 1 MiB reads", 64 * MiB / MiB / t))

    cpus = os.cpu_count()
    print(f"\nEncryption at rest, {args.size_mib} MiB random file, {cpus} CPU(s), best of {args.repeat}\n")
    print("| method | MiB/s | ratio to openssl enc |")
    print("| --- | ---: | ---: |")
    for name, rate in rows:
        print(f"| {name} | {rate:,.0f} | {rate / ossl:.2f} |")
    shutil.rmtree(keydir, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
