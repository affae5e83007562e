"""``airlock report`` on real compliance reports of two real hosts (one clean, one with a flipped
weight byte and a hostile stray file name): a self-contained HTML page checked in a real headless
Debian chromium (the DOM it built, a screenshot), and a JSON twin whose detached armoured signature
real gpg verifies."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

from airlock.repo import Repository
from tests.fleet.bundles import MODEL, Bundles, install_host
from tests.monitoring.helpers import flip_byte
from tests.repo.conftest import cli
from tests.repo.verify_fleet import Fleet, airlock, drift_on_h1
from tests.support import require_tool

HOSTILE = '<img src=x onerror="document.title=1">'
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# where to keep the screenshot and page of the run (e.g. for the closing note); unset: tmp only
_KEEP = os.environ.get("AIRLOCK_REPORT_SCREENSHOT_DIR")
SCREENSHOT_DIR = Path(_KEEP) if _KEEP else None


def chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    tool = require_tool("chromium", "apt-get install chromium")
    return subprocess.run([tool, *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'chromium-profile'}", *args],
                          capture_output=True, text=True, timeout=180)


def verify_json(root: Path, b: Bundles, out: Path) -> Path:
    r = cli(root, "model", "verify", "--json", "--trust", b.fingerprint, "--keyring", str(b.keyring))
    assert r.returncode in (0, 13), r.stderr
    out.write_text(r.stdout)
    return out


def test_report_in_headless_chromium(appliance: Repository, mon_bundles: Bundles, tmp_path: Path) -> None:
    other = install_host(tmp_path / "root-b", mon_bundles, tmp_path)
    flip_byte(other)
    (other.layout.model_dir(MODEL) / HOSTILE.replace("/", "_")).write_text("stray")
    a = verify_json(appliance.layout.root, mon_bundles, tmp_path / "a.json")
    b = verify_json(other.layout.root, mon_bundles, tmp_path / "b.json")
    out = tmp_path / "report"
    r = cli(tmp_path, "report", f"appliance-a={a}", f"appliance-b={b}", "--out", str(out),
            "--sign", mon_bundles.fingerprint, "--gnupghome", str(mon_bundles.gnupghome), "--json")
    assert r.returncode == 0, r.stderr
    files = json.loads(r.stdout)
    page, twin, sig = Path(files["html"]), Path(files["json"]), Path(files["signature"])

    # the signed twin: real gpg verifies the detached armoured signature; a changed byte fails it
    gpg = ["gpg", "--batch", "--no-tty", "--homedir", str(mon_bundles.gnupghome)]
    ok = subprocess.run([*gpg, "--verify", str(sig), str(twin)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert sig.read_text().startswith("-----BEGIN PGP SIGNATURE-----")
    doc = json.loads(twin.read_text())
    assert doc["summary"]["hosts"] == 2 and doc["summary"]["hosts_ok"] == 1
    assert doc["summary"]["active_versions"] == {f"{MODEL} 1.1.0": 2}
    tampered = tmp_path / "tampered.json"
    tampered.write_text(twin.read_text().replace('"hosts_ok": 1', '"hosts_ok": 2'))
    bad = subprocess.run([*gpg, "--verify", str(sig), str(tampered)], capture_output=True, text=True)
    assert bad.returncode != 0

    # self-contained: no URL but the SVG namespace, no script
    text = page.read_text()
    assert set(re.findall(r"https?://[^\s\"'<>]+", text)) == {"http://www.w3.org/2000/svg"}
    assert "<script" not in text.lower()

    # the real browser's DOM: summary, both hosts, the drift rule, the chart, the hostile name as text
    dom = chromium(tmp_path, "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert '<span id="hosts-ok">1/2 hosts OK</span>' in html
    assert "appliance-a" in html and "appliance-b" in html and ">sha256<" in html and ">stray-file<" in html
    assert "<svg" in html and 'aria-label="Active versions across the fleet"' in html
    assert html.count("<b>1.1.0</b> (1.0.0 previous)") == 2  # hosts x models: active and the others
    assert "<title>Airlock fleet report" in html  # the hostile onerror never ran (it would set title 1)
    assert "&lt;img src=x onerror" in html and "<img" not in html

    shot = tmp_path / "fleet-report.png"
    s = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,900", "--hide-scrollbars",
                 page.as_uri())
    assert s.returncode == 0 and shot.is_file(), s.stderr[-2000:]
    head = shot.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", head[16:24]) == (1280, 900)
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
    if SCREENSHOT_DIR is not None:
        SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, SCREENSHOT_DIR / shot.name)
        shutil.copy(page, SCREENSHOT_DIR / page.name)


def test_report_bad_input(tmp_path: Path) -> None:
    (tmp_path / "junk.json").write_text("[1, 2")
    (tmp_path / "other.json").write_text('{"something": 1}')
    for f in ("junk.json", "other.json", "missing.json"):
        r = cli(tmp_path, "report", str(tmp_path / f), "--out", str(tmp_path / "out"))
        assert r.returncode == 11, (f, r.stderr)
        assert "Traceback" not in r.stderr and f in r.stderr
    assert not (tmp_path / "out").exists()


def test_report_from_the_fleet_verify(fleet: Fleet, tmp_path: Path) -> None:
    """The fleet's own ``airlock verify --json`` (Ansible, local-connection hosts h1 with drift, h2
    clean) merged with h2's compliance report: both hosts, h1's drift items whole, h2's versions."""
    drift_on_h1(fleet)
    r = airlock("verify", "-i", str(fleet.inventory), "--json", "--runner-dir", str(fleet.base / "runner"),
                *fleet.trust_args(), "-e", f"airlock_report_signer={fleet.bundles.fingerprint}",
                "-e", f"airlock_report_gnupghome={fleet.bundles.gnupghome}")
    assert r.returncode == 40, r.stderr
    (tmp_path / "fleet.json").write_text(r.stdout)
    h2 = verify_json(fleet.root("h2"), fleet.bundles, tmp_path / "h2.json")
    out = tmp_path / "report"
    rep = cli(tmp_path, "report", str(tmp_path / "fleet.json"), f"h2={h2}", "--out", str(out))
    assert rep.returncode == 0, rep.stderr
    doc = json.loads((out / "fleet-report.json").read_text())
    hosts = {h["host"]: h for h in doc["hosts"]}
    assert sorted(hosts) == ["h1", "h2"] and not (out / "fleet-report.json.asc").exists()
    assert not hosts["h1"]["ok"] and {d["rule"] for d in hosts["h1"]["drift"]} == {"mode", "stray-version"}
    assert hosts["h2"]["ok"] and hosts["h2"]["models"][MODEL]["active"] == "1.1.0"
    dom = chromium(tmp_path, "--dump-dom", (out / "fleet-report.html").as_uri())
    assert dom.returncode == 0 and '<span id="hosts-ok">1/2 hosts OK</span>' in dom.stdout

    # verify.yml itself wrote the report on the control node (default: <state dir>/report), from each
    # host's airlock_model_info result, before failing h1 for its drift: both hosts' models, h1's drift
    written = fleet.base / "control" / "report"
    doc = json.loads((written / "fleet-report.json").read_text())
    hosts = {h["host"]: h for h in doc["hosts"]}
    assert sorted(hosts) == ["h1", "h2"] and doc["summary"]["hosts_ok"] == 1
    assert {d["rule"] for d in hosts["h1"]["drift"]} == {"mode", "stray-version"}
    assert all(hosts[h]["models"][MODEL]["active"] == "1.1.0" for h in hosts)
    assert hosts["h1"]["signatures_checked"] and hosts["h2"]["audit_head"]
    dom = chromium(tmp_path, "--dump-dom", (written / "fleet-report.html").as_uri())
    assert dom.returncode == 0 and '<span id="hosts-ok">1/2 hosts OK</span>' in dom.stdout
    assert dom.stdout.count("<b>1.1.0</b> (1.0.0 previous)") == 2
    # signed with the site key given (airlock_report_signer): real gpg verifies the twin
    ok = subprocess.run(["gpg", "--batch", "--no-tty", "--homedir", str(fleet.bundles.gnupghome), "--verify",
                         str(written / "fleet-report.json.asc"), str(written / "fleet-report.json")],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
