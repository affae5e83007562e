"""`airlock audit ...` commands: the hash-chained audit log (update_history.log)."""

from __future__ import annotations

from pathlib import Path

import typer

from airlock.cli.common import JsonOpt, RootOpt, emit_json, handle_errors, out

app = typer.Typer(no_args_is_help=True, help="The hash-chained audit log.")



@app.command("verify")
def verify_cmd(root: Path = RootOpt,
               log: Path = typer.Option(None, "--log", help="Check this log file instead (no catalog head)."),
               anchor: str = typer.Option(None, "--anchor", metavar="SEQ:SHA256",
                                          help="A head recorded elsewhere (e.g. the control node's): the log "
                                          "must still hold that record."),
               as_json: bool = JsonOpt) -> None:
    """Check the chain against the catalog's head (and --anchor): an edited, deleted or reordered
    record, a cut tail or a replaced log fails with exit 33. Read-only."""
    from airlock.repo import Repository
    from airlock.repo import audit as audit_log

    with handle_errors(as_json):
        head = audit_log.parse_head(anchor) if anchor else None
        if log is not None:
            report = audit_log.verify(log, anchor=head)
        else:
            report = Repository(root).audit_verify(head)
        if as_json:
            emit_json(report.as_dict())
        else:
            out.print(f"{report.path}: chain intact, {report.records} records, head "
                      f"{report.head.seq}:{report.head.hash}", highlight=False, soft_wrap=True, markup=False)


@app.command("show")
def show_cmd(root: Path = RootOpt, tail: int = typer.Option(20, "--tail", help="Last N records (0: all)."),
             as_json: bool = JsonOpt) -> None:
    """Print the last records of the audit log."""
    from airlock.repo import Layout
    from airlock.repo import audit as audit_log

    with handle_errors(as_json):
        recs = audit_log.records(Layout(root).audit_log, tail)
        if as_json:
            emit_json({"ok": True, "records": recs})
            return
        for r in recs:
            out.print(f"{r.get('seq')} {r.get('time')} {r.get('actor')} {r.get('action')} "
                      f"{r.get('model') or ''} {r.get('from') or ''} -> {r.get('to') or ''} "
                      f"{r.get('result')}",
                      highlight=False, soft_wrap=True, markup=False)
