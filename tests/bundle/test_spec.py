"""The bundle spec: every payload kind lands where bundle/README.md says; bad specs are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from airlock.bundle import build_bundle, verify_bundle
from airlock.bundle.signing import Trust
from airlock.bundle.spec import load_spec, parse_size
from airlock.errors import ManifestError
from tests.bundle.conftest import Keys, make_tree

REPO = Path(__file__).resolve().parents[2]


def test_all_payload_kinds(keys: Keys, trust: Trust, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_tree(tmp_path / "src", {
        "model/config.json": b"{}", "model/model.safetensors": b"w", "model/tok/vocab.txt": b"a\nb\n",
        "wheels/airlock-0.1.0-py3-none-any.whl": b"PK", "wheels/numpy-2.0-cp311.whl": b"PK2",
        "wheels/notes.txt": b"not a wheel", "debs/gnupg_2.2.40_amd64.deb": b"!<arch>",
        "img/triton.tar": b"image", "site.yml": b"- hosts: all\n",
    })
    monkeypatch.setenv("AIRLOCK_TEST_MODEL", str(src / "model"))
    spec = tmp_path / "spec" / "b.yml"
    spec.parent.mkdir()
    spec.write_text(yaml.safe_dump({
        "bundle_id": "site-2026-11", "compatible": "appliance-test", "sequence": 3, "rollback": True,
        "block_size": "1KiB",
        "models": [{"name": "minilm", "version": "1.0.0", "path": "${AIRLOCK_TEST_MODEL}",
                    "description": "sentence embeddings", "dependencies": {"torch": "2.13.0"}}],
        "wheels": ["../src/wheels/*.whl"], "debs": "../src/debs", "images": ["../src/img/triton.tar"],
        "files": [{"src": "../src/site.yml", "dest": "ansible/site.yml"}],
    }))
    m = build_bundle(spec, tmp_path / "out", signer=keys.fpr["signer"], gnupghome=keys.home)
    assert sorted(m.files) == [
        "ansible/site.yml", "debs/gnupg_2.2.40_amd64.deb", "images/triton.tar",
        "models/minilm/1.0.0/config.json", "models/minilm/1.0.0/model.safetensors",
        "models/minilm/1.0.0/tok/vocab.txt",
        "wheelhouse/airlock-0.1.0-py3-none-any.whl", "wheelhouse/numpy-2.0-cp311.whl"]
    assert (m.bundle_id, m.sequence, m.rollback, m.kind) == ("site-2026-11", 3, True, "full")
    assert m.models[0].dependencies == {"torch": "2.13.0"}
    assert all(e.block_size == 1024 for e in m.files.values())
    assert verify_bundle(tmp_path / "out", trust).files_checked == 8


@pytest.mark.parametrize("doc, words", [
    ({"sequence": 1}, "compatible"),
    ({"compatible": "x", "sequence": -1}, "sequence"),
    ({"compatible": "x", "sequence": 1, "models": [{"name": "m", "version": "1"}]}, "exactly one of"),
    ({"compatible": "x", "sequence": 1, "models": [{"name": "m", "version": "1", "path": "nowhere"}]},
     "not a directory"),
    ({"compatible": "x", "sequence": 1, "models": [{"name": "..", "version": "1", "path": "."}]}, ".."),
    ({"compatible": "x", "sequence": 1, "models": [
        {"name": "m", "version": "2", "delta": {"old": ".", "new": "."}}]}, "from_version"),
    ({"compatible": "x", "sequence": 1, "wheels": ["*.nothing"]}, "matches nothing"),
    ({"compatible": "x", "sequence": 1, "files": [{"src": "b.yml", "dest": "../../etc/passwd"}]},
     "traversal"),
    ({"compatible": "x", "sequence": 1, "models": [{"name": "m", "version": "1", "path": "${NOPE_NOT_SET}"}]},
     "not set"),
])
def test_bad_specs_are_refused(tmp_path: Path, doc: dict[str, object], words: str) -> None:
    spec = tmp_path / "b.yml"
    spec.write_text(yaml.safe_dump(doc))
    with pytest.raises(Exception) as err:
        load_spec(spec)
    assert words in str(err.value)
    assert getattr(err.value, "exit_code", 0) in (11, 12)


def test_duplicate_destination_is_refused(keys: Keys, tmp_path: Path) -> None:
    make_tree(tmp_path, {"a.txt": b"a", "b/a.txt": b"b"})
    spec = tmp_path / "b.yml"
    spec.write_text(yaml.safe_dump({"compatible": "x", "sequence": 1,
                                    "files": [{"src": "a.txt", "dest": "f/a.txt"},
                                              {"src": "b/a.txt", "dest": "f/a.txt"}]}))
    with pytest.raises(ManifestError):
        build_bundle(spec, tmp_path / "out", signer=keys.fpr["signer"], gnupghome=keys.home)
    assert not (tmp_path / "out").exists()


def test_sizes() -> None:
    assert parse_size("64MiB") == 64 << 20 and parse_size("4G") == 4 << 30 and parse_size(512) == 512
    assert parse_size("3 kb") == 3072
    with pytest.raises(ValueError):
        parse_size("lots")


def test_example_specs_in_the_repo_parse(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    make_tree(tmp_path, {"old/config.json": b"{}", "new/config.json": b"{}"})
    monkeypatch.setenv("AIRLOCK_MINILM_OLD", str(tmp_path / "old"))
    monkeypatch.setenv("AIRLOCK_MINILM_NEW", str(tmp_path / "new"))
    full = load_spec(REPO / "bundle" / "demo-full.yml")
    delta = load_spec(REPO / "bundle" / "demo-delta.yml")
    assert full.models[0].path == tmp_path / "old" and not full.models[0].is_delta
    assert delta.models[0].is_delta and delta.models[0].from_version == "1.0.0"
    assert delta.sequence > full.sequence
