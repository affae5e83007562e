"""Hygiene of the tests and the docs: no test module imports another test module (shared code lives
in helper modules, shared fixtures in conftest.py files), no fixture is imported (``# noqa: F401``),
and nothing cites a design document the repository does not have."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support import REPO

TESTS = REPO / "tests"


def _imported_modules(path: Path) -> list[str]:
    out: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
            out.extend(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.extend(a.name for a in node.names)
    return out


def _is_test_module(dotted: str) -> bool:
    parts = dotted.split(".")
    return any(part.startswith("test_") and REPO.joinpath(*parts[:i + 1]).with_suffix(".py").is_file()
               for i, part in enumerate(parts))


def test_no_test_module_imports_another_test_module() -> None:
    files = sorted(TESTS.rglob("*.py"))
    assert len(files) > 100
    bad = {p.relative_to(REPO).as_posix(): m for p in files for m in _imported_modules(p)
           if m.startswith("tests.") and _is_test_module(m)}
    assert bad == {}


def test_no_fixture_is_imported() -> None:
    """A fixture imported into a module is a second definition (a session fixture then runs once per
    importing module) and needs ``# noqa: F401``; tests/conftest.py shares fixtures instead."""
    bad = [f"{p.relative_to(REPO)}:{n}" for p in sorted(TESTS.rglob("*.py")) if p.name != "test_hygiene.py"
           for n, line in enumerate(p.read_text().splitlines(), 1)
           if "noqa: F401" in line or "noqa: F811" in line]
    assert bad == []


def test_no_citation_of_a_missing_design_document() -> None:
    assert not (REPO / "DESIGN.md").exists()
    roots = ["airlock", "plugins", "scripts", "docs", "roles", "playbooks", "README.md", "Makefile"]
    files = [f for r in roots for f in ([REPO / r] if (REPO / r).is_file() else (REPO / r).rglob("*"))
             if f.is_file() and f.suffix in ("", ".py", ".md", ".sh", ".yml", ".j2", ".toml")]
    assert len(files) > 50
    bad = [str(f.relative_to(REPO)) for f in files if "DESIGN.md" in f.read_text(errors="replace")]
    assert bad == []
