"""roles/container_runtime with real podman (its own storage in a temp dir, vfs driver): a docker-archive
image tarball written here byte by byte (one layer, its config; the image ID is the config's SHA-256)
is checked against its pinned SHA-256 before loading, loaded once (second run changes nothing), verified
by image ID; a tampered tarball and a wrong pinned ID are refused. The engine packages themselves come
from the offline repository in production; here podman comes from scripts/apt-packages.txt."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.provision.ansible_run import run_role
from tests.support import require_tool

NAME = "localhost/airlock-test:1.0"


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def docker_archive(path: Path) -> str:
    """Write a one-layer docker-archive; return its image ID (sha256 of the config)."""
    layer_buf = io.BytesIO()
    with tarfile.open(fileobj=layer_buf, mode="w", format=tarfile.PAX_FORMAT) as layer:
        _add(layer, "airlock/hello.txt", b"hello from the bundle\n")
    layer_bytes = layer_buf.getvalue()
    diff_id = hashlib.sha256(layer_bytes).hexdigest()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
            "history": [{"created_by": "airlock test"}],
        },
        sort_keys=True,
    ).encode()
    image_id = hashlib.sha256(config).hexdigest()
    manifest = json.dumps(
        [{"Config": f"{image_id}.json", "RepoTags": [NAME], "Layers": [f"{diff_id}/layer.tar"]}]
    ).encode()
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, f"{image_id}.json", config)
        _add(tar, f"{diff_id}/layer.tar", layer_bytes)
        _add(tar, "manifest.json", manifest)
    return image_id


@pytest.fixture
def podman(tmp_path: Path) -> Iterator[list[str]]:
    require_tool("podman", "apt-get install podman (scripts/apt-packages.txt)")
    # podman refuses a runroot longer than 50 characters: a short one of our own
    run = Path(tempfile.mkdtemp(prefix="al-podman-"))
    yield ["--root", str(tmp_path / "storage"), "--runroot", str(run), "--storage-driver", "vfs"]
    shutil.rmtree(run, ignore_errors=True)


def role_vars(args: list[str], image: dict[str, Any]) -> dict[str, Any]:
    return {
        "container_runtime_install": False,
        "container_runtime_engine": "podman",
        "container_runtime_engine_args": args,
        "container_runtime_images": [image],
    }


def image_ids(args: list[str]) -> list[str]:
    out = subprocess.run(
        ["podman", *args, "images", "--no-trunc", "--format", "{{.ID}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [ln.removeprefix("sha256:") for ln in out.split()]


def pinned_image(tmp_path: Path, pinned_id: str | None = None) -> tuple[str, dict[str, Any]]:
    """A fresh image tarball and its role entry, pinned by the tarball's sha256 and by ``pinned_id``
    (default: the image's real id). Returns (real image id, entry)."""
    tarball = tmp_path / "image.tar"
    image_id = docker_archive(tarball)
    return image_id, {
        "name": NAME,
        "tarball": str(tarball),
        "sha256": hashlib.sha256(tarball.read_bytes()).hexdigest(),
        "id": f"sha256:{pinned_id or image_id}",
    }


def test_load_once_verified_by_digest(tmp_path: Path, podman: list[str]) -> None:
    image_id, image = pinned_image(tmp_path)
    dry = run_role(tmp_path, "container_runtime", role_vars(podman, image), check=True)
    assert dry.rc == 0, dry.output
    assert image_ids(podman) == []
    first = run_role(tmp_path, "container_runtime", role_vars(podman, image))
    assert first.rc == 0 and first.recap["changed"] == 1, first.output
    assert image_ids(podman) == [image_id]
    second = run_role(tmp_path, "container_runtime", role_vars(podman, image))
    assert second.rc == 0 and second.recap["changed"] == 0, second.output


def test_tampered_tarball_is_not_loaded(tmp_path: Path, podman: list[str]) -> None:
    tarball = tmp_path / "image.tar"
    image_id = docker_archive(tarball)
    pinned = hashlib.sha256(tarball.read_bytes()).hexdigest()
    data = bytearray(tarball.read_bytes())
    data[600] ^= 0x20  # inside the config JSON
    tarball.write_bytes(bytes(data))
    res = run_role(
        tmp_path,
        "container_runtime",
        role_vars(podman, {"name": NAME, "tarball": str(tarball), "sha256": pinned, "id": image_id}),
    )
    assert res.rc != 0 and f"is not the pinned {pinned}; refusing to load it" in res.output
    assert image_ids(podman) == []


def test_wrong_image_id_is_removed_and_fails(tmp_path: Path, podman: list[str]) -> None:
    image_id, image = pinned_image(tmp_path, "ab" * 32)
    res = run_role(tmp_path, "container_runtime", role_vars(podman, image))
    assert res.rc != 0 and f"as image {image_id}, not the pinned {'ab' * 32}: removed it" in res.output
    assert image_ids(podman) == []
