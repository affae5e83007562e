"""Issue 14, class 10: the model_update role's copy mode (airlock_bundle_copy: true) copies only the
regular files the bundle's manifest lists; a symlink on the stick (to a control-node file or
directory) is never followed. Real ansible-playbook run on localhost (connection local)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

from tests.bundle.conftest import BundleFactory
from tests.provision.ansible_run import REPO_ROOT, ansible_playbook


def _copy(tmp: Path, bundle: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    dest = tmp / "incoming"
    play = [{"hosts": "localhost", "connection": "local", "gather_facts": False,
             "vars": {"ansible_python_interpreter": "/usr/bin/python3"},
             "tasks": [{"ansible.builtin.include_role": {"name": "model_update", "tasks_from": "copy"},
                        "vars": {"model_update_bundle": str(bundle) + "/",
                                 "model_update_copy_dir": str(dest)}}]}]
    path = tmp / "copy-play.yml"
    path.write_text(yaml.safe_dump(play))
    env = {**os.environ, "ANSIBLE_ROLES_PATH": str(REPO_ROOT / "roles"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_LOCAL_TEMP": str(tmp / ".ansible-tmp"), "ANSIBLE_RETRY_FILES_ENABLED": "0"}
    proc = subprocess.run([ansible_playbook(), "-i", "localhost,", str(path)], capture_output=True, text=True,
                          env=env, cwd=tmp, timeout=600, check=False)
    return proc, dest / bundle.name


def _tree(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            p = Path(dirpath) / n
            kind = "l" if p.is_symlink() else "d" if p.is_dir() else "f"
            out[p.relative_to(root).as_posix()] = kind
    return out


def test_copy_mode_copies_only_listed_regular_files(factory: BundleFactory, tmp_path: Path) -> None:
    bundle = factory.build()
    secret = tmp_path / "control-node-secret.txt"
    secret.write_text("ssh key of the control node")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "id_ed25519").write_text("PRIVATE")
    listed = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())
    # a symlinked payload (listed name), a symlinked directory, an unlisted extra, a FIFO
    cfg = bundle / "models/minilm/1.0.0/config.json"
    cfg.unlink()
    cfg.symlink_to(secret)
    (bundle / "models" / "keys").symlink_to(tmp_path / "secrets")
    (bundle / "extra.txt").write_text("not listed")
    os.mkfifo(bundle / "models" / "pipe")
    proc, copied = _copy(tmp_path, bundle)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    tree = _tree(copied)
    files = sorted(k for k, v in tree.items() if v == "f")
    assert files == sorted(n for n in listed if n != "models/minilm/1.0.0/config.json")
    assert all(v in ("f", "d") for v in tree.values()), tree  # no link was recreated
    for p in copied.rglob("*"):
        if p.is_file():
            assert p.read_bytes() != secret.read_bytes() and b"PRIVATE" not in p.read_bytes()


def test_copy_mode_with_a_symlinked_manifest_copies_no_payload(factory: BundleFactory,
                                                               tmp_path: Path) -> None:
    bundle = factory.build()
    real = tmp_path / "manifest-elsewhere.json"
    real.write_bytes((bundle / "MANIFEST.json").read_bytes())
    (bundle / "MANIFEST.json").unlink()
    (bundle / "MANIFEST.json").symlink_to(real)
    proc, copied = _copy(tmp_path, bundle)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert sorted(k for k, v in _tree(copied).items() if v == "f") == ["MANIFEST.json.asc"]
