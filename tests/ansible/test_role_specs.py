"""Every role declares its interface in ``meta/argument_specs.yml``: each variable of
``defaults/main.yml`` is there, role-prefixed, with the same literal default; Ansible's own argument
validation accepts every role's defaults and refuses a value of the wrong type."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import REPO, VENV_BIN, run_ansible_tool

ROLES = sorted(p for p in (REPO / "roles").iterdir() if (p / "tasks").is_dir())
SAMPLE: dict[str, Any] = {"str": "x", "path": "/x", "raw": "x", "int": 1, "float": 1.0, "bool": True,
                          "list": ["x"], "dict": {"x": "y"}}


def _options(role: Path) -> dict[str, dict[str, Any]]:
    spec = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    return spec["main"]["options"]


def _defaults(role: Path) -> dict[str, Any]:
    path = role / "defaults" / "main.yml"
    return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}


def test_every_role_has_an_argument_spec() -> None:
    assert len(ROLES) >= 14
    missing = [r.name for r in ROLES if not (r / "meta" / "argument_specs.yml").is_file()]
    assert missing == []


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.name)
def test_defaults_are_in_the_spec_and_role_prefixed(role: Path) -> None:
    options, defaults = _options(role), _defaults(role)
    assert [k for k in defaults if k not in options] == [], "variables of defaults/main.yml not in the spec"
    assert [k for k in {*options, *defaults} if not k.startswith(role.name + "_")] == []
    for name, opt in options.items():
        assert opt.get("description"), f"{name}: no description"
        value = defaults.get(name)
        if "default" in opt and name in defaults and "{{" not in yaml.safe_dump(value):  # literal only
            assert opt["default"] == value, f"{name}: spec default {opt['default']!r} != {value!r}"


def _validate(tmp_path: Path, extra: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """Only the roles' argument validation runs (it is tagged always; no other task has the tag)."""
    play = [{"hosts": "localhost", "connection": "local", "gather_facts": True, "gather_subset": ["min"],
             "vars": {"ansible_python_interpreter": str(VENV_BIN / "python")},
             "roles": [r.name for r in ROLES]}]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play))
    (tmp_path / "vars.yml").write_text(yaml.safe_dump(extra))
    return run_ansible_tool("ansible-playbook", "-i", "localhost,", "play.yml", "-e", "@vars.yml",
                            "--tags", "airlock-no-such-tag", tmp=tmp_path, cwd=tmp_path, timeout=300)


def _required() -> dict[str, Any]:
    return {name: SAMPLE[opt.get("type", "str")] for role in ROLES for name, opt in _options(role).items()
            if opt.get("required")}


def test_ansible_accepts_every_roles_defaults(tmp_path: Path) -> None:
    r = _validate(tmp_path, _required())
    assert r.returncode == 0, r.stdout[-4000:]
    assert r.stdout.count("Validating arguments against arg spec 'main'") == len(ROLES)


def test_ansible_refuses_a_wrong_type(tmp_path: Path) -> None:
    r = _validate(tmp_path, {**_required(), "triton_server_http_port": "eighty"})
    assert r.returncode != 0
    assert "triton_server_http_port" in r.stdout and "int" in r.stdout
