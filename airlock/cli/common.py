"""Shared CLI plumbing: error -> exit code mapping, --json output, progress bars."""

from __future__ import annotations

import contextlib
import json
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from airlock import settings
from airlock.errors import AirlockError, from_exception
from airlock.textsafe import safe

# usage errors (exit 2) belong to typer/click, whichever click it bundles
_CLICK_ERROR: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
# emoji off: ":name:" in an untrusted string must print as written (markup is escaped by safe())
console = Console(stderr=True, emoji=False)
out = Console(emoji=False)

JsonOpt = typer.Option(False, "--json", help="Print a machine-readable JSON report on stdout.")


def root_option(default: Any = settings.DEFAULT_ROOT,
                help: str = "Appliance root holding model_repo/.", *,
                envvar: str | None = settings.ROOT_ENV) -> Any:
    """The one ``--root`` option: every CLI group declares it through here (a group whose root means
    something else, e.g. the fleet's targets or a receipt's NAME=PATH list, passes its default/help)."""
    return typer.Option(default, "--root", envvar=envvar, help=help)


# the default root of every command on this host (model, audit, metrics, preflight, serve)
RootOpt = root_option()
LockOpt = typer.Option(None, "--lock-timeout",
                       help=f"Seconds to wait for the repository lock (default {settings.LOCK_TIMEOUT:g}, "
                       f"env {settings.LOCK_TIMEOUT_ENV}).")


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """Warnings (e.g. secret keys in a trusted keyring) as one line on stderr, never a code location."""
    console.print("[yellow]warning[/] " + safe(str(message)), highlight=False, soft_wrap=True)


warnings.showwarning = _show_warning


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def fail(exc: AirlockError, as_json: bool = False) -> NoReturn:
    """One clear line naming the file and the rule; exit with the class's code."""
    if as_json:
        emit_json({"ok": False, **exc.as_dict()})
    else:
        where = f"{exc.path}: " if exc.path and not str(exc).startswith(exc.path) else ""
        console.print("[bold red]error[/] " + safe(f"[{exc.rule}] {where}{exc}"), highlight=False,
                      markup=True, soft_wrap=True)
    raise typer.Exit(exc.exit_code)


@contextlib.contextmanager
def handle_errors(as_json: bool = False, *, on_error: Callable[[AirlockError], None] | None = None
                  ) -> Iterator[None]:
    """Every failure as one line (or one JSON document) with its documented exit code: Airlock
    errors as they are, OS errors through ``from_os_error`` (stick pulled, no space, permission,
    unsupported on this file system), Ctrl-C as ``interrupted`` (130), anything else as an internal
    error: never a traceback. ``on_error`` (e.g. an audit record) runs first, and may not fail."""
    try:
        yield
    except (typer.Exit, typer.Abort, _CLICK_ERROR):
        raise
    except (Exception, KeyboardInterrupt) as exc:
        err = from_exception(exc)
        if on_error is not None:
            with contextlib.suppress(Exception, KeyboardInterrupt):
                on_error(err)
        fail(err, as_json)


def check_banner() -> None:
    """The visible marker of every --check run (stderr, so --json stays one document)."""
    console.print("[bold yellow]CHECK MODE: nothing written[/]", highlight=False)


@contextlib.contextmanager
def progress_bytes(description: str, total: int | None,
                   enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Yield a callback advancing a byte progress bar (silent when disabled or not a TTY)."""
    if not enabled or not console.is_terminal:
        yield lambda _n: None
        return
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        TimeRemainingColumn(), console=console, transient=True,
    ) as prog:
        task = prog.add_task(description, total=total)
        yield lambda n: prog.advance(task, n)
