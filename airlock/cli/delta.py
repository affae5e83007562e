"""`airlock delta ...` commands: make, apply, inspect, path."""

from __future__ import annotations

from pathlib import Path

import typer

from airlock.cli.common import JsonOpt, emit_json, handle_errors, out, progress_bytes
from airlock.errors import AirlockError
from airlock.textsafe import visible

app = typer.Typer(no_args_is_help=True, help="Make, apply and inspect tensor-aware model deltas.")


def _say(message: str) -> None:
    out.print(visible(message, lines=True), highlight=False, soft_wrap=True, markup=False)


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


@app.command("make")
def make_cmd(
    old_dir: Path = typer.Argument(..., help="Directory of the old model version (the source)."),
    new_dir: Path = typer.Argument(..., help="Directory of the new model version (the target)."),
    output: Path = typer.Option(..., "-o", "--output", help="Delta file to write (.aldelta)."),
    from_version: str = typer.Option(None, "--from", help="Version label of OLD_DIR (default: content id)."),
    to_version: str = typer.Option(None, "--to", help="Version label of NEW_DIR (default: content id)."),
    no_reverse: bool = typer.Option(False, "--no-reverse",
                                    help="Omit the bytes of removed tensors: the delta then only goes "
                                    "forward."),
    level: int = typer.Option(19, "--level", min=1, max=22, help="zstd level for the records."),
    as_json: bool = JsonOpt,
) -> None:
    """Write a delta that rebuilds NEW_DIR byte-identically from OLD_DIR (and back, unless --no-reverse)."""
    from airlock.delta import make_delta
    from airlock.delta.inventory import total_bytes

    with handle_errors(as_json):
        if not old_dir.is_dir() or not new_dir.is_dir():
            raise AirlockError(f"{old_dir if not old_dir.is_dir() else new_dir}: not a directory",
                               rule="delta-input")
        old_b, new_b = total_bytes(old_dir), total_bytes(new_dir)
        total = old_b + 2 * new_b + (0 if no_reverse else old_b)
        with progress_bytes("making delta", total, not as_json) as prog:
            summary = make_delta(old_dir, new_dir, output, from_version=from_version, to_version=to_version,
                                 reverse=not no_reverse, progress=prog, level=level)
        if as_json:
            emit_json({"ok": True, **summary.as_dict()})
            return
        pct = 100 * summary.size / summary.target_bytes if summary.target_bytes else 0.0
        _say(f"{output}: {_mb(summary.size)} ({pct:.2f}% of the new version's "
             f"{_mb(summary.target_bytes)}), {summary.from_version} -> {summary.to_version}, "
             f"{'reversible' if summary.reversible else 'forward only'}")
        _say("tensors: " + ", ".join(f"{k} {v}" for k, v in summary.tensors.items()))


@app.command("apply")
def apply_cmd(
    src_dir: Path = typer.Argument(..., help="Directory of the version the delta starts from."),
    delta: Path = typer.Argument(None, help="Delta file (omit with --chain-dir)."),
    output: Path = typer.Option(..., "-o", "--output", help="Directory to create (must not exist)."),
    reverse: bool = typer.Option(False, "--reverse",
                                 help="Go backwards: SRC_DIR is the delta's new version."),
    no_link: bool = typer.Option(False, "--no-link",
                                 help="Copy unchanged files instead of hard-linking them."),
    chain_dir: Path = typer.Option(None, "--chain-dir", help="Follow the shortest chain of deltas in this "
                                   "directory (needs --to)."),
    from_version: str = typer.Option(None, "--from", help="With --chain-dir: the version of SRC_DIR "
                                     "(default: recognised by its content hash)."),
    to_version: str = typer.Option(None, "--to", help="With --chain-dir: the version to build."),
    as_json: bool = JsonOpt,
) -> None:
    """Check SRC_DIR against the delta, rebuild the other version in a staging directory, verify every
    file's hash and rename it to OUTPUT. Nothing is left behind on failure."""
    from airlock.delta import apply_chain, apply_delta, find_chain_steps, identify_version
    from airlock.delta.inventory import total_bytes

    with handle_errors(as_json):
        if chain_dir is not None:
            if delta is not None or reverse or not to_version:
                raise AirlockError("--chain-dir needs --to (and optionally --from), and no DELTA or "
                                   "--reverse", rule="delta-usage")
            if not from_version:
                from_version = identify_version(chain_dir, src_dir)
            steps = find_chain_steps(chain_dir, from_version, to_version)
            total = 2 * len(steps) * total_bytes(src_dir) if src_dir.is_dir() else None
            with progress_bytes(f"applying {len(steps)} deltas", total, not as_json) as prog:
                results = apply_chain(src_dir, steps, output, link_unchanged=not no_link, progress=prog)
            report = {"ok": True, "out_dir": str(output), "from_version": from_version,
                      "to_version": to_version,
                      "chain": [{"delta": str(s.path), "reverse": s.reverse} for s in steps],
                      "steps": [r.as_dict() for r in results]}
            if as_json:
                emit_json(report)
            else:
                _say(f"{output}: {to_version} built from {from_version} via {len(steps)} deltas")
            return
        if delta is None:
            raise AirlockError("give a DELTA file or --chain-dir", rule="delta-usage")
        total = 2 * total_bytes(src_dir) if src_dir.is_dir() else None
        with progress_bytes("applying delta", total, not as_json) as prog:
            summary = apply_delta(src_dir, delta, output, reverse=reverse, link_unchanged=not no_link,
                                  progress=prog)
        if as_json:
            emit_json({"ok": True, **summary.as_dict()})
            return
        _say(f"{output}: {summary.to_version} built from {summary.from_version} ({summary.files} files, "
             f"{_mb(summary.bytes_written)} written, {summary.linked} hard-linked; all hashes verified)")


@app.command("inspect")
def inspect_cmd(
    delta: Path = typer.Argument(..., help="Delta file."),
    as_json: bool = JsonOpt,
) -> None:
    """Validate a delta (container, index and every record checksum) and show its versions, files and
    record statistics."""
    from airlock.delta import read_delta_header
    from airlock.delta.container import verify_records

    with handle_errors(as_json):
        header = read_delta_header(delta)
        verify_records(delta, header.records)
        info = header.summary()
        if as_json:
            emit_json({"ok": True, "path": str(delta), **info})
            return
        _say(f"{delta}: airlock delta v{header.format_version}, {header.from_version} -> "
                  f"{header.to_version}, {'reversible' if header.reversible else 'forward only'}")
        src_b = sum(f.size for f in header.source_files.values())
        tgt_b = sum(f.size for f in header.target_files.values())
        _say(f"source: {len(header.source_files)} files, {_mb(src_b)}, {len(header.source_tensors)} tensors")
        _say(f"target: {len(header.target_files)} files, {_mb(tgt_b)}, {len(header.target_tensors)} tensors")
        for name, rec in sorted(info["records"].items()):
            _say(f"  {name:10s} {rec['count']:6d} records {_mb(rec['bytes']):>12s} "
                 f"(from {_mb(rec['raw_bytes'])})")
        _say(f"payload: {_mb(header.payload_bytes())}")


@app.command("path")
def path_cmd(
    from_version: str = typer.Argument(..., help="Version to start from."),
    to_version: str = typer.Argument(..., help="Version to reach."),
    delta_dir: Path = typer.Option(..., "--dir", "-d", help="Directory holding .aldelta files."),
    as_json: bool = JsonOpt,
) -> None:
    """Print the shortest chain of deltas from one version to another (reversible deltas count both ways)."""
    from airlock.delta import find_chain_steps

    with handle_errors(as_json):
        steps = find_chain_steps(delta_dir, from_version, to_version)
        if as_json:
            emit_json({"ok": True, "from_version": from_version, "to_version": to_version,
                       "chain": [{"delta": str(s.path), "reverse": s.reverse, "from_version": s.from_version,
                                  "to_version": s.to_version} for s in steps]})
            return
        for s in steps:
            _say(f"{s.from_version} -> {s.to_version}  {s.path}{'  (reverse)' if s.reverse else ''}")
