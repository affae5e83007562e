"""`airlock install|update|rollback|verify`: fleet operations over ansible-runner."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the fleet commands to the root app (filled in by the Ansible layer)."""
