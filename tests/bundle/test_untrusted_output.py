"""Issue 14, classes 1 and 2: untrusted strings reach the terminal escaped (control characters, bidi
overrides, rich markup) while --json carries them exactly; `airlock preflight --bundle` reads only a
signature-verified manifest through the safe reader."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
from rich.console import Console

from airlock.bundle import pack_bundle
from airlock.bundle.manifest import MANIFEST_NAME, SIGNATURE_NAME
from airlock.textsafe import safe, visible
from tests.bundle.conftest import BundleFactory, Keys, airlock_cmd

HOSTILE = [
    "\x1b]0;owned\x07[bold red]x",  # OSC title + markup
    "\x1b[2J\x1b[Hclear",  # clear screen
    "\x9b31mC1",  # C1 CSI
    "evil\u202etxt.exe",  # RLO
    "a[/]b",  # a closing tag with nothing open: MarkupError if interpreted
    ":thumbs_up: back\\slash",  # emoji code, a backslash
    "lone\udcff",  # a non-UTF-8 byte as Python sees it
]


@pytest.mark.parametrize("text", HOSTILE)
def test_safe_prints_exactly_the_visible_text(text: str) -> None:
    buf = io.StringIO()
    Console(file=buf, emoji=False, width=400, color_system=None).print(safe(text), highlight=False,
                                                                        markup=True)
    shown = buf.getvalue().rstrip("\n")
    assert shown == visible(text)
    assert shown.isprintable() and "\x1b" not in shown and "\u202e" not in shown
    assert visible("plain-name_1.0.json") == "plain-name_1.0.json"


def test_trailing_backslash_cannot_escape_the_closing_tag() -> None:
    buf = io.StringIO()
    Console(file=buf, emoji=False, color_system=None).print(
        f"[bold]{safe('end[b]x')}[/] after [bold]{safe('q' + chr(92))}[/] done")
    assert buf.getvalue().startswith("end[b]x after q")
    assert buf.getvalue().rstrip().endswith("done")


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*airlock_cmd(), *args], capture_output=True, text=True, timeout=timeout,
                          errors="surrogateescape",
                          env={**os.environ, "COLUMNS": "400", "AIRLOCK_PROFILE_FILE": "/nonexistent"})


def _trust(keys: Keys) -> list[str]:
    return ["--trust", keys.fpr["signer"], "--keyring", str(keys.keyring("signer"))]


def _raw(s: str) -> bool:
    return any(c in s for c in ("\x1b", "\x9b", "\u202e", "\x07"))


def test_extra_file_names_escaped_in_verify(factory: BundleFactory, keys: Keys) -> None:
    bundle = factory.build()
    names = [n.replace("/", "_") for n in HOSTILE if "\udcff" not in n]
    for n in names:
        (bundle / n).write_bytes(b"x")
    r = _run("bundle", "verify", str(bundle), *_trust(keys))
    assert r.returncode == 0, r.stderr
    assert not _raw(r.stdout + r.stderr), r.stdout
    assert "\\x1b]0;owned\\x07[bold red]x" in r.stdout  # markup printed as written, ESC visible
    assert "a[_]b" in r.stdout and ":thumbs_up: back\\slash" in r.stdout and "evil\\u202etxt.exe" in r.stdout
    j = _run("bundle", "verify", str(bundle), *_trust(keys), "--json")
    assert j.returncode == 0
    assert sorted(json.loads(j.stdout)["extra_files"]) == sorted(names)  # exact strings


def test_tar_member_name_escaped_in_error_line(factory: BundleFactory, keys: Keys, tmp_path: Path) -> None:
    bundle = factory.build()
    tar = tmp_path / "b.tar"
    pack_bundle(bundle, tar, None)
    evil = "\x1b[2J\x1b]0;owned\x07[bold red]pwn"
    with tarfile.open(tar, "a", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo(evil)
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    r = _run("bundle", "verify", str(tar), *_trust(keys))
    assert r.returncode == 12, r.stderr
    assert not _raw(r.stderr) and "Traceback" not in r.stderr
    assert "\\x1b[2J\\x1b]0;owned\\x07[bold red]pwn" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    j = _run("bundle", "verify", str(tar), *_trust(keys), "--json")
    assert j.returncode == 12 and json.loads(j.stdout)["path"] == evil


# ------------------------------------------------------------------------------ preflight --bundle


def _preflight(bundle: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return _run("preflight", "--bundle", str(bundle), "--root", str(bundle.parent), "--min-ram-gib", "0",
                "--allow-fail", "gpu", "--allow-fail", "time", "--allow-fail", "cpu", *extra, timeout=60)


def test_preflight_reads_only_a_signed_manifest(factory: BundleFactory, keys: Keys, tmp_path: Path) -> None:
    bundle = factory.build()
    ok = _preflight(bundle, *_trust(keys), "--json")
    assert ok.returncode in (0, 14), ok.stderr
    assert json.loads(ok.stdout)["checks"]
    # without --trust: a usage error, nothing read
    r = _preflight(bundle)
    assert r.returncode == 2 and "--trust" in r.stderr
    # an unsigned manifest swapped in after verify: refused (exit 10), not judged
    doc = json.loads((bundle / MANIFEST_NAME).read_bytes())
    doc["files"] = {}
    doc["models"] = []
    (bundle / MANIFEST_NAME).chmod(0o644)
    (bundle / MANIFEST_NAME).write_text(json.dumps(doc))
    r = _preflight(bundle, *_trust(keys))
    assert r.returncode == 10 and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("kind", ["symlink", "fifo", "garbage", "directory", "no-signature"])
def test_preflight_hostile_manifest_file(kind: str, factory: BundleFactory, keys: Keys,
                                         tmp_path: Path) -> None:
    bundle = factory.build()
    target = tmp_path / "elsewhere.json"
    shutil.copyfile(bundle / MANIFEST_NAME, target)
    m = bundle / MANIFEST_NAME
    m.unlink()
    if kind == "symlink":
        m.symlink_to(target)
    elif kind == "fifo":
        os.mkfifo(m)
    elif kind == "garbage":
        m.write_bytes(b"\x00{[" * 1000)
    elif kind == "directory":
        m.mkdir()
    else:
        shutil.copyfile(target, m)
        (bundle / SIGNATURE_NAME).unlink()
    start = time.monotonic()
    r = _preflight(bundle, *_trust(keys))
    assert time.monotonic() - start < 50  # a FIFO is never opened for reading
    expected = {"symlink": 12, "fifo": 12, "garbage": 10, "directory": 12, "no-signature": 10}[kind]
    assert r.returncode == expected, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
