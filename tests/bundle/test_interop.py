"""Interop both ways with plain gpg and sha256sum, and the CLI end to end."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import yaml

from airlock.bundle import Trust, canonical_bytes, parse_manifest, verify_bundle
from airlock.bundle.manifest import MANIFEST_NAME, SIGNATURE_NAME
from tests.bundle.conftest import BundleFactory, Keys, airlock_cmd
from tests.support import require_tool


def checksum_list(bundle: Path) -> str:
    """What an auditor derives from the manifest: one sha256sum line per on-disk file."""
    m = json.loads((bundle / MANIFEST_NAME).read_bytes())
    lines = []
    for rel, e in sorted(m["files"].items()):
        if "parts" in e:
            lines += [f"{p['sha256']}  {rel}.part{i:03d}" for i, p in enumerate(e["parts"])]
        else:
            lines.append(f"{e['sha256']}  {rel}")
    return "\n".join(lines) + "\n"


def test_our_bundle_audits_with_plain_gpg_and_sha256sum(factory: BundleFactory, keys: Keys,
                                                         tmp_path: Path) -> None:
    require_tool("sha256sum", "apt-get install coreutils")
    bundle = factory.build()
    home = tmp_path / "auditor"
    home.mkdir(mode=0o700)
    keys.gpg("--import", str(keys.public["signer"]), home=home)
    res = subprocess.run(["gpg", "--homedir", str(home), "--status-fd", "1", "--verify",
                          str(bundle / SIGNATURE_NAME), str(bundle / MANIFEST_NAME)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert f"VALIDSIG {keys.fpr['signer']}" in res.stdout
    (tmp_path / "SHA256SUMS").write_text(checksum_list(bundle))
    ok = subprocess.run(["sha256sum", "--strict", "-c", str(tmp_path / "SHA256SUMS")], cwd=bundle,
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.count(": OK") == 6  # config, 2 parts of model.safetensors, 3 of big.bin
    # and the tools do notice a flipped byte
    part = bundle / "models/minilm/1.0.0/big.bin.part001"
    data = bytearray(part.read_bytes())
    data[7] ^= 1
    part.write_bytes(bytes(data))
    bad = subprocess.run(["sha256sum", "-c", str(tmp_path / "SHA256SUMS")], cwd=bundle, capture_output=True)
    assert bad.returncode != 0


def test_manifest_signed_with_plain_gpg_verifies(factory: BundleFactory, keys: Keys) -> None:
    bundle = factory.build()
    # re-sign the manifest with the gpg CLI (another signer, to be sure the new signature is the one used)
    data = (bundle / MANIFEST_NAME).read_bytes()
    (bundle / SIGNATURE_NAME).write_bytes(keys.sign(data, "other"))
    report = verify_bundle(bundle, keys.trust(["other"], "other"))
    assert report.signer.primary_fingerprint == keys.fpr["other"]


def test_canonical_bytes_are_what_is_signed(factory: BundleFactory) -> None:
    bundle = factory.build()
    data = (bundle / MANIFEST_NAME).read_bytes()
    assert canonical_bytes(parse_manifest(data)) == data


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*airlock_cmd(), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def test_cli_build_verify_stage_pack_unpack_inspect(factory: BundleFactory, keys: Keys,
                                                    tmp_path: Path) -> None:
    spec = factory.spec()
    passfile = tmp_path / "pass"
    passfile.write_text("\n")
    out = tmp_path / "b"
    res = _cli("bundle", "build", str(spec), "-o", str(out), "--signer", keys.fpr["signer"],
               "--gnupghome", str(keys.home), "--split-size", "8KiB", "--json",
               env={"AIRLOCK_GPG_PASSPHRASE_FILE": str(passfile)})
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["files"] == 3
    ring = keys.keyring("signer")
    trust = ["--trust", keys.fpr["signer"], "--keyring", str(ring)]
    res = _cli("bundle", "verify", str(out), *trust, "--json")
    assert res.returncode == 0, res.stderr
    rep = json.loads(res.stdout)
    assert rep["ok"] and rep["files_checked"] == 3 and rep["signer"] == keys.fpr["signer"]
    files = json.loads((out / MANIFEST_NAME).read_text())["files"]
    assert len(files["models/minilm/1.0.0/big.bin"]["parts"]) == 4  # --split-size 8KiB

    (out / "stray.txt").write_text("not in the manifest")
    res = _cli("bundle", "verify", str(out), *trust)
    assert res.returncode == 0 and "stray.txt" in res.stdout

    res = _cli("bundle", "stage", str(out), "--to", str(tmp_path / "st"), *trust, "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["files_copied"] == 3
    assert not (tmp_path / "st" / "stray.txt").exists()

    res = _cli("bundle", "pack", str(out), "-o", str(tmp_path / "b.tar"), *trust)
    assert res.returncode == 0, res.stderr
    res = _cli("bundle", "verify", str(tmp_path / "b.tar"), *trust, "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["files_checked"] == 3, res.stderr
    res = _cli("bundle", "unpack", str(tmp_path / "b.tar"), "-o", str(tmp_path / "u"), *trust, "--json")
    assert res.returncode == 0, res.stderr
    assert not (tmp_path / "u" / "stray.txt").exists()

    res = _cli("bundle", "inspect", str(out), *trust)
    assert res.returncode == 0 and "model minilm 1.0.0 (full)" in res.stdout

    # exit codes per error class, one line naming file and rule
    res = _cli("bundle", "verify", str(out), "--trust", keys.fpr["other"], "--keyring", str(ring))
    assert res.returncode == 10 and "MANIFEST.json.asc" in res.stderr and "not a pinned signer" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = _cli("bundle", "verify", str(out), "--trust", keys.fpr["other"], "--keyring", str(ring), "--json")
    assert res.returncode == 10 and json.loads(res.stdout)["rule"] == "untrusted-signer"
    res = _cli("bundle", "verify", str(out), *trust, "--compatible", "other-profile", "--json")
    assert res.returncode == 14 and json.loads(res.stdout)["rule"] == "compatible"
    res = _cli("bundle", "verify", str(out), *trust, "--installed-sequence", "6")
    assert res.returncode == 15
    victim = out / "models/minilm/1.0.0/config.json"
    victim.chmod(0o644)
    victim.write_bytes(victim.read_bytes().replace(b"8", b"9"))
    res = _cli("bundle", "verify", str(out), *trust)
    assert res.returncode == 13 and "models/minilm/1.0.0/config.json" in res.stderr


def test_cli_build_refuses_bad_spec(tmp_path: Path, keys: Keys) -> None:
    spec = tmp_path / "s.yml"
    spec.write_text(yaml.safe_dump({"compatible": "x", "sequence": 1, "surprise": True}))
    res = _cli("bundle", "build", str(spec), "-o", str(tmp_path / "o"), "--signer", keys.fpr["signer"],
               "--gnupghome", str(keys.home))
    assert res.returncode == 11 and "surprise" in res.stderr
    assert not (tmp_path / "o").exists()


def test_passphrase_protected_signer(factory: BundleFactory, keys: Keys, tmp_path: Path) -> None:
    """The passphrase travels in a file (never argv); a wrong one signs nothing and writes nothing."""
    home = tmp_path / "g"
    home.mkdir(mode=0o700)
    keys.gpg("--pinentry-mode", "loopback", "--passphrase", "correct horse", "--quick-gen-key",
             "Prot <prot@airlock.test>", "ed25519", "sign", "never", home=home)
    out = keys.gpg("--with-colons", "--list-keys", home=home).decode()
    fpr = next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))
    spec = factory.spec()
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text("correct horse\n")
    bad.write_text("wrong\n")
    base = ("bundle", "build", str(spec), "--signer", fpr, "--gnupghome", str(home))
    res = _cli(*base, "-o", str(tmp_path / "b1"), "--passphrase-file", str(bad))
    assert res.returncode == 10 and not (tmp_path / "b1").exists()
    res = _cli(*base, "-o", str(tmp_path / "b2"), env={"AIRLOCK_GPG_PASSPHRASE_FILE": str(good)})
    assert res.returncode == 0, res.stderr
    ring = tmp_path / "ring.asc"
    ring.write_bytes(keys.gpg("--armor", "--export", fpr, home=home))
    assert verify_bundle(tmp_path / "b2", Trust([fpr], keyring=ring)).signer.primary_fingerprint == fpr
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False)
