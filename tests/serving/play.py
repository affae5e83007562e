"""Serving test helpers: role templates rendered without Ansible, playbooks run on localhost, a
throwaway PKI, HAProxy applied by roles/load_balancer (moved here from the test modules that other
modules imported them from)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import jinja2
import yaml

from airlock.serving.haproxy import HAProxy
from airlock.serving.server import free_port
from tests.support import REPO, ansible_playbook, require_tool

ROLES = REPO / "roles"
PLAYBOOKS = REPO / "playbooks"


def render_template(role: str, template: str, **extra: object) -> str:
    defaults = yaml.safe_load((ROLES / role / "defaults" / "main.yml").read_text())
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["default"] = lambda v, d="", boolean=False: (
        d if isinstance(v, jinja2.Undefined) or v is None or (boolean and not v) else v)
    env.filters["dirname"] = os.path.dirname
    ctx = {**defaults, **extra}

    def pending(v: object) -> bool:
        return isinstance(v, str) and "{{" in v

    # defaults may reference other variables: render each once the variables it names are rendered
    for _ in range(5):
        ctx = {k: env.from_string(v).render(ctx)
               if pending(v) and not any(pending(ctx.get(n)) for n in re.findall(r"[a-z_]+", v)) else v
               for k, v in ctx.items()}
    return env.from_string((ROLES / role / "templates" / template).read_text()).render(ctx)


def write_playbook(tmp: Path, body: list[dict]) -> Path:
    path = tmp / f"play-{len(list(tmp.glob('play-*')))}.yml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def run_playbook(playbook: Path, extra: dict, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``playbook`` on localhost with ``extra`` vars (written to a temp file: the playbook may be
    one of the project's own, whose directory must stay untouched)."""
    ansible = ansible_playbook()
    env = {**os.environ, "ANSIBLE_ROLES_PATH": str(ROLES), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_HOST_KEY_CHECKING": "False", "ANSIBLE_STDOUT_CALLBACK": "default"}
    with tempfile.TemporaryDirectory(prefix="airlock-extra-") as tmp:
        vars_file = Path(tmp) / "extra.json"
        vars_file.write_text(json.dumps(extra))
        cmd = [ansible, "-i", "localhost,", "-c", "local", str(playbook), "-e", f"@{vars_file}"]
        return subprocess.run(cmd + (["--check"] if check else []), capture_output=True, text=True, env=env,
                              timeout=600, check=False)


def pki(tmp: Path) -> tuple[Path, Path, Path]:
    """A throwaway site CA and a server certificate for 127.0.0.1 signed by it (openssl)."""
    openssl = require_tool("openssl", "apt-get install openssl")
    ca_key, ca, key, csr, cert = (tmp / n for n in ("ca.key", "ca.pem", "srv.key", "srv.csr", "srv.pem"))
    run = [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
           "-keyout", str(ca_key), "-out", str(ca), "-days", "2", "-subj", "/CN=airlock test site CA"]
    subprocess.run(run, check=True, capture_output=True)
    subprocess.run([openssl, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1"],
                   check=True, capture_output=True)
    ext = tmp / "san.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    subprocess.run([openssl, "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
                    "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext)],
                   check=True, capture_output=True)
    return cert, key, ca


@contextlib.contextmanager
def haproxy_by_role(tmp: Path, servers: list[dict[str, object]], **role_vars: object
                     ) -> Iterator[tuple[HAProxy, str]]:
    """roles/load_balancer applied on localhost (process supervisor), idempotent; (runtime API, URL)."""
    port = free_port()
    extra = {"ansible_python_interpreter": sys.executable, "load_balancer_supervisor": "process",
             "load_balancer_install_apt": False, "load_balancer_config": str(tmp / "haproxy.cfg"),
             "load_balancer_socket": str(tmp / "lb" / "admin.sock"),
             "load_balancer_pidfile": str(tmp / "haproxy.pid"), "load_balancer_address": "127.0.0.1",
             "load_balancer_port": port, "load_balancer_servers": servers, **role_vars}
    play = write_playbook(tmp, [{"hosts": "all", "gather_facts": False, "roles": ["load_balancer"]}])
    first = run_playbook(play, extra)
    try:
        assert first.returncode == 0, first.stdout[-3000:]
        again = run_playbook(play, extra)
        assert again.returncode == 0 and "changed=0" in again.stdout, again.stdout[-3000:]
        scheme = "https" if role_vars.get("load_balancer_tls_cert") else "http"
        yield HAProxy(tmp / "lb" / "admin.sock"), f"{scheme}://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, ValueError):
            os.kill(int((tmp / "haproxy.pid").read_text().split()[0]), signal.SIGTERM)
