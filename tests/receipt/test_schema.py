"""The receipt is parsed with the manifest's strictness after its signature verified: a correctly
signed receipt that breaks the schema is refused (exit 11); a receipt is canonical and holds no paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airlock.errors import ManifestError, ReplayError, SignatureError
from airlock.receipt import HostState, KeptVersion, ModelState, Receipt, canonical_bytes, parse_receipt
from airlock.receipt.model import MAX_RECEIPT_BYTES
from airlock.receipt.verify import verify_receipt
from tests.bundle.conftest import Keys

H = "ab" * 32


def _receipt(**kw: object) -> Receipt:
    host = HostState(3, (7, H), {"m": ModelState("1.1.0", {"1.0.0": KeptVersion("pruned", "rel-1", H),
                                                           "1.1.0": KeptVersion("active", "rel-2", H)},
                                                 [("1.0.0", "1.1.0")])})
    base: dict[str, object] = {"site": "site-a", "sequence": 5, "created": "2026-12-03T10:00:00Z",
                               "airlock_version": "0.1.0", "compatible": "appliance-test",
                               "hosts": {"h1": host}}
    base.update(kw)
    return Receipt(**base)  # type: ignore[arg-type]


def test_canonical_roundtrip() -> None:
    data = canonical_bytes(_receipt())
    assert data.endswith(b"\n") and b" " not in data
    assert canonical_bytes(parse_receipt(data)) == data
    assert json.loads(data)["hosts"]["h1"]["models"]["m"]["deltas"] == [["1.0.0", "1.1.0"]]


def _mutate(edit: object) -> bytes:
    doc = json.loads(canonical_bytes(_receipt()))
    edit(doc)  # type: ignore[operator]
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() + b"\n"


BAD = {
    "unknown-field": lambda d: d.update(extra=1),
    "unknown-host-field": lambda d: d["hosts"]["h1"].update(root="/srv/airlock"),
    "missing-site": lambda d: d.pop("site"),
    "wrong-type": lambda d: d.update(sequence="5"),
    "bool-as-int": lambda d: d.update(sequence=True),
    "negative": lambda d: d.update(sequence=-1),
    "site-path": lambda d: d.update(site="../etc"),
    "host-newline": lambda d: d["hosts"].update({"h2\n": d["hosts"]["h1"]}),
    "version": lambda d: d["hosts"]["h1"]["models"]["m"]["versions"].update({"1.0": {
        "state": "active", "bundle_id": None, "manifest_sha256": None}}),
    "state": lambda d: d["hosts"]["h1"]["models"]["m"]["versions"]["1.0.0"].update(state="gone"),
    "digest": lambda d: d["hosts"]["h1"]["models"]["m"]["versions"]["1.0.0"].update(manifest_sha256="AB"),
    "active-not-active": lambda d: d["hosts"]["h1"]["models"]["m"].update(active="1.0.0"),
    "format": lambda d: d.update(format_version=2),
    "kind": lambda d: d.update(kind="airlock-manifest"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_schema_refusals(case: str) -> None:
    with pytest.raises(ManifestError) as e:
        parse_receipt(_mutate(BAD[case]))
    assert e.value.exit_code == 11 and e.value.rule.startswith("receipt-")


@pytest.mark.parametrize("data", [
    b'{"site":"a","site":"b"}', b"[" * 100 + b"]" * 100, b'{"sequence":1e999}', b"\xff\xfe",
    b'{"sequence":123456789012345678901234}', b"not json",
])
def test_hostile_json(data: bytes) -> None:
    with pytest.raises(ManifestError) as e:
        parse_receipt(data)
    assert e.value.exit_code == 11


def test_size_bound() -> None:
    with pytest.raises(ManifestError) as e:
        parse_receipt(b" " * (MAX_RECEIPT_BYTES + 1))
    assert e.value.rule == "receipt-size"


def _signed(tmp: Path, keys: Keys, data: bytes, who: str = "other", name: str = "r.json") -> Path:
    p = tmp / name
    p.write_bytes(data)
    (tmp / f"{name}.asc").write_bytes(keys.sign(data, who))
    return p


def test_signed_but_malformed_is_refused_after_the_signature(keys: Keys, tmp_path: Path) -> None:
    ring = keys.keyring("other")
    p = _signed(tmp_path, keys, _mutate(BAD["unknown-field"]))
    with pytest.raises(ManifestError):
        verify_receipt(p, [keys.fpr["other"]], keyring=ring, state_dir=tmp_path / "st")
    assert not (tmp_path / "st").exists()  # nothing recorded
    # the same bytes signed by an unpinned key: the signature is what is refused first (10)
    q = _signed(tmp_path, keys, _mutate(BAD["unknown-field"]), who="signer", name="q.json")
    with pytest.raises(SignatureError):
        verify_receipt(q, [keys.fpr["other"]], keyring=keys.keyring("other", "signer"),
                       state_dir=tmp_path / "st")
    with pytest.raises(SignatureError) as e:  # no signature file at all
        (tmp_path / "q.json.asc").unlink()
        verify_receipt(q, [keys.fpr["other"]], keyring=ring, state_dir=tmp_path / "st")
    assert e.value.rule == "no-signature"


def test_anti_replay_state(keys: Keys, tmp_path: Path) -> None:
    ring, st = keys.keyring("other"), tmp_path / "st"
    for seq in (5, 6):
        d = tmp_path / str(seq)
        d.mkdir()
        p = _signed(d, keys, canonical_bytes(_receipt(sequence=seq)))
        assert verify_receipt(p, [keys.fpr["other"]], keyring=ring, state_dir=st).receipt.sequence == seq
    for seq in (6, 5):  # equal and lower refused, the state keeps 6
        d = tmp_path / f"again-{seq}"
        d.mkdir()
        p = _signed(d, keys, canonical_bytes(_receipt(sequence=seq)))
        with pytest.raises(ReplayError) as e:
            verify_receipt(p, [keys.fpr["other"]], keyring=ring, state_dir=st)
        assert e.value.exit_code == 16
    assert json.loads((st / "site-a.json").read_text())["sequence"] == 6
    (st / "site-a.json").write_text("garbage")  # a damaged state refuses, never resets
    with pytest.raises(ReplayError):
        verify_receipt(_signed(tmp_path, keys, canonical_bytes(_receipt(sequence=9))), [keys.fpr["other"]],
                       keyring=ring, state_dir=st)


def test_create_refuses_a_missing_root_and_writes_nothing(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from airlock.cli import app

    out = tmp_path / "r.json"
    r = CliRunner().invoke(app, ["receipt", "create", "-o", str(out), "--site", "s", "--signer", "A" * 40,
                                 "--root", f"h1={tmp_path / 'typo'}", "--compatible", "p"])
    assert r.exit_code == 30 and "no such appliance root" in r.output
    assert not out.exists() and not (tmp_path / "r.json.asc").exists()


@pytest.mark.parametrize("doc", [
    {"kind": "airlock-bundle-plan", "format_version": 1, "bundles": [{"name": "a"}]},
    {"kind": "airlock-bundle-plan", "format_version": 1, "bundles": [{
        "name": "a", "sites": ["a"], "compatible": "p", "sequence": 1,
        "entries": [{"kind": "delta", "model": "m", "version": "1.1.0", "source": "/x"}]}]},
    {"kind": "something-else", "format_version": 1, "bundles": []},
])
def test_build_refuses_a_malformed_plan(doc: dict[str, object], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from airlock.cli import app

    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(doc))
    r = CliRunner().invoke(app, ["bundle", "build", "--plan", str(plan), "-o", str(tmp_path / "out"),
                                 "--signer", "A" * 40])
    assert r.exit_code == 11 and "plan" in r.output and not (tmp_path / "out").exists()
