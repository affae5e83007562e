"""The site depot (issue 16 item 2) through the real CLI: a bundle with split payloads imported once
(verified, laid out as a staged bundle, signature kept byte for byte), appliances staging from it
(resumable by block, every byte checked against the signed block hashes), and the refusals."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from airlock.bundle import Trust, stage_bundle
from airlock.errors import IntegrityError
from airlock.safetensors_io import build_header
from tests.bundle.factory import BundleFactory, payload
from tests.depot.cli import airlock, import_, trust_args
from tests.gpg import Keys
from tests.support import flip_byte
from tests.support import tree_state as snapshot

__all__ = ["airlock", "import_", "trust_args"]  # still importable from here by modules not moved yet


def test_import_once_then_appliances_stage_from_it(factory: BundleFactory, keys: Keys, trust: Trust,
                                                   tmp_path: Path) -> None:
    stick = factory.build()
    assert (stick / "models/minilm/1.0.0/big.bin.part002").is_file()  # split on the stick
    depot = tmp_path / "depot"
    r = import_(stick, depot, keys)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    bid = doc["bundle_id"]
    assert doc["changed"] is True and doc["state"] == "ready" and doc["signer"] == keys.fpr["signer"]
    entry = depot / bid
    # laid out as a staged bundle: manifest and signature byte for byte, payloads whole, sealed 0400
    for name in ("MANIFEST.json", "MANIFEST.json.asc"):
        assert (entry / name).read_bytes() == (stick / name).read_bytes()
    big = entry / "models/minilm/1.0.0/big.bin"
    parts = sorted((stick / "models/minilm/1.0.0").glob("big.bin.part*"))
    assert big.read_bytes() == b"".join(p.read_bytes() for p in parts)
    assert not list(entry.rglob("*.part0*")) and (entry / ".airlock-staging").is_file()
    assert oct(big.stat().st_mode & 0o777) == "0o400"

    # the same bundle again: nothing written
    before = snapshot(depot)
    again = import_(stick, depot, keys)
    assert again.returncode == 0 and json.loads(again.stdout)["changed"] is False
    assert snapshot(depot) == before

    # list, status --verify (read-only), bundle verify on the depot copy: no extras
    ls = json.loads(airlock("depot", "list", "--depot", str(depot), "--json").stdout)
    assert [(b["bundle_id"], b["state"]) for b in ls["bundles"]] == [(bid, "ready")]
    st = airlock("depot", "status", "--depot", str(depot), "--verify", *trust_args(keys), "--json")
    assert st.returncode == 0, st.stdout + st.stderr
    assert json.loads(st.stdout)["bundles"][0]["verified"] is True
    assert snapshot(depot) == before
    ver = json.loads(airlock("bundle", "verify", str(entry), *trust_args(keys), "--json").stdout)
    assert ver["ok"] is True and ver["extra_files"] == []

    # an appliance stages from the depot: every block verified; then an interrupted stage resumes
    staged = stage_bundle(entry, tmp_path / "appliance-1", trust)
    assert staged.counters.bytes_copied == doc["bytes"]
    assert (tmp_path / "appliance-1/models/minilm/1.0.0/big.bin").read_bytes() == big.read_bytes()
    kill = airlock("bundle", "stage", str(entry), "--to", str(tmp_path / "appliance-2"), *trust_args(keys),
                   "--json", env={"AIRLOCK_FAULT": "stage-mid-copy"})
    assert kill.returncode == -9
    resumed = airlock("bundle", "stage", str(entry), "--to", str(tmp_path / "appliance-2"), *trust_args(keys),
                      "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["blocks_reused"] >= 1

    # a depot byte flipped (the depot is not trusted): the appliance's stage refuses that block,
    # status --verify reports it with the integrity exit code
    flip_byte(big, 5000, 1)
    with pytest.raises(IntegrityError, match="block 1"):
        stage_bundle(entry, tmp_path / "appliance-3", trust)
    bad = airlock("depot", "status", "--depot", str(depot), "--verify", *trust_args(keys), "--json")
    assert bad.returncode == 13 and json.loads(bad.stdout)["bundles"][0]["verified"] is False

    # remove, then the appliance is told what the depot holds
    rm = airlock("depot", "remove", bid, "--depot", str(depot), "--json")
    assert rm.returncode == 0 and not entry.exists()
    gone = airlock("depot", "status", "--depot", str(depot), "--bundle", bid, "--json")
    assert gone.returncode == 13 and "not in the depot" in json.loads(gone.stdout)["message"]


def test_interrupted_import_resumes_by_block(factory: BundleFactory, keys: Keys, tmp_path: Path) -> None:
    stick = factory.build()
    depot = tmp_path / "depot"
    kill = import_(stick, depot, keys, env={"AIRLOCK_FAULT": "stage-mid-copy"})
    assert kill.returncode == -9
    ls = json.loads(airlock("depot", "list", "--depot", str(depot), "--json").stdout)
    assert [b["state"] for b in ls["bundles"]] == ["importing"]  # not under its own name yet
    assert not [p for p in depot.iterdir() if not p.name.startswith(".")]
    r = import_(stick, depot, keys)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["blocks_reused"] >= 1 and doc["state"] == "ready"


def test_refusals_change_nothing(factory: BundleFactory, keys: Keys, tmp_path: Path) -> None:
    stick = factory.build()
    depot = tmp_path / "depot"
    untrusted = airlock("depot", "import", str(stick), "--depot", str(depot), "--trust", keys.fpr["other"],
                        "--keyring", str(keys.keyring("other")), "--json")
    assert untrusted.returncode == 10 and not depot.exists()
    assert json.loads(untrusted.stdout)["ok"] is False

    assert import_(stick, depot, keys).returncode == 0
    # another signed bundle claiming the same bundle id: refused, the depot copy untouched
    other = factory.build(model_files={"config.json": b"{}\n", "model.safetensors": b"x" * 5000})  # same id
    assert json.loads((other / "MANIFEST.json").read_text())["bundle_id"] == \
        json.loads((stick / "MANIFEST.json").read_text())["bundle_id"]
    assert (other / "MANIFEST.json").read_bytes() != (stick / "MANIFEST.json").read_bytes()
    before = snapshot(depot)
    clash = import_(other, depot, keys)
    assert clash.returncode == 30, clash.stdout + clash.stderr
    assert "different bundle" in json.loads(clash.stdout)["message"]
    assert snapshot(depot) == before

    not_a_depot = tmp_path / "plain"
    (not_a_depot / "x").mkdir(parents=True)
    r = import_(stick, not_a_depot, keys)
    assert r.returncode == 12 and "not an Airlock depot" in json.loads(r.stdout)["message"]
    r = airlock("depot", "list", "--depot", str(tmp_path / "nowhere"))
    assert r.returncode == 13 and "no such depot" in r.stderr and "Traceback" not in r.stderr


def test_model_install_bundle_from_the_depot(factory: BundleFactory, keys: Keys, tmp_path: Path) -> None:
    """`airlock model install-bundle ID --depot D`: the bundle id resolved in the depot, then the one
    install path (stage verified, install, stage removed); the depot is only read; an id not in the
    depot or not an id is refused in one line before the repository is touched."""
    depot, root = tmp_path / "depot", tmp_path / "root"
    weights = build_header([("w", "F32", [4096])]) + payload(4 * 4096, 3)
    stick = factory.build(model_files={"config.json": b'{"hidden": 8}\n', "model.safetensors": weights})
    assert import_(stick, depot, keys).returncode == 0
    bid = json.loads((stick / "MANIFEST.json").read_text())["bundle_id"]
    before = snapshot(depot)

    def install(ident: str) -> subprocess.CompletedProcess[str]:
        return airlock("model", "install-bundle", ident, "--depot", str(depot), "--root", str(root),
                       *trust_args(keys), "--json")

    for ident, code, rule in (("no-such-bundle", 13, "depot-missing"), ("../depot", 12, "bundle-id")):
        bad = install(ident)
        assert bad.returncode == code and json.loads(bad.stdout)["rule"] == rule, bad.stdout + bad.stderr
        assert "Traceback" not in bad.stderr and not root.exists()
    r = install(bid)
    assert r.returncode == 0, r.stdout + r.stderr
    assert [(p["model"], p["version"]) for p in json.loads(r.stdout)["plans"]] == [("minilm", "1.0.0")]
    v = airlock("model", "verify", "--root", str(root), *trust_args(keys), "--json")
    assert v.returncode == 0, v.stdout[-2000:]
    assert snapshot(depot) == before  # read only
    assert "--depot" in airlock("model", "install-bundle", "--help").stdout
