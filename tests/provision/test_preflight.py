"""Preflight: real checks on this machine; the GPU path through a fake ``nvidia-smi`` on PATH.

The fake nvidia-smi is an edge mock of hardware that cannot exist here (no GPU on this machine): it
prints the CSV the real tool prints for ``--query-gpu=... --format=csv,noheader,nounits``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from airlock.bundle.manifest import FileEntry, Manifest, ModelEntry, canonical_bytes
from airlock.cli.preflight import register
from airlock.provision import preflight as pf
from airlock.provision.requirements import requirements_from_bundle
from tests.gpg import Keys


@pytest.fixture(scope="session")
def keys(gpg_keys: Keys) -> Keys:
    """The bundle signing keys (tests/conftest.py): this package's own ``keys`` are apt signing keys.
    A bundle manifest is read only when signed."""
    return gpg_keys


PREFLIGHT_PY = Path(pf.__file__)
H100 = "0, NVIDIA H100 80GB HBM3, 81559, 550.54.15\n1, NVIDIA H100 80GB HBM3, 81559, 550.54.15\n"


def real_gpu_here() -> bool:
    return pf.query_gpus() is not None or bool(pf.nvidia_hardware())


@pytest.fixture
def fake_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    smi = bindir / "nvidia-smi"
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    return smi


def write_smi(smi: Path, body: str, rc: int = 0) -> None:
    smi.write_text(f"#!/bin/sh\ncat <<'CSV'\n{body}CSV\nexit {rc}\n")
    smi.chmod(0o755)


def by_name(report: pf.PreflightReport) -> dict[str, pf.Check]:
    return {c.name: c for c in report.checks}


def test_real_checks_on_this_host(tmp_path: Path) -> None:
    req = pf.Requirements(
        min_ram_bytes=1 << 20, min_cpus=1, tiers={"hot": (str(tmp_path / "not/yet"), 1 << 20)}
    )
    checks = by_name(pf.run_preflight(req))
    assert set(checks) >= {"os", "kernel", "cpu", "ram", "disk:hot", "gpu", "time", "mac"}
    assert checks["kernel"].status == "pass" and checks["kernel"].details["release"] == os.uname().release
    assert checks["cpu"].details["count"] == os.cpu_count()
    assert checks["ram"].status == "pass" and checks["ram"].details["total_bytes"] > 1 << 20
    disk = checks["disk:hot"]
    assert disk.status == "pass" and disk.details["measured_at"] == str(tmp_path)  # nearest existing parent
    # others write to this disk meanwhile: agree with statvfs via shutil within 256 MiB
    assert abs(disk.details["free_bytes"] - shutil.disk_usage(tmp_path).free) < 256 << 20
    assert all(c.status in ("pass", "warn", "fail") and c.message for c in checks.values())
    json.dumps(pf.run_preflight(req).as_dict())  # JSON-able


def test_no_gpu_warns_or_fails_when_required() -> None:
    if real_gpu_here():
        pytest.fail("this test describes a host without an NVIDIA GPU; run test_real_gpu instead")
    gpu = by_name(pf.run_preflight(pf.Requirements(min_ram_bytes=0)))["gpu"]
    assert gpu.status == "warn" and "no NVIDIA GPU found" in gpu.message
    rep = pf.run_preflight(pf.Requirements(min_ram_bytes=0, gpu_required=True))
    assert not rep.ok and [c.name for c in rep.failed] == ["gpu"]
    assert "required by the bundle" in by_name(rep)["gpu"].message
    allowed = pf.run_preflight(pf.Requirements(min_ram_bytes=0, gpu_required=True), allow_fail={"gpu"})
    assert allowed.ok and by_name(allowed)["gpu"].allowed


def test_gpu_model_memory_and_driver_parsed(fake_smi: Path) -> None:
    write_smi(fake_smi, H100)
    ok = by_name(
        pf.run_preflight(
            pf.Requirements(
                min_ram_bytes=0, gpu_required=True, min_gpu_memory_mib=40000, min_driver_version="535.104"
            )
        )
    )
    assert ok["gpu"].status == "pass" and "2 GPU(s): NVIDIA H100 80GB HBM3 (81559 MiB)" in ok["gpu"].message
    assert ok["gpu"].details["gpus"][1] == {
        "index": 1,
        "name": "NVIDIA H100 80GB HBM3",
        "memory_mib": 81559,
        "driver": "550.54.15",
    }
    assert ok["gpu-memory"].status == "pass" and ok["driver"].status == "pass"
    bad = pf.run_preflight(
        pf.Requirements(min_ram_bytes=0, min_gpu_memory_mib=90000, min_driver_version="555.42")
    )
    assert sorted(c.name for c in bad.failed) == ["driver", "gpu-memory"]
    assert "NVIDIA driver 550.54.15, models need >= 555.42" in by_name(bad)["driver"].message


def test_nvidia_smi_without_driver_counts_as_no_gpu(fake_smi: Path) -> None:
    if pf.nvidia_hardware():
        pytest.fail("this test describes a host without NVIDIA PCI devices")
    write_smi(
        fake_smi, "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n", rc=9
    )
    rep = pf.run_preflight(pf.Requirements(min_ram_bytes=0, gpu_required=True))
    assert [c.name for c in rep.failed] == ["gpu"]


def test_resource_failures_are_named(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    future = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    rep = pf.run_preflight(
        pf.Requirements(
            min_cpus=10_000,
            min_ram_bytes=1 << 60,
            min_kernel="99.0",
            tiers={"warm": (str(tmp_path), free * 2)},
            not_before=future,
        )
    )
    checks = by_name(rep)
    assert {c.name for c in rep.failed} == {"cpu", "ram", "kernel", "disk:warm", "time"}
    assert f"{tmp_path}: " in checks["disk:warm"].message and "warm tier" in checks["disk:warm"].message
    assert "before the bundle was built" in checks["time"].message


def _bundle(tmp_path: Path, keys: Keys) -> Path:
    created = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    m = Manifest(
        bundle_id="b1",
        kind="full",
        compatible="appliance-x",
        sequence=3,
        created=created,
        builder_version="test",
        files={
            "models/m/1.0.0/w.safetensors": FileEntry(
                size=1000, sha256="0" * 64, block_size=1 << 26, blocks=["0" * 64]
            )
        },
        models=[
            ModelEntry(
                name="m",
                version="1.0.0",
                kind="full",
                path="models/m/1.0.0",
                target_files={"w.safetensors": {"size": 1000, "sha256": "0" * 64}},
                dependencies={"nvidia-driver": ">=550.54", "gpu-memory-mib": "20000", "gpu": "required"},
            )
        ],
    )
    d = tmp_path / "bundle"
    d.mkdir()
    data = canonical_bytes(m)
    (d / "MANIFEST.json").write_bytes(data)
    (d / "MANIFEST.json.asc").write_bytes(keys.sign(data, "signer"))
    return d


def _trust_args(keys: Keys) -> list[str]:
    return ["--trust", keys.fpr["signer"], "--keyring", str(keys.keyring("signer"))]


def test_requirements_from_bundle_manifest(tmp_path: Path, keys: Keys) -> None:
    req = requirements_from_bundle(_bundle(tmp_path, keys), keys.trust(["signer"], "signer"),
                                   root="/srv/airlock", tiers={"warm": "/mnt/cephfs"})
    assert req.tiers == {"hot": ("/srv/airlock", 2000), "warm": ("/mnt/cephfs", 0)}
    assert (req.min_driver_version, req.min_gpu_memory_mib, req.gpu_required) == ("550.54", 20000, True)
    assert req.not_before and req.not_before.endswith("Z")


def _cli() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def test_cli_report_exit_codes_and_override(tmp_path: Path, fake_smi: Path, keys: Keys) -> None:
    runner = CliRunner()
    write_smi(fake_smi, H100.replace("550.54.15", "535.86.10"))  # driver older than the bundle needs
    bundle = _bundle(tmp_path, keys)
    args = ["preflight", "--bundle", str(bundle), *_trust_args(keys), "--root", str(tmp_path),
            "--min-ram-gib", "0"]
    res = runner.invoke(_cli(), [*args, "--json"])
    assert res.exit_code == 14, res.output
    report = json.loads(res.stdout)
    assert report["ok"] is False and report["failed"] == ["driver"] and report["exit_code"] == 14
    res = runner.invoke(_cli(), [*args, "--allow-fail", "driver"])
    assert res.exit_code == 0, res.output
    assert "FAIL driver" in res.stdout and "(allowed)" in res.stdout
    res = runner.invoke(_cli(), args)
    assert res.exit_code == 14 and "preflight failed: driver" in res.output


def test_standalone_script_with_system_python(tmp_path: Path) -> None:
    """The role runs this file with the target's python3 before Airlock is installed there."""
    py = shutil.which("python3", path="/usr/bin:/bin") or "python3"
    req = json.dumps({"min_ram_bytes": 0, "tiers": {"hot": [str(tmp_path), 1 << 60]}})
    proc = subprocess.run(
        [py, str(PREFLIGHT_PY), "--json", "--requirements-json", req],
        capture_output=True,
        text=True,
        check=False,
        cwd="/",
    )
    assert proc.returncode == 3, proc.stderr
    assert json.loads(proc.stdout)["failed"] == ["disk:hot"]
    proc = subprocess.run(
        [py, str(PREFLIGHT_PY), "--requirements-json", req, "--allow-fail", "disk:hot"],
        capture_output=True,
        text=True,
        check=False,
        cwd="/",
    )
    assert proc.returncode == 0 and "(allowed)" in proc.stdout
    bad = subprocess.run(
        [py, str(PREFLIGHT_PY), "--requirements-json", '{"min_ram": 1}'],
        capture_output=True,
        text=True,
        check=False,
        cwd="/",
    )
    assert bad.returncode != 0 and "unknown requirement keys: min_ram" in bad.stderr
