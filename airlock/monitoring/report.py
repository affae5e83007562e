"""``airlock report``: the fleet's state as one self-contained HTML page (inline CSS and SVG, no
network asset, no script) and a JSON twin signed with a site key (detached, ASCII-armoured, through
gpg: ``airlock.bundle.signing.sign_bytes``) that compliance can archive and check later.

Inputs are verify reports, read as untrusted data (size- and depth-bounded JSON, every string
escaped in the page): the fleet's ``airlock verify --json`` (one row per host: result, drift,
warnings) and/or single hosts' ``airlock model verify --json`` compliance reports named
``HOST=FILE`` (models with active and previous versions and bundle ids, audit head, sequence,
signature status, drift)."""

from __future__ import annotations

import html
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from airlock import boundedjson
from airlock.errors import ManifestError

SCHEMA = "airlock-fleet-report/1"
MAX_INPUT_BYTES = 64 * 1024 * 1024
HTML_NAME, JSON_NAME = "fleet-report.html", "fleet-report.json"


class ReportInputError(ManifestError):
    """A verify report that cannot be read (exit 11, like any malformed document)."""


@dataclass
class ModelState:
    active: str | None = None
    previous: str | None = None
    bundle_id: str | None = None
    versions: dict[str, str] = field(default_factory=dict)  # version -> state


@dataclass
class HostState:
    host: str
    ok: bool
    result: str | None = None
    models: dict[str, ModelState] = field(default_factory=dict)
    drift: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    audit_head: str | None = None
    sequence: int | None = None
    signatures_checked: bool | None = None
    last_update: str | None = None


def _fail(path: Path) -> Any:
    def fail(msg: str, rule: str) -> ReportInputError:
        return ReportInputError(f"{path}: {msg}", path=str(path), rule=f"report-input-{rule}")
    return fail


def _read(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_INPUT_BYTES + 1)
    except OSError as exc:
        raise ReportInputError(f"{path}: cannot read ({exc.strerror})", path=str(path),
                               rule="report-input") from exc
    if len(data) > MAX_INPUT_BYTES:
        raise ReportInputError(f"{path}: larger than {MAX_INPUT_BYTES} bytes", path=str(path),
                               rule="report-input-bounds")
    doc = boundedjson.loads(data, max_depth=64, fail=_fail(path))
    if not isinstance(doc, dict) or not ("hosts" in doc or "models" in doc or "drift_items" in doc):
        raise ReportInputError(f"{path}: not a verify report (neither `airlock verify --json`, "
                               "`airlock model verify --json` nor a registered airlock_model_info result)",
                               path=str(path), rule="report-input-kind")
    return doc


def _from_module(doc: dict[str, Any]) -> dict[str, Any]:
    """A host's registered ``airlock_model_info`` result with ``verify: true`` (playbooks/verify.yml)
    as the compliance report it wraps."""
    items = doc.get("drift_items") if isinstance(doc.get("drift_items"), list) else []
    return {"ok": not items and not doc.get("failed"), "models": doc.get("verify") or {}, "drift": items,
            "warnings": doc.get("verify_warnings") or [], "audit_head": doc.get("audit_head"),
            "sequence": doc.get("sequence"), "signatures_checked": doc.get("signatures_checked")}


def _s(v: Any) -> str | None:
    return None if v is None else str(v)


def _from_compliance(host: str, doc: dict[str, Any]) -> HostState:
    models: dict[str, ModelState] = {}
    for name, rep in (doc.get("models") or {}).items():
        ms = ModelState()
        for v in rep.get("versions") or [] if isinstance(rep, dict) else []:
            if not isinstance(v, dict):
                continue
            ms.versions[str(v.get("version"))] = str(v.get("state"))
            if v.get("state") == "active":
                ms.active, ms.bundle_id = _s(v.get("version")), _s(v.get("manifest"))
            elif v.get("state") == "previous":
                ms.previous = _s(v.get("version"))
        models[str(name)] = ms
    head: dict[str, Any] = doc["audit_head"] if isinstance(doc.get("audit_head"), dict) else {}
    seq: dict[str, Any] = doc["sequence"] if isinstance(doc.get("sequence"), dict) else {}
    return HostState(host=host, ok=bool(doc.get("ok")), result="ok" if doc.get("ok") else "drift",
                     models=models, drift=[d for d in doc.get("drift") or [] if isinstance(d, dict)],
                     warnings=[str(w) for w in doc.get("warnings") or []],
                     audit_head=f"{head.get('seq')}:{head.get('hash')}" if head else None,
                     sequence=seq.get("signed") if isinstance(seq.get("signed"), int) else None,
                     signatures_checked=bool(doc.get("signatures_checked")))


def _from_fleet(doc: dict[str, Any]) -> list[HostState]:
    out = []
    for h in doc.get("hosts") or []:
        if not isinstance(h, dict):
            continue
        drift = [d for d in h.get("drift") or [] if isinstance(d, dict)]
        out.append(HostState(host=str(h.get("host")), ok=not drift and h.get("result") in ("ok", "changed"),
                             result=_s(h.get("result")), drift=drift,
                             warnings=[str(w) for w in h.get("warnings") or []],
                             last_update=f"{h['from']} -> {h['to']}" if h.get("to") else None))
    return out


def load_hosts(specs: list[str]) -> list[HostState]:
    """Each spec: ``FILE`` (a fleet report, or a single host named after the file) or ``HOST=FILE``.
    A host seen twice is merged: the compliance report's models, the fleet's result and drift."""
    hosts: dict[str, HostState] = {}
    for spec in specs:
        name, sep, file = spec.partition("=")
        path = Path(file if sep else spec)
        doc = _read(path)
        if "hosts" in doc:
            found = _from_fleet(doc)
        else:
            compliance = doc if "models" in doc else _from_module(doc)
            found = [_from_compliance(name if sep else path.stem, compliance)]
        for h in found:
            old = hosts.get(h.host)
            if old is None:
                hosts[h.host] = h
                continue
            old.models = old.models or h.models
            old.ok = old.ok and h.ok
            old.drift.extend(d for d in h.drift if d not in old.drift)
            old.warnings.extend(w for w in h.warnings if w not in old.warnings)
            for attr in ("audit_head", "sequence", "signatures_checked", "last_update", "result"):
                if getattr(old, attr) is None:
                    setattr(old, attr, getattr(h, attr))
    return [hosts[k] for k in sorted(hosts)]


def twin(hosts: list[HostState], generated: datetime | None = None) -> dict[str, Any]:
    """The JSON twin (what is signed): the same facts as the page."""
    when = (generated or datetime.now(UTC)).isoformat(timespec="seconds").replace("+00:00", "Z")
    versions = Counter(f"{m} {s.active}" for h in hosts for m, s in h.models.items() if s.active)
    return {"schema": SCHEMA, "generated": when,
            "summary": {"hosts": len(hosts), "hosts_ok": sum(h.ok for h in hosts),
                        "drift_items": sum(len(h.drift) for h in hosts),
                        "active_versions": dict(sorted(versions.items()))},
            "hosts": [asdict(h) for h in hosts]}


_CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#1d2330}h1{font-size:1.5em}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccd;padding:4px 8px;text-align:left;
vertical-align:top}th{background:#eef}.ok{background:#e3f6e3}.bad{background:#fbe3e3}.warn{color:#8a5a00}
code{font-size:12px;word-break:break-all}
.cards span{display:inline-block;margin-right:1.5em;font-size:1.2em}"""


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _chart(active: dict[str, int]) -> str:
    """Horizontal bars: hosts per (model, active version)."""
    if not active:
        return "<p>No active versions reported.</p>"
    top, bar_h, width = max(active.values()), 22, 360
    rows = []
    for i, (label, n) in enumerate(active.items()):
        y = i * (bar_h + 6)
        w = max(2, int(width * n / top))
        rows.append(f'<text x="0" y="{y + 16}">{_e(label)}</text>'
                    f'<rect x="200" y="{y}" width="{w}" height="{bar_h}" fill="#4a78c2"/>'
                    f'<text x="{206 + w}" y="{y + 16}">{n}</text>')
    h = len(active) * (bar_h + 6)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" role="img" '
            f'aria-label="Active versions across the fleet" width="{200 + width + 40}" height="{h}" '
            f'font-size="12">{"".join(rows)}</svg>')


def _result(result: str | None) -> str:
    """The fleet run's own result when it says more than OK/DRIFT (failed, unreachable...)."""
    return "" if result in (None, "ok", "drift", "changed") else f" ({_e(result)})"


def render_html(doc: dict[str, Any]) -> str:
    hosts, summ = doc["hosts"], doc["summary"]
    models = sorted({m for h in hosts for m in h["models"]})
    grid = ["<tr><th>Host</th><th>Status</th>" + "".join(f"<th>{_e(m)}</th>" for m in models) +
            "<th>Audit head</th><th>Signatures</th><th>Last update</th></tr>"]
    for h in hosts:
        cells = []
        for m in models:
            s = h["models"].get(m)
            others = ", ".join(f"{v} {st}" for v, st in s["versions"].items() if st != "active") if s else ""
            cells.append("<td>" + (f"<b>{_e(s['active'] or 'none active')}</b> ({_e(others or 'no other')})"
                                   f"<br><code>{_e(s['bundle_id'])}</code>" if s else "-") + "</td>")
        sig = {True: "checked", False: '<span class="warn">NOT checked</span>',
               None: "-"}[h["signatures_checked"]]
        grid.append(f'<tr class="{"ok" if h["ok"] else "bad"}"><td>{_e(h["host"])}</td>'
                    f'<td>{"OK" if h["ok"] else "DRIFT"}{_result(h["result"])}</td>{"".join(cells)}'
                    f"<td><code>{_e(h['audit_head'] or '-')}</code></td><td>{sig}</td>"
                    f"<td>{_e(h['last_update'] or '-')}</td></tr>")
    drift = ["<tr><th>Host</th><th>Model</th><th>Version</th><th>Rule</th><th>Path</th><th>Expected</th>"
             "<th>Found</th></tr>"]
    for h in hosts:
        for d in h["drift"]:
            drift.append(f"<tr class=\"bad\"><td>{_e(h['host'])}</td><td>{_e(d.get('model'))}</td>"
                         f"<td>{_e(d.get('version'))}</td><td>{_e(d.get('rule'))}</td>"
                         f"<td><code>{_e(d.get('path'))}</code></td>"
                         f"<td><code>{_e(d.get('expected'))}</code></td>"
                         f"<td><code>{_e(d.get('found'))}</code></td></tr>")
    warnings = "".join(f"<li class=\"warn\">{_e(h['host'])}: {_e(w)}</li>"
                       for h in hosts for w in h["warnings"])
    drift_html = f"<table>{''.join(drift)}</table>" if len(drift) > 1 else "<p>No drift.</p>"
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" "
            "content=\"default-src 'none'; style-src 'unsafe-inline'\">"
            f"<title>Airlock fleet report {_e(doc['generated'])}</title><style>{_CSS}</style></head><body>"
            f"<h1>Airlock fleet report</h1><p>Generated {_e(doc['generated'])}; the signed JSON twin "
            f"<code>{JSON_NAME}</code> (+ <code>.asc</code>) holds the same facts.</p>"
            f"<div class=\"cards\"><span id=\"hosts-ok\">{summ['hosts_ok']}/{summ['hosts']} hosts OK</span>"
            f"<span id=\"drift-count\">{summ['drift_items']} drift item(s)</span></div>"
            f"<h2>Active versions across the fleet</h2>{_chart(summ['active_versions'])}"
            f"<h2>Hosts</h2><table id=\"hosts\">{''.join(grid)}</table>"
            f"<h2>Drift</h2>{drift_html}"
            + (f"<h2>Warnings</h2><ul>{warnings}</ul>" if warnings else "") + "</body></html>\n")


@dataclass
class ReportFiles:
    html: Path
    json: Path
    signature: Path | None


def write_report(hosts: list[HostState], out_dir: Path, *, signer: str | None = None,
                 gnupghome: Path | None = None, passphrase_file: Path | None = None) -> ReportFiles:
    """Write the page and its JSON twin into ``out_dir``; with ``signer`` also ``fleet-report.json.asc``
    (signed before anything is written, so a signing failure leaves no unsigned twin)."""
    from airlock.bundle.signing import sign_bytes
    from airlock.fsutil import atomic_write_bytes

    doc = twin(hosts)
    data = (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
    sig = sign_bytes(data, signer, gnupghome=gnupghome, passphrase_file=passphrase_file) if signer else None
    out_dir.mkdir(parents=True, exist_ok=True)
    files = ReportFiles(out_dir / HTML_NAME, out_dir / JSON_NAME,
                        out_dir / f"{JSON_NAME}.asc" if sig else None)
    stale = out_dir / f"{JSON_NAME}.asc"
    if sig is None and stale.exists():
        stale.unlink()  # an old signature must not seem to vouch for a new twin
    atomic_write_bytes(files.json, data)
    if sig is not None and files.signature is not None:
        atomic_write_bytes(files.signature, sig)
    atomic_write_bytes(files.html, render_html(doc).encode())
    return files
