"""The luks_volume role against a real loop device as root: format, LUKS2 header, key slots add/remove,
idempotent re-runs, header backup, crypttab/fstab, check mode changing nothing, and no key material
in Ansible output. ``cryptsetup open`` needs device-mapper, which these machines lack: open, mkfs and
mount are exercised in check mode only (luks_volume_open: false in the applying runs)."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.support import require_root, require_tool

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"


@pytest.fixture
def loopdev(tmp_path: Path) -> Iterator[str]:
    require_root("losetup and cryptsetup on a loop device")
    require_tool("cryptsetup", "apt-get install -y cryptsetup-bin")
    losetup = require_tool("losetup", "apt-get install -y mount")
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(40 << 20)
    dev = subprocess.run(
        [losetup, "-f", "--show", str(image)], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run([losetup, "-d", dev], check=False)


def _key(path: Path) -> Path:
    path.write_bytes(os.urandom(64))
    path.chmod(0o400)
    return path


def _vars(tmp_path: Path, dev: str, **over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "luks_volume_device": dev,
        "luks_volume_name": "airlock-test",
        "luks_volume_keyfile": str(tmp_path / "k1"),
        "luks_volume_pbkdf": "pbkdf2",
        "luks_volume_pbkdf_iterations": 1000,
        "luks_volume_open": False,
        "luks_volume_crypttab_path": str(tmp_path / "etc/crypttab"),
        "luks_volume_fstab_path": str(tmp_path / "etc/fstab"),
        "luks_volume_header_backup_dir": str(tmp_path / "backup"),
        "luks_volume_mount_point": str(tmp_path / "mnt"),
        "luks_volume_runtime_dir": str(tmp_path / "run"),
    }
    base.update(over)
    return base


def _play(tmp_path: Path, variables: dict[str, object], *extra: str) -> tuple[int, dict[str, int], str]:
    playbook = tmp_path / "play.yml"
    playbook.write_text(
        yaml.safe_dump(
            [{"hosts": "localhost", "connection": "local", "gather_facts": False, "roles": ["luks_volume"]}]
        )
    )
    varfile = tmp_path / "vars.json"
    varfile.write_text(json.dumps({**variables, "ansible_python_interpreter": sys.executable}))
    env = {
        **os.environ,
        "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCALHOST_WARNING": "0",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0",
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
    }
    proc = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", "localhost,", str(playbook), "-e", f"@{varfile}", *extra],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    output = proc.stdout + proc.stderr
    recap = re.search(r"localhost\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", output)
    assert recap, output
    counts = dict(zip(["ok", "changed", "unreachable", "failed"], map(int, recap.groups()), strict=True))
    return proc.returncode, counts, output


def _dump(target: str) -> str:
    return subprocess.run(
        ["cryptsetup", "luksDump", target], check=True, capture_output=True, text=True
    ).stdout


def _slots(target: str) -> list[int]:
    dump = _dump(target)
    section = dump.split("Keyslots:")[1].split("Tokens:")[0]
    return [int(m) for m in re.findall(r"^\s+(\d+): luks2", section, re.M)]


def _opens(dev: str, key: Path) -> bool:
    return (
        subprocess.run(
            ["cryptsetup", "open", "--test-passphrase", "--key-file", str(key), dev], capture_output=True
        ).returncode
        == 0
    )


def _is_luks(dev: str) -> bool:
    return subprocess.run(["cryptsetup", "isLuks", dev]).returncode == 0


def test_format_slots_backup_idempotent(loopdev: str, tmp_path: Path) -> None:
    k1, k2 = _key(tmp_path / "k1"), _key(tmp_path / "k2")
    rc, counts, out = _play(tmp_path, _vars(tmp_path, loopdev))
    assert rc == 0 and counts["failed"] == 0 and counts["changed"] >= 4, out
    dump = _dump(loopdev)
    assert re.search(r"^Version:\s+2$", dump, re.M) and "pbkdf2" in dump and "aes-xts-plain64" in dump
    assert _slots(loopdev) == [0] and _opens(loopdev, k1) and not _opens(loopdev, k2)
    uuid = subprocess.run(["cryptsetup", "luksUUID", loopdev], capture_output=True, text=True).stdout.strip()
    crypttab = (tmp_path / "etc/crypttab").read_text()
    assert f"airlock-test UUID={uuid} {k1} luks,discard" in crypttab
    assert (
        f"/dev/mapper/airlock-test {tmp_path / 'mnt'} ext4 defaults,nodev,nosuid,noexec 0 2"
        in (tmp_path / "etc/fstab").read_text()
    )
    backup = tmp_path / "backup/airlock-test.header.img"
    assert backup.stat().st_mode & 0o777 == 0o400 and (tmp_path / "backup").stat().st_mode & 0o777 == 0o700
    assert f"UUID:          \t{uuid}" in _dump(str(backup)) and _slots(str(backup)) == [0]

    rc, counts, out = _play(tmp_path, _vars(tmp_path, loopdev))
    assert rc == 0 and counts["changed"] == 0, out  # idempotent

    rc, counts, out = _play(tmp_path, _vars(tmp_path, loopdev, luks_volume_add_keyfiles=[str(k2)]))
    assert rc == 0 and counts["changed"] >= 2, out
    assert _slots(loopdev) == [0, 1] and _opens(loopdev, k2)
    assert _slots(str(backup)) == [0, 1]  # backup refreshed after the key slot change
    rc, counts, out = _play(tmp_path, _vars(tmp_path, loopdev, luks_volume_add_keyfiles=[str(k2)]))
    assert rc == 0 and counts["changed"] == 0, out

    rc, counts, out = _play(tmp_path, _vars(tmp_path, loopdev, luks_volume_remove_keyfiles=[str(k2)]))
    assert rc == 0 and counts["changed"] >= 2, out
    assert _slots(loopdev) == [0] and not _opens(loopdev, k2) and _opens(loopdev, k1)
    rc, counts, out = _play(tmp_path, _vars(tmp_path, loopdev, luks_volume_remove_keyfiles=[str(k2)]))
    assert rc == 0 and counts["changed"] == 0, out

    k3 = _key(tmp_path / "k3")  # a key that opens nothing must not be used to touch the volume
    rc, counts, out = _play(tmp_path, _vars(tmp_path, loopdev, luks_volume_keyfile=str(k3)))
    assert rc != 0 and "opens no key slot" in out and _slots(loopdev) == [0]


def test_check_mode_changes_nothing(loopdev: str, tmp_path: Path) -> None:
    k1, k2 = _key(tmp_path / "k1"), _key(tmp_path / "k2")
    rc, counts, out = _play(tmp_path, _vars(tmp_path, loopdev, luks_volume_open=True), "--check")
    assert rc == 0 and counts["failed"] == 0 and counts["changed"] >= 3, out
    assert "would luksFormat" in out and "would open airlock-test, mkfs.ext4, mount on" in out
    assert not _is_luks(loopdev)
    for p in ("etc/crypttab", "etc/fstab", "backup", "mnt"):
        assert not (tmp_path / p).exists(), p

    assert _play(tmp_path, _vars(tmp_path, loopdev))[0] == 0 and _opens(loopdev, k1)
    before = _dump(loopdev)
    rc, counts, out = _play(
        tmp_path,
        _vars(tmp_path, loopdev, luks_volume_add_keyfiles=[str(k2)], luks_volume_open=True),
        "--check",
    )
    assert rc == 0 and counts["changed"] >= 2 and f"would luksAddKey {k2}" in out, out
    assert _dump(loopdev) == before and not _opens(loopdev, k2)
    assert not (tmp_path / "mnt").exists()


def test_refuses_unsafe_key_and_existing_data(loopdev: str, tmp_path: Path) -> None:
    k1 = _key(tmp_path / "k1")
    k1.chmod(0o644)
    rc, _, out = _play(tmp_path, _vars(tmp_path, loopdev))
    assert rc != 0 and "mode 0400" in out and not _is_luks(loopdev)
    k1.chmod(0o400)
    subprocess.run(["mkfs.ext4", "-q", "-F", loopdev], check=True, capture_output=True)
    rc, _, out = _play(tmp_path, _vars(tmp_path, loopdev))
    assert rc != 0 and "holds a ext4 signature" in out and not _is_luks(loopdev)


def test_provider_key_and_no_key_material_in_output(loopdev: str, tmp_path: Path) -> None:
    """The LUKS key is an Airlock-encrypted file unwrapped through a key provider onto tmpfs for the
    run; neither it nor the KEK appears in -vvv Ansible output, and the unwrapped copy is removed."""
    from airlock.crypto import ProviderRegistry, encrypt_file

    keydir = tmp_path / "dev-keys"
    config = tmp_path / "keys.yaml"
    config.write_text(
        yaml.safe_dump(
            {"providers": {"dev": {"type": "keyfile", "dir": str(keydir), "allow_development_keyfile": True}}}
        )
    )
    reg = ProviderRegistry.load(config)
    reg.get("dev").generate("luks-kek")
    luks_key = tmp_path / "luks.key"
    luks_key.write_bytes(os.urandom(64))
    encrypt_file(luks_key, tmp_path / "luks.key.enc", reg.get("dev"), "luks-kek")
    variables = _vars(
        tmp_path,
        loopdev,
        luks_volume_key_source="provider",
        luks_volume_provider_key=str(tmp_path / "luks.key.enc"),
        luks_volume_keys_config=str(config),
        luks_volume_airlock_bin=str(Path(sys.executable).parent / "airlock"),
    )
    rc, counts, out = _play(tmp_path, variables, "-vvv")
    assert rc == 0 and counts["failed"] == 0, out
    assert _opens(loopdev, luks_key)
    assert " none luks,discard" in (tmp_path / "etc/crypttab").read_text()
    assert not (tmp_path / "run/airlock-test.key").exists()
    for secret in (luks_key.read_bytes(), (keydir / "luks-kek.kek").read_bytes()):
        for form in (secret.hex(), secret.hex().upper(), base64.b64encode(secret).decode()):
            assert form not in out
        assert secret.decode("latin-1") not in out
    assert "censored" in out  # the provider step ran under no_log
    rc, counts, out = _play(tmp_path, variables)
    assert rc == 0 and counts["changed"] == 0, out
