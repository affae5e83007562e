"""Every command's --help is readable at 80 columns: no line wider than the terminal, no option name
cut off with an ellipsis, every option described."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from airlock.cli import app


def _commands(cmd: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command and group (duck-typed: typer may bundle its own click)."""
    yield path, cmd
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        yield from _commands(sub, (*path, name))


COMMANDS = list(_commands(typer.main.get_command(app)))


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=lambda p: " ".join(p) or "airlock")
def test_help_fits_80_columns(path: tuple[str, ...]) -> None:
    r = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert r.exit_code == 0, r.output
    wide = [line for line in r.output.splitlines() if len(line) > 80]
    assert not wide and "…" not in r.output, wide or r.output


def test_every_option_is_described() -> None:
    missing = [f"{' '.join(p)} {o.opts[0]}" for p, cmd in COMMANDS for o in cmd.params
               if o.param_type_name == "option" and not o.help and o.opts[0] != "--help"]
    assert missing == []
