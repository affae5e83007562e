"""Hostile but *signed* manifests (issue 14, classes 3-5): hand-written JSON signed with the plain gpg
CLI. Every case is refused by verify and by stage with exit 11 or 12 and a one-line message, nothing is
staged, and `install-bundle` writes nothing outside its root."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from airlock.bundle import stage_bundle, verify_bundle
from airlock.bundle.manifest import MANIFEST_NAME, parse_manifest
from airlock.bundle.signing import Trust
from airlock.errors import AirlockError, ManifestError, UnsafePathError
from tests.bundle.conftest import BundleFactory, Keys, airlock_cmd, snapshot
from tests.bundle.factory import CFG, canonical, resign

Bytes = Callable[[bytes], bytes]


def _doc(fn: Callable[[dict[str, Any]], None]) -> Bytes:
    def mutate(data: bytes) -> bytes:
        doc = json.loads(data)
        fn(doc)
        return canonical(doc)
    return mutate


def _set(key: str, value: Any) -> Bytes:
    return _doc(lambda d: d.__setitem__(key, value))


def _model(key: str, value: Any) -> Bytes:
    return _doc(lambda d: d["models"][0].__setitem__(key, value))


def _rename(new: str, *, keep_old: bool = False) -> Bytes:
    """Rename (or duplicate) the config payload; the model entry goes (it names the old path)."""
    def fn(d: dict[str, Any]) -> None:
        entry = d["files"][CFG] if keep_old else d["files"].pop(CFG)
        d["files"][new] = entry
        d["models"] = []
    return _doc(fn)


def _raw(old: bytes, new: bytes) -> Bytes:
    def mutate(data: bytes) -> bytes:
        assert old in data
        return data.replace(old, new, 1)
    return mutate


DEEP = 100_000
NFC = unicodedata.normalize("NFC", "models/caf\u00e9.json")
NFD = unicodedata.normalize("NFD", NFC)

# case -> (mutation of the canonical manifest bytes, error class, rule)
CASES: dict[str, tuple[Bytes, type[AirlockError], str]] = {
    # 3: signed strings used as path components
    "bundle-id-traversal": (_set("bundle_id", "../../x"), ManifestError, "manifest-name"),
    "bundle-id-absolute": (_set("bundle_id", "/etc/airlock-pwned"), ManifestError, "manifest-name"),
    "bundle-id-trailing-newline": (_set("bundle_id", "b-5\n"), ManifestError, "manifest-name"),
    "bundle-id-markup": (_set("bundle_id", "[/]"), ManifestError, "manifest-name"),
    "model-name-traversal": (_model("name", "../../etc"), ManifestError, "manifest-name"),
    "model-name-reserved": (_model("name", "current"), ManifestError, "manifest-name"),
    "model-version-traversal": (_model("version", "../1.0.0"), ManifestError, "manifest-name"),
    "model-version-newline": (_model("version", "1.0.0\n"), ManifestError, "manifest-name"),
    "compatible-escape": (_set("compatible", "appliance-test\x1b[2J"), ManifestError, "manifest-name"),
    # 4: bounds on everything the schema carries
    "deep-nesting": (_raw(b'"description":""', b'"description":' + b"[" * DEEP + b"]" * DEEP),
                     ManifestError, "manifest-schema"),
    "deep-nesting-unbalanced": (_raw(b'"description":""', b'"description":' + b"{\"a\":" * DEEP),
                                ManifestError, "manifest-schema"),
    "huge-integer": (_raw(b'"sequence":5', b'"sequence":' + b"9" * 5000), ManifestError, "manifest-schema"),
    "integer-past-64-bits": (_raw(b'"sequence":5', b'"sequence":18446744073709551616'), ManifestError,
                             "manifest-schema"),
    "sequence-2-63": (_raw(b'"sequence":5', b'"sequence":9223372036854775808'), ManifestError,
                      "manifest-schema"),
    "float-overflow": (_raw(b'"tolerance":0.01', b'"tolerance":1e999'), ManifestError, "manifest-schema"),
    "nan": (_raw(b'"tolerance":0.01', b'"tolerance":NaN'), ManifestError, "manifest-schema"),
    "infinity": (_raw(b'"tolerance":0.01', b'"tolerance":-Infinity'), ManifestError, "manifest-schema"),
    "lone-surrogate": (_raw(b'"description":""', b'"description":"\\ud800"'), ManifestError,
                       "manifest-schema"),
    "lone-surrogate-key": (_raw(b'"golden":{', b'"golden":{"\\udfff":1,'), ManifestError, "manifest-schema"),
    "nul-in-bundle-id": (_raw(b'"bundle_id":"', b'"bundle_id":"\\u0000'), ManifestError, "manifest-schema"),
    "nul-in-description": (_raw(b'"description":""', b'"description":"a\\u0000b"'), ManifestError,
                           "manifest-schema"),
    "huge-string": (_model("description", "x" * 70_000), ManifestError, "manifest-schema"),
    "component-over-255": (_rename("models/" + "a" * 300 + ".json"), UnsafePathError, "path-length"),
    "component-utf8-over-255": (_rename("models/" + "\u00e9" * 120 + ".json"), UnsafePathError,
                                "path-length"),
    "path-over-path-max": (_rename("/".join(["d" * 200] * 25) + "/x"), UnsafePathError, "path-length"),
    "negative-size": (_doc(lambda d: d["files"][CFG].__setitem__("size", -1)), ManifestError,
                      "manifest-schema"),
    "created-not-a-time": (_set("created", "yesterday"), ManifestError, "manifest-schema"),
    # 5: names that collide on the target or mislead a reader
    "nfc-nfd-twins": (_doc(lambda d: (d["files"].__setitem__(NFC, d["files"][CFG]),
                                      d["files"].__setitem__(NFD, d["files"][CFG]))),
                      UnsafePathError, "path-collision"),
    "case-twins": (_doc(lambda d: (d["files"].__setitem__("models/Model.bin", d["files"][CFG]),
                                   d["files"].__setitem__("models/model.bin", d["files"][CFG]))),
                   UnsafePathError, "path-collision"),
    "case-twin-directories": (_doc(lambda d: (d["files"].__setitem__("Models/a.bin", d["files"][CFG]),
                                              d["files"].__setitem__("models/b.bin", d["files"][CFG]))),
                              UnsafePathError, "path-collision"),
    "lowercase-manifest-beside-manifest": (_rename("manifest.json", keep_old=True), UnsafePathError,
                                           "path-collision"),
    "newline-in-name": (_rename("models/a\nb.json"), UnsafePathError, "path-chars"),
    "escape-in-name": (_rename("models/\x1b[31mred.json"), UnsafePathError, "path-chars"),
    "c1-in-name": (_rename("models/\x9bred.json"), UnsafePathError, "path-chars"),
    "bidi-override-in-name": (_rename("models/evil\u202enosj.exe"), UnsafePathError, "path-chars"),
    "zero-width-in-name": (_rename("models/con\u200bfig.json"), UnsafePathError, "path-chars"),
    "target-file-twins": (_doc(lambda d: d["models"][0]["target_files"].__setitem__(
        "CONFIG.json", d["models"][0]["target_files"]["config.json"])), UnsafePathError, "path-collision"),
    "partial-suffix-name": (_rename(CFG + ".airlock-partial", keep_old=True), UnsafePathError,
                            "path-reserved"),
}


@pytest.fixture(scope="module")
def base(keys: Keys, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return BundleFactory(keys, tmp_path_factory.mktemp("hostile")).build(sequence=5)


def _hostile(keys: Keys, base: Path, dest: Path, case: str) -> Path:
    shutil.copytree(base, dest)
    mutate = CASES[case][0]
    resign(keys, dest, mutate((base / MANIFEST_NAME).read_bytes()))
    return dest


@pytest.mark.parametrize("case", list(CASES))
def test_signed_hostile_manifest_refused(case: str, keys: Keys, trust: Trust, base: Path,
                                         tmp_path: Path) -> None:
    bundle = _hostile(keys, base, tmp_path / "bundle", case)
    _mutate, cls, rule = CASES[case]
    with pytest.raises(cls) as err:
        parse_manifest((bundle / MANIFEST_NAME).read_bytes())
    assert err.value.rule == rule, err.value
    assert err.value.exit_code in (11, 12)
    line = str(err.value)
    assert line and "\n" not in line and "\x1b" not in line and len(line) < 400, line
    with pytest.raises(cls):
        verify_bundle(bundle, trust)
    before = snapshot(tmp_path)
    with pytest.raises(cls):
        stage_bundle(bundle, tmp_path / "staging", trust)
    after = snapshot(tmp_path)
    new = set(after) - set(before)
    assert new <= {"staging", "staging/.airlock-staging"}, f"a refused manifest left files behind: {new}"


@pytest.mark.parametrize("case", ["bundle-id-traversal", "bundle-id-absolute", "sequence-2-63",
                                  "deep-nesting", "lone-surrogate", "path-over-path-max"])
def test_install_bundle_refuses_and_writes_nothing(case: str, keys: Keys, base: Path, tmp_path: Path) -> None:
    """The CLI end to end: exit 11/12, one line on stderr, no traceback, nothing outside --root and
    nothing installed inside it."""
    bundle = _hostile(keys, base, tmp_path / "stick" / "bundle", case)
    root = tmp_path / "appliance" / "srv"
    root.mkdir(parents=True)
    before = snapshot(tmp_path)
    r = subprocess.run([*airlock_cmd(), "model", "install-bundle", str(bundle), "--trust", keys.fpr["signer"],
                        "--keyring", str(keys.keyring("signer")), "--root", str(root)],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "AIRLOCK_PROFILE_FILE": str(tmp_path / "no-profile.yaml")})
    assert r.returncode == CASES[case][1].exit_code, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    after = snapshot(tmp_path)
    new = {k for k in set(after) - set(before) if not k.startswith("keyring")}
    assert all(k.startswith("appliance/srv/") for k in new), new
    assert not [k for k in new if "bundles" in k or k.endswith(".json")], new
    assert not (tmp_path / "x").exists() and not Path("/etc/airlock-pwned").exists()


def test_accepted_limits_still_pass(keys: Keys, trust: Trust, base: Path, tmp_path: Path) -> None:
    """The bounds are not tighter than they say: 32 levels of golden data, 2**63-1, a 231-byte name."""
    deep: Any = 1
    for _ in range(28):
        deep = [deep]

    def fn(d: dict[str, Any]) -> None:
        d["sequence"] = 2**63 - 1
        d["models"][0]["description"] = '\\"[{' * 200  # brackets and escaped quotes inside a string
        d["models"][0]["golden"]["expected"] = deep
        d["files"]["models/" + "n" * 231] = d["files"][CFG]
    bundle = tmp_path / "b"
    shutil.copytree(base, bundle)
    resign(keys, bundle, _doc(fn)((base / MANIFEST_NAME).read_bytes()))
    shutil.copyfile(bundle / CFG, bundle / "models" / ("n" * 231))
    report = verify_bundle(bundle, trust)
    assert report.manifest.sequence == 2**63 - 1


def test_stage_refuses_a_path_past_path_max_before_copying(keys: Keys, trust: Trust, base: Path,
                                                           tmp_path: Path) -> None:
    """A name within the manifest's limits (1005 bytes) under a deep staging directory would pass
    PATH_MAX: refused (exit 12) before any payload is copied; verify of the bundle itself is fine."""
    long_name = "/".join(["p" * 200] * 5)
    bundle = tmp_path / "b"
    shutil.copytree(base, bundle)
    resign(keys, bundle, _rename(long_name)((base / MANIFEST_NAME).read_bytes()))
    (bundle / long_name).parent.mkdir(parents=True)
    shutil.copyfile(base / CFG, bundle / long_name)
    verify_bundle(bundle, trust)
    deep = tmp_path.joinpath(*["s" * 250] * 13)  # ~3300 bytes
    deep.mkdir(parents=True)
    with pytest.raises(UnsafePathError) as err:
        stage_bundle(bundle, deep / "staging", trust)
    assert err.value.rule == "path-length"
    assert sorted(p.name for p in (deep / "staging").iterdir()) == [".airlock-staging"]


@pytest.mark.parametrize("name", ["/01%&&'\x08\t\n\x0b\x0c\r\x0e: evil", "a/\n/../b", "x/../\x1b[2Jy"])
def test_refused_path_names_are_one_escaped_line(name: str) -> None:
    """Found by the manifest_struct fuzz target: an absolute or traversing name with control
    characters reached the message as they were (a multi-line, terminal-controlling error)."""
    from airlock.fsutil import safe_relpath

    with pytest.raises(UnsafePathError) as exc:
        safe_relpath(name)
    assert "\n" not in str(exc.value) and "\x1b" not in str(exc.value) and str(exc.value).isprintable()
