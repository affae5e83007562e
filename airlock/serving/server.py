"""Start and stop a local ``tritonserver`` from the ``nvidia-pytriton`` wheel (docs/serving.md).

The wheel ships the server binary, its shared libraries and the python backend, but the python
backend's stub lives in ``python_backend_stubs/<py>/``. ``prepare_backends`` builds a private backend
directory (copy of ``backends/`` plus the stub) so site-packages is never mutated. Used by the tests,
the benchmark and the ``triton_server`` role (``python -m airlock.serving.server run ...`` in the
foreground under systemd, or ``... supervise ...``: Airlock's own supervisor for hosts without
systemd, which restarts tritonserver when it dies and runs the restore hook after every start).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from airlock.serving.auth import server_args
from airlock.serving.client import TritonClient
from airlock.serving.errors import ServingError

STUB_PYTHON = "3.11"  # Debian bookworm's libpython, which the stub embeds


@dataclass(frozen=True)
class TritonInstall:
    """Where the wheel's server pieces are."""

    root: Path  # .../site-packages/pytriton/tritonserver

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @property
    def libs(self) -> Path:
        return self.root.parent.parent / "nvidia_pytriton.libs"

    @property
    def backends(self) -> Path:
        return self.root / "backends"

    def stub(self, python: str = STUB_PYTHON) -> Path:
        return self.root / "python_backend_stubs" / python / "triton_python_backend_stub"


def find_install() -> TritonInstall:
    """Locate the tritonserver shipped in the nvidia-pytriton wheel (without importing pytriton)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServingError("nvidia-pytriton is not installed; pip install 'nvidia-pytriton==0.7.0'",
                           rule="triton-missing")
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    inst = TritonInstall(root)
    if not inst.binary.is_file():
        raise ServingError(f"{inst.binary}: tritonserver binary missing from the nvidia-pytriton wheel",
                           path=str(inst.binary), rule="triton-missing")
    return inst


def _same_file(a: Path, b: Path) -> bool:
    return b.is_file() and a.stat().st_size == b.stat().st_size and a.stat().st_mtime <= b.stat().st_mtime


def prepare_backends(dest: Path, install: TritonInstall | None = None) -> Path:
    """Idempotently build ``dest`` = the wheel's backends + the python backend stub; return ``dest``."""
    inst = install or find_install()
    stub = inst.stub()
    if not stub.is_file():
        raise ServingError(f"{stub}: python backend stub for Python {STUB_PYTHON} missing", path=str(stub),
                           rule="triton-missing")
    copies = [(src, dest / src.relative_to(inst.backends)) for src in inst.backends.rglob("*")
              if src.is_file() and "__pycache__" not in src.parts]
    copies.append((stub, dest / "python" / stub.name))
    for src, dst in copies:
        if _same_file(src, dst):
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(dst.name + ".tmp")
        shutil.copy2(src, tmp)
        os.replace(tmp, dst)
    return dest


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class ServerConfig:
    model_repository: Path
    workdir: Path
    address: str = "127.0.0.1"
    http_port: int = 0
    grpc_port: int = 0
    metrics_port: int = 0
    threads: int = 1  # numpy/BLAS threads per python model (2-core machines)
    extra_args: list[str] = field(default_factory=list)
    control_key_file: Path | None = None  # Triton's restricted APIs (airlock.serving.auth)
    grpc_tls: tuple[Path, Path, Path] | None = None  # GRPC over TLS: (server cert, key, CA) PEM files
    user: str | None = None  # run tritonserver as this dedicated user (``as_user``), not the caller

    def resolved(self) -> ServerConfig:
        """Fill port 0 with free ports."""
        addr = self.address
        return ServerConfig(self.model_repository, self.workdir, addr,
                            self.http_port or free_port(addr), self.grpc_port or free_port(addr),
                            self.metrics_port or free_port(addr), self.threads, list(self.extra_args),
                            self.control_key_file, self.grpc_tls, self.user)

    @property
    def grpc_ca(self) -> str | None:
        return str(self.grpc_tls[2]) if self.grpc_tls else None

    def control_key(self) -> str | None:
        from airlock.serving.auth import read_control_key

        return read_control_key(self.control_key_file) if self.control_key_file else None


def tls_args(cfg: ServerConfig) -> list[str]:
    """GRPC over TLS (Triton 2.51's HTTP endpoint has no TLS: keep it on localhost or behind HAProxy)."""
    if cfg.grpc_tls is None:
        return []
    cert, key, _ = cfg.grpc_tls
    return ["--grpc-use-ssl=true", f"--grpc-server-cert={cert}", f"--grpc-server-key={key}"]


def command(cfg: ServerConfig, install: TritonInstall, backends: Path) -> list[str]:
    return [
        str(install.binary),
        f"--model-repository={cfg.model_repository}",
        "--model-control-mode=explicit",
        f"--backend-directory={backends}",
        f"--http-address={cfg.address}", f"--http-port={cfg.http_port}",
        f"--grpc-address={cfg.address}", f"--grpc-port={cfg.grpc_port}",
        "--allow-metrics=true", "--allow-gpu-metrics=false", "--allow-cpu-metrics=true",
        f"--metrics-address={cfg.address}", f"--metrics-port={cfg.metrics_port}",
        "--strict-readiness=true", "--exit-timeout-secs=10", "--log-verbose=0",
        *(server_args(key) if (key := cfg.control_key()) else []),
        *tls_args(cfg),
        *cfg.extra_args,
    ]


# The one capability the dedicated Triton user keeps: read and traverse the repository's 0700
# version directories (owned by the repository's service user) without any right to write there.
READ_CAPABILITY = "dac_read_search"


def as_user(argv: list[str], user: str) -> list[str]:
    """``argv`` run as ``user`` (a name, or a numeric uid with the same gid) through util-linux
    ``setpriv``: its own uid/gid, no supplementary groups, and only CAP_DAC_READ_SEARCH (ambient), as
    the systemd unit does with User= and AmbientCapabilities= (roles/triton_server)."""
    import pwd

    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        uid, gid = entry.pw_uid, entry.pw_gid
    except KeyError:
        if not user.isdigit():
            raise ServingError(f"{user}: no such user to run tritonserver as", rule="triton-user") from None
        uid = gid = int(user)
    if uid == 0:
        raise ServingError(f"{user}: the dedicated Triton user must not be root", rule="triton-user")
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise ServingError("setpriv (util-linux) is needed to run tritonserver as another user",
                           rule="triton-user")
    return [setpriv, f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
            f"--inh-caps=-all,+{READ_CAPABILITY}", f"--ambient-caps=-all,+{READ_CAPABILITY}",
            f"--bounding-set=-all,+{READ_CAPABILITY}", "--", *argv]


def environment(install: TritonInstall, threads: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PYTHON") and k not in ("VIRTUAL_ENV", "LD_PRELOAD")}
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(install.libs), env.get("LD_LIBRARY_PATH")) if p)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    return env


class TritonServer:
    """A tritonserver child process; use as a context manager."""

    def __init__(self, cfg: ServerConfig, *, install: TritonInstall | None = None) -> None:
        self.install = install or find_install()
        self.cfg = cfg.resolved()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.cfg.workdir / "tritonserver.log"

    @property
    def url(self) -> str:
        return f"http://{self.cfg.address}:{self.cfg.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.cfg.address}:{self.cfg.metrics_port}/metrics"

    @property
    def grpc_url(self) -> str:
        return f"{self.cfg.address}:{self.cfg.grpc_port}"

    def client(self, timeout: float = 30.0, *, grpc_control: bool = True) -> TritonClient:
        """A client for this server; model control over GRPC unless ``grpc_control`` is False."""
        return TritonClient(self.url, timeout=timeout, grpc_url=self.grpc_url if grpc_control else None,
                            control_key=self.cfg.control_key(), grpc_ca=self.cfg.grpc_ca)

    def start(self, wait_s: float = 60.0) -> TritonServer:
        self.cfg.workdir.mkdir(parents=True, exist_ok=True)
        backends = prepare_backends(self.cfg.workdir / "backends", self.install)
        argv = command(self.cfg, self.install, backends)
        if self.cfg.user:
            argv = as_user(argv, self.cfg.user)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                         env=environment(self.install, self.cfg.threads),
                                         start_new_session=True)
        deadline = time.monotonic() + wait_s
        client = self.client(timeout=2.0)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServingError(f"tritonserver exited with {self.proc.returncode} during start-up; "
                                   f"see {self.log_path}: {self.log_tail()}", path=str(self.log_path))
            if client.live():
                return self
            time.sleep(0.2)
        self.stop()
        raise ServingError(f"tritonserver not live after {wait_s:.0f}s; see {self.log_path}",
                           path=str(self.log_path))

    def log_tail(self, n: int = 5) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, grace_s: float = 15.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        # python backend stubs are in the server's session; make sure none outlives it
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def __enter__(self) -> TritonServer:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running(model_repository: Path, workdir: Path, **kw: int | str) -> Iterator[TritonServer]:
    server = TritonServer(ServerConfig(model_repository, workdir, **kw))  # type: ignore[arg-type]
    with server:
        yield server


def local_url(address: str, port: int) -> str:
    """host:port to reach a server bound to ``address`` from this host."""
    return f"{'127.0.0.1' if address in ('0.0.0.0', '') else address}:{port}"


def _log(msg: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} airlock-supervise: {msg}", flush=True)


def supervise(cfg: ServerConfig, *, airlock_root: Path | None, models: list[str] | None = None,
              restart_delay: float = 1.0, max_delay: float = 30.0, start_timeout: float = 120.0) -> int:
    """Run tritonserver, restart it whenever it exits (kill -9, crash), and after every start run the
    restore hook (``airlock.serving.restore``) so it serves the verified ``current`` versions again.
    SIGTERM/SIGINT stop the server and return 0. The child's pid: ``<workdir>/tritonserver.child.pid``."""
    from airlock.errors import AirlockError
    from airlock.serving.restore import restore

    stopping = False
    server: TritonServer | None = None

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if server is not None and server.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                server.proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    child_pid = cfg.workdir / "tritonserver.child.pid"
    delay = restart_delay
    while not stopping:
        started = time.monotonic()
        server = TritonServer(cfg)
        try:
            server.start(wait_s=start_timeout)
        except ServingError as exc:
            _log(f"start failed: {exc}")
        else:
            assert server.proc is not None
            child_pid.write_text(f"{server.proc.pid}\n")
            _log(f"tritonserver {server.proc.pid} live")
            if airlock_root is not None and not stopping:
                client = TritonClient(server.url, grpc_url=local_url(cfg.address, cfg.grpc_port),
                                      control_key=cfg.control_key(), grpc_ca=cfg.grpc_ca)
                try:
                    report = restore(client, cfg.model_repository, airlock_root, models=models)
                    _log("restore " + json.dumps(report.as_dict(), sort_keys=True))
                except AirlockError as exc:
                    _log(f"restore failed [{exc.rule}]: {exc}")
            rc = server.proc.wait() if server.proc is not None else 0
            _log(f"tritonserver exited with {rc}")
        server.stop()
        if stopping:
            break
        delay = restart_delay if time.monotonic() - started > 60 else min(delay * 2, max_delay)
        time.sleep(delay)
    with contextlib.suppress(FileNotFoundError):
        child_pid.unlink()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m airlock.serving.server run``: tritonserver in the foreground (systemd ExecStart)."""
    ap = argparse.ArgumentParser(prog="python -m airlock.serving.server")
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="exec tritonserver in the foreground")
    run.add_argument("--model-repository", type=Path, required=True)
    run.add_argument("--workdir", type=Path, required=True, help="holds the prepared backend directory")
    run.add_argument("--address", default="127.0.0.1")
    run.add_argument("--http-port", type=int, default=8000)
    run.add_argument("--grpc-port", type=int, default=8001)
    run.add_argument("--metrics-port", type=int, default=8002)
    run.add_argument("--threads", type=int, default=1)
    run.add_argument("--control-key-file", type=Path, default=None,
                     help="restrict model control to holders of this key (mode 0600)")
    run.add_argument("--grpc-tls", type=Path, nargs=3, metavar=("CERT", "KEY", "CA"), default=None,
                     help="GRPC over TLS: server certificate, its key, and the CA clients check it with")
    sup = sub.add_parser("supervise", help="run tritonserver, restart it when it dies, restore after start")
    sup.add_argument("--model-repository", type=Path, required=True)
    sup.add_argument("--workdir", type=Path, required=True)
    sup.add_argument("--address", default="127.0.0.1")
    sup.add_argument("--http-port", type=int, default=8000)
    sup.add_argument("--grpc-port", type=int, default=8001)
    sup.add_argument("--metrics-port", type=int, default=8002)
    sup.add_argument("--threads", type=int, default=1)
    sup.add_argument("--control-key-file", type=Path, default=None,
                     help="restrict model control to holders of this key (mode 0600)")
    sup.add_argument("--grpc-tls", type=Path, nargs=3, metavar=("CERT", "KEY", "CA"), default=None,
                     help="GRPC over TLS: server certificate, its key, and the CA clients check it with")
    sup.add_argument("--airlock-root", type=Path, default=None,
                     help="restore the verified current versions of this Airlock root after every start")
    sup.add_argument("--model", action="append", default=None, help="restore only this model (repeatable)")
    sup.add_argument("--user", default=None, help="run tritonserver as this dedicated user (read-only on the "
                     "repository); the supervisor and its restore stay the caller")
    prep = sub.add_parser("prepare", help="build the backend directory only")
    prep.add_argument("--workdir", type=Path, required=True)
    args = ap.parse_args(argv)
    inst = find_install()
    if args.cmd == "prepare":
        print(prepare_backends(args.workdir / "backends", inst))
        return 0
    cfg = ServerConfig(args.model_repository, args.workdir, args.address, args.http_port, args.grpc_port,
                       args.metrics_port, args.threads, control_key_file=args.control_key_file,
                       grpc_tls=tuple(args.grpc_tls) if args.grpc_tls else None,
                       user=getattr(args, "user", None))
    if args.cmd == "supervise":
        return supervise(cfg, airlock_root=args.airlock_root, models=args.model)
    backends = prepare_backends(args.workdir / "backends", inst)
    argv_ = command(cfg, inst, backends)
    os.execve(argv_[0], argv_, environment(inst, args.threads))


def _cli(argv: list[str] | None = None) -> int:
    """``main`` with Airlock's one-line errors (a bad key file, no wheel): never a traceback."""
    from airlock.errors import AirlockError

    try:
        return main(argv)
    except AirlockError as exc:
        print(f"error [{exc.rule}] {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(_cli())
