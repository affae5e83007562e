"""The collection as shipped: `ansible-galaxy collection build` packs no development state, the tarball
installs offline, and the `airlock` CLI runs its playbooks from that installed copy (no
ANSIBLE_COLLECTIONS_PATH set by hand)."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
GALAXY = REPO / ".venv" / "bin" / "ansible-galaxy"
FORBIDDEN = (".hypothesis", ".ci", ".git", ".venv", ".cache", ".collections", ".pytest_cache",
             ".mypy_cache", ".ruff_cache", "tests", "benchmarks", "demo-out")


def _clean_env(home: Path | None = None) -> dict[str, str]:
    """No ANSIBLE_* settings; with `home`, also no ~/.ansible of this machine (ansible-lint installs
    the checkout's collection into ~/.ansible/collections, which would shadow the tarball)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("ANSIBLE_") and k not in ("AIRLOCK_ANSIBLE_DIR", "AIRLOCK_FAULT")}
    if home is not None:
        home.mkdir(parents=True, exist_ok=True)
        env["HOME"] = str(home)
    return env


@pytest.fixture(scope="module")
def tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("galaxy-build")
    r = subprocess.run([str(GALAXY), "collection", "build", "--output-path", str(out), str(REPO)],
                       capture_output=True, text=True, timeout=300, cwd=out, env=_clean_env())
    assert r.returncode == 0, r.stdout + r.stderr
    (tb,) = out.glob("airlock-appliance-*.tar.gz")
    return tb


def test_tarball_packs_no_development_state(tarball: Path) -> None:
    with tarfile.open(tarball) as tf:
        names = tf.getnames()
    tops = {n.split("/", 1)[0] for n in names}
    assert not tops & set(FORBIDDEN), sorted(tops & set(FORBIDDEN))
    assert not [n for n in names if n.endswith(".egg-info") or "/__pycache__" in n or n.endswith(".pyc")]
    for required in ("LICENSE", "CHANGELOG.md", "README.md", "MANIFEST.json", "playbooks", "roles",
                     "plugins"):
        assert required in tops, required
    assert "Apache License" in (REPO / "LICENSE").read_text()


def test_cli_runs_against_the_installed_collection(tarball: Path, tmp_path: Path) -> None:
    dest = tmp_path / "collections"
    env = _clean_env(home=tmp_path / "home")
    r = subprocess.run([str(GALAXY), "collection", "install", "--offline", "--force", "-p", str(dest),
                        str(tarball)],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    installed = dest / "ansible_collections" / "airlock" / "appliance"
    assert (installed / "playbooks" / "verify.yml").is_file()
    assert not (installed / ".collections").exists()  # resolution must not rely on the checkout's symlink
    env["AIRLOCK_ANSIBLE_DIR"] = str(installed)
    r = subprocess.run([str(REPO / ".venv" / "bin" / "airlock"), "verify", "-i",
                        str(installed / "inventories" / "local"), "--limit", "local-a", "--json",
                        "--runner-dir", str(tmp_path / "runner"),
                        "-e", f"airlock_fleet_dir={tmp_path / 'fleet'}"],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    out = r.stdout + r.stderr
    assert "couldn't resolve module" not in out
    assert r.returncode == 0, out[-4000:]
    report = json.loads(r.stdout)
    assert [h["result"] for h in report["hosts"]] == ["ok"]


def _role_references(play_file: Path) -> list[str]:
    """Every role a playbook names: ``roles:`` entries and include_role/import_role tasks."""
    out: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "roles" and isinstance(value, list):
                    out.extend(r if isinstance(r, str) else r.get("role", r.get("name")) for r in value)
                elif key in ("ansible.builtin.include_role", "ansible.builtin.import_role",
                             "include_role", "import_role"):
                    out.append(value["name"])
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(yaml.safe_load(play_file.read_text()))
    return out


def test_playbooks_name_roles_by_fqcn() -> None:
    plays = sorted((REPO / "playbooks").rglob("*.yml"))
    refs = {p.relative_to(REPO).as_posix(): _role_references(p) for p in plays}
    assert sum(map(len, refs.values())) >= 15
    bare = {p: [r for r in rs if not r.startswith("airlock.appliance.")] for p, rs in refs.items()}
    assert {p: rs for p, rs in bare.items() if rs} == {}
    roles = {r.name for r in (REPO / "roles").iterdir()}
    assert {r.removeprefix("airlock.appliance.") for rs in refs.values() for r in rs} <= roles


@pytest.mark.parametrize("where", ["checkout", "installed"])
def test_a_role_runs_by_fqcn(where: str, tarball: Path, tmp_path: Path) -> None:
    """install.yml's model_repo step (include_role airlock.appliance.model_repo) from the checkout
    (ansible.cfg: the .collections symlink) and from the installed tarball (no roles_path at all)."""
    env = _clean_env(home=tmp_path / "home")
    if where == "checkout":
        content, env["ANSIBLE_CONFIG"] = REPO, str(REPO / "ansible.cfg")
    else:
        dest = tmp_path / "collections"
        r = subprocess.run([str(GALAXY), "collection", "install", "--offline", "--force", "-p", str(dest),
                            str(tarball)], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        content = dest / "ansible_collections" / "airlock" / "appliance"
        env["ANSIBLE_COLLECTIONS_PATH"] = str(dest)
    fleet = tmp_path / "fleet"
    r = subprocess.run([str(REPO / ".venv" / "bin" / "ansible-playbook"), "-i",
                        str(content / "inventories" / "local"), str(content / "playbooks" / "install.yml"),
                        "--tags", "model_repo", "--limit", "local-a", "-e", f"airlock_fleet_dir={fleet}"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "airlock.appliance.model_repo" in r.stdout
    assert (fleet / "local-a" / "model_repo").is_dir()
