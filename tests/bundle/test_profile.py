"""Issue 14, class 7: the appliance profile is checked by default. With a profile recorded
(`airlock bundle profile --set`, here through $AIRLOCK_PROFILE_FILE), verify / stage / install-bundle /
preflight refuse a bundle built for another appliance without any --compatible (exit 14); an explicit
--compatible must agree with the record; only --ignore-profile skips it, and install-bundle writes the
override to the audit log."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from airlock.bundle import stage_bundle, verify_bundle
from airlock.bundle.profile import ANY_PROFILE, recorded_profile
from airlock.bundle.signing import Trust
from airlock.errors import CompatibilityError
from tests.bundle.conftest import BundleFactory, Keys, airlock_cmd


@pytest.fixture
def profile_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "etc" / "appliance.yaml"
    monkeypatch.setenv("AIRLOCK_PROFILE_FILE", str(path))
    return path


def _cli(profile_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*airlock_cmd(), *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "AIRLOCK_PROFILE_FILE": str(profile_file)})


def test_engine_checks_the_recorded_profile_by_default(factory: BundleFactory, trust: Trust,
                                                       profile_file: Path, tmp_path: Path) -> None:
    bundle = factory.build(compatible="appliance-test")
    verify_bundle(bundle, trust)  # nothing recorded: nothing to check against
    profile_file.parent.mkdir()
    profile_file.write_text("compatible: appliance-other\n")
    assert recorded_profile() is not None
    with pytest.raises(CompatibilityError) as err:
        verify_bundle(bundle, trust)
    assert err.value.exit_code == 14 and "appliance-other" in str(err.value)
    with pytest.raises(CompatibilityError):
        stage_bundle(bundle, tmp_path / "st", trust)
    assert not (tmp_path / "st" / "models").exists()
    with pytest.raises(CompatibilityError) as err:  # an explicit --compatible must agree with the record
        verify_bundle(bundle, trust, compatible="appliance-test")
    assert err.value.rule == "profile-mismatch"
    verify_bundle(bundle, trust, compatible=ANY_PROFILE)  # the explicit override
    profile_file.write_text("compatible: appliance-test\n")
    verify_bundle(bundle, trust)
    profile_file.write_text("compatible: [not, a, name]\n")
    with pytest.raises(CompatibilityError) as err:
        verify_bundle(bundle, trust)
    assert err.value.rule == "profile-file"


def test_cli_default_check_override_and_audit(factory: BundleFactory, keys: Keys, profile_file: Path,
                                              tmp_path: Path) -> None:
    bundle = factory.build(compatible="appliance-test")
    trust = ["--trust", keys.fpr["signer"], "--keyring", str(keys.keyring("signer"))]
    r = _cli(profile_file, "bundle", "profile", "--set", "appliance-x86-gpu")
    assert r.returncode == 0 and "appliance-x86-gpu" in r.stdout, r.stderr
    r = _cli(profile_file, "bundle", "profile", "--json")
    assert json.loads(r.stdout)["compatible"] == "appliance-x86-gpu"
    # the README's field commands, with no --compatible: refused
    r = _cli(profile_file, "bundle", "verify", str(bundle), *trust)
    assert r.returncode == 14 and "appliance-x86-gpu" in r.stderr, r.stderr
    root = tmp_path / "srv"
    r = _cli(profile_file, "model", "install-bundle", str(bundle), *trust, "--root", str(root))
    assert r.returncode == 14, r.stderr
    assert not (root / "model_repo" / "minilm").exists()
    r = _cli(profile_file, "preflight", "--bundle", str(bundle), *trust, "--root", str(root), "--min-ram-gib",
             "0")
    assert r.returncode == 14 and "appliance-x86-gpu" in r.stderr, r.stderr
    # the explicit, audited override
    r = _cli(profile_file, "bundle", "verify", str(bundle), *trust, "--ignore-profile")
    assert r.returncode == 0 and "NOT checked" in r.stderr, r.stderr
    r = _cli(profile_file, "bundle", "verify", str(bundle), *trust, "--ignore-profile", "--compatible", "x")
    assert r.returncode == 2
    r = _cli(profile_file, "bundle", "stage", str(bundle), "--to", str(tmp_path / "st"), *trust,
             "--ignore-profile")
    assert r.returncode == 0, r.stderr
    r = _cli(profile_file, "model", "install-bundle", str(bundle), *trust, "--root", str(root),
             "--ignore-profile")
    # past the profile (the factory's weights are random bytes, which the install itself refuses)
    assert r.returncode != 14 and "profile" not in r.stderr, r.stderr
    log = root / "model_repo" / "update_history.log"
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert any(rec.get("action") == "profile-override" for rec in records), records
