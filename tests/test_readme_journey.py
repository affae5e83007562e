"""The README's field journey and bundle audit, run as written (so they cannot rot): the blocks
between ``<!-- field-journey:begin/end -->`` and ``<!-- audit-journey:begin/end -->`` are executed
by bash with only the site values substituted: the demo signing key (GNUPGHOME, FPR), a temporary
stick (USB), a small model instead of the MiniLM download, ``sudo`` dropped when already root. The
stick is made read-only before the site part. The fleet command (``airlock install -i``) is outside
the block; the fleet tests run it against real SSH hosts."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from tests.bundle.field import REPO_ROOT, airlock_env
from tests.gpg import Keys
from tests.repo.models import make_model
from tests.support import require_tool

README = REPO_ROOT / "README.md"


def block(name: str) -> str:
    text = README.read_text(encoding="utf-8")
    m = re.search(rf"<!-- {name}:begin -->\n```sh\n(.*?)```\n<!-- {name}:end -->", text, re.S)
    assert m, f"README has no {name} block"
    return m.group(1)


def substitute(script: str, values: dict[str, str]) -> str:
    """Replace the right-hand side of ``NAME=...`` / ``export NAME=...`` lines (rest of the line)."""
    for name, value in values.items():
        script, n = re.subn(rf"^((?:export )?{name}=).*$", lambda m, v=value: m.group(1) + v, script,
                            flags=re.M)
        assert n == 1, f"{name} is not assigned once in the README block"
    if os.geteuid() == 0:
        script = re.sub(r"^sudo ", "", script, flags=re.M)
    return script.replace("bundle/demo-full.yml", str(REPO_ROOT / "bundle" / "demo-full.yml"))


def test_readme_field_journey_runs_as_written(keys: Keys, tmp_path: Path) -> None:
    require_tool("sha256sum", "apt-get install coreutils")
    home, usb, work = tmp_path / "home", tmp_path / "usb", tmp_path / "work"
    for d in (home, usb, work):
        d.mkdir()
    model = make_model(tmp_path / "minilm")
    journey = substitute(block("field-journey"), {
        "GNUPGHOME": str(keys.home), "FPR": keys.fpr["signer"], "USB": str(usb),
        "AIRLOCK_MINILM_OLD": str(model)})
    connected, site = journey.split("# at the site", 1)
    site = "# at the site" + site
    env = airlock_env(tmp_path / "appliance", HOME=str(home))
    env["PATH"] = f"{REPO_ROOT / '.venv' / 'bin'}:{env['PATH']}"

    def run(script: str) -> subprocess.CompletedProcess[str]:
        prelude = f"USB={usb}\nFPR={keys.fpr['signer']}\n"  # the values the connected part set
        r = subprocess.run(["bash", "-euo", "pipefail", "-c", prelude + script], cwd=work, env=env,
                           capture_output=True, text=True, timeout=600)
        assert "Traceback" not in r.stderr, r.stderr
        assert r.returncode == 0, r.stdout + r.stderr
        return r

    run(connected)
    assert (usb / "minilm-1.0.0" / "MANIFEST.json").is_file() and (usb / "minilm-1.0.0.tar").is_file()
    for p in [usb, *usb.rglob("*")]:  # the stick is read-only at the site
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        r = run(site)
        assert "installed minilm 1.0.0 (active)" in r.stdout and "minilm: active 1.0.0" in r.stdout
        r = run(block("audit-journey"))
        assert "Good signature" in r.stderr and ": OK" in r.stdout
        assert (home / "SHA256SUMS").is_file()
    finally:
        for p in [usb, *usb.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
