"""`make demo`: build a signed bundle of the real all-MiniLM-L6-v2, install it on the embedded local
fleet (three hosts, each with its own repository under demo-out/fleet/), serve it from local-a with a
real tritonserver, roll out a delta bundle to the fine-tuned v1.1 in serial batches while a client
keeps sending requests, reload local-a's Triton through the signed golden gate, verify, roll one
host back.

Every step runs the real ``airlock`` command a user would type, and prints it first."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from airlock.demo.keys import ensure_demo_key, export_public_key
from airlock.fixtures import ensure_minilm_pair
from airlock.fsutil import rmtree_writable

console = Console()
PROJECT = Path(__file__).resolve().parents[2]


def _tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


@dataclass
class Client:
    """Requests to local-a's Triton, back to back, while the fleet is updated and reloaded."""

    url: str
    ok: int = 0
    failed: int = 0
    versions: dict[str, int] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def answer(self) -> tuple[str, list[float]]:
        import numpy as np

        from airlock.serving.client import TritonClient
        from airlock.serving.golden import DEFAULT_INPUT_IDS

        r = TritonClient(self.url).infer("minilm", {"INPUT_IDS": np.asarray(DEFAULT_INPUT_IDS[:1])})
        return str(r.model_version), [round(float(x), 4) for x in r["EMBEDDING"][0][:4]]

    def run(self) -> None:
        from airlock.errors import AirlockError

        while not self.stop.wait(0.05):
            try:
                version, _ = self.answer()
                self.ok += 1
                self.versions[version] = self.versions.get(version, 0) + 1
            except AirlockError:
                self.failed += 1


class Demo:
    def __init__(self, out: Path, inventory: Path) -> None:
        self.out = out
        self.inventory = inventory
        self.env = dict(os.environ)
        self.env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{self.env.get('PATH', '')}"
        self.step_no = 0
        self.started = time.monotonic()
        self.grpc_url = ""  # local-a's Triton, once serve() started it

    def step(self, title: str) -> None:
        self.step_no += 1
        console.rule(f"[bold]{self.step_no}. {title}")

    def airlock(self, *args: str, want_json: bool = False) -> Any:
        cmd = ["airlock", *args]
        console.print(f"[dim]$[/] {shlex.join(cmd)}", highlight=False)
        proc = subprocess.run(cmd, env=self.env, cwd=PROJECT, text=True,
                              stdout=subprocess.PIPE if want_json else None)
        if proc.returncode != 0:
            console.print(f"[bold red]demo failed:[/] `{shlex.join(cmd)}` exited {proc.returncode}")
            raise SystemExit(proc.returncode)
        return json.loads(proc.stdout) if want_json else None

    @staticmethod
    def _ready(client: Any) -> bool:
        from airlock.serving.errors import ServingError

        try:
            return bool(client.model_ready("minilm"))
        except ServingError:  # not up yet
            return False

    def serve(self, out: Path) -> tuple[Client, subprocess.Popen[bytes]]:
        """Triton for local-a under Airlock's supervisor (restores the verified current version),
        model control behind a key; a client thread sending requests from here on."""
        from airlock.serving.client import TritonClient
        from airlock.serving.server import free_port

        self.step("Serve v1.0.0 from local-a with a real tritonserver (supervised; model control "
                  "needs a key)")
        triton = out / "triton"
        if triton.exists():
            rmtree_writable(triton)
        (triton / "models").mkdir(parents=True)
        self.airlock("serve", "control-key", str(triton / "control.key"))
        http, grpc, metrics = free_port(), free_port(), free_port()
        self.grpc_url = f"127.0.0.1:{grpc}"
        cmd = [sys.executable, "-m", "airlock.serving.server", "supervise", "--model-repository",
               str(triton / "models"), "--workdir", str(triton / "work"), "--http-port", str(http),
               "--grpc-port", str(grpc), "--metrics-port", str(metrics),
               "--airlock-root", str(out / "fleet" / "local-a"),
               "--control-key-file", str(triton / "control.key")]
        console.print(f"[dim]$[/] {shlex.join(cmd)} &", highlight=False)
        (triton / "work").mkdir()
        with open(triton / "work" / "supervisor.log", "ab") as log:
            supervisor = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                          start_new_session=True)
        client = Client(f"http://127.0.0.1:{http}")
        deadline = time.monotonic() + 300
        while not self._ready(TritonClient(client.url, timeout=5)):
            if time.monotonic() > deadline or supervisor.poll() is not None:
                supervisor.terminate()
                supervisor.wait(60)
                console.print(f"[bold red]demo failed:[/] Triton did not serve minilm; see {triton / 'work'}")
                raise SystemExit(50)
            time.sleep(0.5)
        version, values = client.answer()
        console.print(f"answer from Triton version {version} (v1.0.0): EMBEDDING[0][:4] = {values}")
        threading.Thread(target=client.run, daemon=True).start()
        return client, supervisor

    def run(self) -> None:
        out = self.out
        self.step("Fixtures: the real all-MiniLM-L6-v2 (v1.0.0) and a real torch fine-tune (v1.1.0)")
        pair = ensure_minilm_pair("fp32")
        console.print(f"v1.0.0: {pair.old} ({_mb(_tree_size(pair.old))})\nv1.1.0: {pair.new}")
        self.env["AIRLOCK_MINILM_OLD"] = str(pair.old)
        self.env["AIRLOCK_MINILM_NEW"] = str(pair.new)

        self.step("Release key (throwaway, for the demo; a real one lives offline)")
        gnupghome = out / "gnupg"
        fpr = ensure_demo_key(gnupghome)
        keyring = export_public_key(gnupghome, fpr, out / "release.asc")
        console.print(f"signer {fpr}; public key for the field: {keyring}")

        for stale in ("bundles", "fleet", "control"):  # control: the audit-head anchors of the old fleet
            if (out / stale).exists():
                rmtree_writable(out / stale)
        bundles = out / "bundles"
        bundles.mkdir(parents=True)
        full, delta = bundles / "minilm-1.0.0", bundles / "minilm-1.1.0-delta"

        self.step("Build and sign the full bundle and the delta bundle (with v1.1.0's golden record)")
        golden = out / "golden-1.1.0.json"
        self.airlock("serve", "golden", str(pair.new), "-o", str(golden))
        import yaml

        spec = yaml.safe_load((PROJECT / "bundle" / "demo-delta.yml").read_text())
        spec["models"][0]["golden"] = json.loads(golden.read_text())  # signed with the manifest
        delta_spec = out / "demo-delta.yml"
        delta_spec.write_text(yaml.safe_dump(spec, sort_keys=False))
        sign = ["--signer", fpr, "--gnupghome", str(gnupghome), "--no-progress"]
        self.airlock("bundle", "build", "bundle/demo-full.yml", "-o", str(full), *sign)
        self.airlock("bundle", "build", str(delta_spec), "-o", str(delta), *sign)
        # the fleet's repositories live under --out (the local inventory's default is demo-out/fleet)
        trust = ["--trust", fpr, "--keyring", str(keyring)]
        fleet = ["-e", "airlock_fleet_dir=" + json.dumps(str(out / "fleet"))]

        self.step("Verify both bundles against the pinned signer (what a field engineer does first)")
        self.airlock("bundle", "verify", str(full), *trust)
        self.airlock("bundle", "verify", str(delta), *trust)

        self.step("Install v1.0.0 on the local fleet (3 hosts)")
        self.airlock("install", "--bundle", str(full), "-i", str(self.inventory), *trust, *fleet)

        client, supervisor = self.serve(out)
        try:
            self.step("Rolling update to v1.1.0 with the delta bundle: batches [1, 25%, 100%], health gate "
                      "(the client keeps sending requests to local-a's Triton)")
            self.airlock("update", "--bundle", str(delta), "-i", str(self.inventory), *trust, *fleet)

            self.step("Reload local-a's Triton to v1.1.0 through the signed golden gate, under traffic")
            triton = out / "triton"
            self.airlock("serve", "reload", "minilm", "--root", str(out / "fleet" / "local-a"),
                         "--triton-repo", str(triton / "models"), "--url", client.url,
                         "--grpc-url", self.grpc_url, "--control-key-file", str(triton / "control.key"),
                         "--golden", str(delta / "MANIFEST.json"))
            time.sleep(2.0)
            version, values = client.answer()
            console.print(f"answer from Triton version {version} (v1.1.0): EMBEDDING[0][:4] = {values}")
            client.stop.set()
            console.print(f"client requests during the update and the reload: {client.ok} answered "
                          f"(by Triton version: {client.versions}), [bold]{client.failed} failed[/]")
        finally:
            client.stop.set()
            supervisor.terminate()
            supervisor.wait(60)

        self.step("Compliance check: verify every host (hashes, modes, signatures, audit chain)")
        self.airlock("verify", "-i", str(self.inventory), *trust, *fleet,
                     "-e", 'airlock_expected_versions={"minilm": "1.1.0"}')

        self.step("Roll one host back to v1.0.0")
        self.airlock("rollback", "-i", str(self.inventory), "--limit", "local-c", *fleet)

        self.step("Where every host stands")
        table = Table(title="Fleet after the demo")
        for col in ("host", "active", "versions", "audit records"):
            table.add_column(col)
        for host_root in sorted((out / "fleet").iterdir()):
            if not host_root.is_dir():
                continue
            data = self.airlock("model", "list", "--root", str(host_root), "--json", want_json=True) or {}
            for entry in data.get("models", []) if isinstance(data, dict) else []:
                log = host_root / "model_repo" / "update_history.log"
                records = len(log.read_text().splitlines()) if log.exists() else 0
                versions = ", ".join(f"{v['version']} ({v['state']})" for v in entry.get("versions", []))
                active = f"{entry['model']} {entry.get('active')}"
                table.add_row(host_root.name, active, versions, str(records))
        console.print(table)
        full_size, delta_size = _tree_size(full), _tree_size(delta)
        console.print(f"full bundle {_mb(full_size)}; delta bundle {_mb(delta_size)} "
                      f"({100 * delta_size / full_size:.1f}% of the full bundle)")
        page = self.report(out, trust, fpr, gnupghome)
        console.print(f"[bold green]demo complete[/] in {time.monotonic() - self.started:.0f} s; "
                      f"everything is under {out}")
        console.print(f"fleet report: {page} (signed JSON twin beside it)", highlight=False)

    def report(self, out: Path, trust: list[str], fpr: str, gnupghome: Path) -> Path:
        """Each host's read-only compliance report, then ``airlock report``: one self-contained HTML
        page and its JSON twin, signed (here with the demo key; a site has its own key)."""
        self.step("Fleet report: a self-contained HTML page and a signed JSON twin")
        reports = out / "report"
        reports.mkdir(exist_ok=True)
        inputs = []
        for host_root in sorted(p for p in (out / "fleet").iterdir() if (p / "model_repo").is_dir()):
            data = self.airlock("model", "verify", "--root", str(host_root), *trust, "--json", want_json=True)
            verified = reports / f"{host_root.name}.verify.json"
            verified.write_text(json.dumps(data))
            inputs.append(f"{host_root.name}={verified}")
        self.airlock("report", *inputs, "--out", str(reports), "--sign", fpr, "--gnupghome", str(gnupghome))
        return reports / "fleet-report.html"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m airlock.demo", description=__doc__)
    parser.add_argument("--out", type=Path, default=PROJECT / "demo-out",
                        help="work directory (default: demo-out/ in the project)")
    parser.add_argument("-i", "--inventory", type=Path, default=PROJECT / "inventories" / "local",
                        help="the fleet (default: the embedded local fleet of three hosts)")
    args = parser.parse_args(argv)
    if shutil.which("gpg") is None:
        parser.error("gpg not found: apt-get install gnupg (make demo does it when run as root)")
    args.out.mkdir(parents=True, exist_ok=True)
    Demo(args.out.resolve(), args.inventory.resolve()).run()


if __name__ == "__main__":
    main()
