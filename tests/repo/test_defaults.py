"""Each default lives in ``airlock.settings``; the copies that cannot import it (role defaults, module
argument specs, playbooks, the stdlib-only preflight script) must spell the same value."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

from airlock import settings
from airlock.provision import preflight
from airlock.repo.layout import DEFAULT_ROOT

TOP = Path(__file__).resolve().parents[2]
# every `airlock_root | default('<x>')` in roles and playbooks: the repository root's fallback
ROOT_FALLBACK = re.compile(r"airlock_root\s*\|\s*default\(\s*['\"]([^'\"]+)['\"]\s*\)")


def _yaml_files() -> list[Path]:
    return sorted([*TOP.glob("roles/*/defaults/main.yml"), *TOP.glob("roles/*/tasks/*.yml"),
                   *TOP.glob("playbooks/*.yml"), *TOP.glob("playbooks/tasks/*.yml")])


def test_one_repository_root() -> None:
    assert DEFAULT_ROOT == settings.DEFAULT_ROOT
    assert str(settings.DEFAULT_ROOT) == preflight.DEFAULT_ROOT
    found = {}
    for path in _yaml_files():
        for value in ROOT_FALLBACK.findall(path.read_text()):
            found.setdefault(value, []).append(str(path.relative_to(TOP)))
    assert found, "no airlock_root fallback found: the pattern no longer matches the roles"
    assert set(found) == {str(settings.DEFAULT_ROOT)}, found
    # roles whose variable is the repository root fall back to airlock_root, never to a literal
    # elsewhere (the runtime's home /var/lib/airlock is another thing)
    for role, var in (("model_repo", "model_repo_root"), ("model_update", "model_update_root"),
                      ("integrity_check", "integrity_check_root"), ("triton_models", "triton_models_root")):
        defaults = yaml.safe_load((TOP / "roles" / role / "defaults" / "main.yml").read_text())
        assert ROOT_FALLBACK.fullmatch(str(defaults[var]).strip("{} ")), (role, defaults[var])
    hot = yaml.safe_load((TOP / "roles/preflight/defaults/main.yml").read_text())["preflight_tiers"]["hot"]
    assert ROOT_FALLBACK.search(hot["path"]), hot
    for spec in TOP.glob("roles/*/meta/argument_specs.yml"):
        for opts in (yaml.safe_load(spec.read_text()) or {}).get("argument_specs", {}).values():
            for name, opt in (opts.get("options") or {}).items():
                if name.endswith("_root") and "default" in opt:
                    assert opt["default"] == str(settings.DEFAULT_ROOT), (spec, name, opt)


def _module_utils_default(option: str) -> object:
    tree = ast.parse((TOP / "plugins/module_utils/airlock_common.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == option and isinstance(node.value, ast.Call):
            for kw in node.value.keywords:
                if kw.arg == "default":
                    return ast.literal_eval(kw.value)
    raise AssertionError(f"no {option} default in module_utils/airlock_common.py")


def test_one_lock_timeout(monkeypatch) -> None:
    role = yaml.safe_load((TOP / "roles/model_update/defaults/main.yml").read_text())
    assert float(role["model_update_lock_timeout"]) == settings.LOCK_TIMEOUT
    assert float(_module_utils_default("lock_timeout")) == settings.LOCK_TIMEOUT  # type: ignore[arg-type]
    spec = yaml.safe_load((TOP / "roles/model_update/meta/argument_specs.yml").read_text())
    opt = spec["argument_specs"]["main"]["options"]["model_update_lock_timeout"]
    assert float(opt.get("default", settings.LOCK_TIMEOUT)) == settings.LOCK_TIMEOUT
    monkeypatch.delenv(settings.LOCK_TIMEOUT_ENV, raising=False)
    assert settings.lock_timeout() == settings.LOCK_TIMEOUT
    monkeypatch.setenv(settings.LOCK_TIMEOUT_ENV, "0.5")
    assert settings.lock_timeout() == 0.5  # read when asked, not at import
