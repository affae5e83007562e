"""A fleet of real SSH hosts on one machine: one network namespace per host, a veth pair each, and a
private sshd per namespace (own host key, pid file and authorized key; key-only auth, no PAM).

Addresses: each host gets a /30 inside 10.213.7.0/24 (root end .4k+1, namespace end .4k+2), so the
routes never overlap; the slot offset depends on the pid so two test sessions do not collide.
Teardown is by PID and ``ip netns del``. Hosts share the filesystem: give each its own root dir.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

SUBNET = "10.213.7"
SSHD = "/usr/sbin/sshd"


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


@dataclass
class Host:
    name: str
    netns: str
    ip: str
    root: Path
    confdir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Fleet:
    base: Path
    key: Path
    known_hosts: Path
    hosts: list[Host] = field(default_factory=list)
    veths: list[str] = field(default_factory=list)

    def start_sshd(self, host: Host, timeout: float = 15) -> None:
        """Start (or restart) the host's sshd and wait until it accepts TCP connections."""
        if host.running:
            return
        log = open(host.confdir / "sshd.log", "ab")  # noqa: SIM115 - owned by the child
        host.proc = subprocess.Popen(
            ["ip", "netns", "exec", host.netns, SSHD, "-f", str(host.confdir / "sshd_config"), "-D", "-e"],
            stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection((host.ip, 22), timeout=1):
                    return
            except OSError:
                if host.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"sshd for {host.name} did not come up: "
                                       f"{(host.confdir / 'sshd.log').read_text()[-2000:]}") from None
                time.sleep(0.1)

    def stop_sshd(self, host: Host) -> None:
        if host.proc is not None and host.proc.poll() is None:
            os.killpg(host.proc.pid, signal.SIGTERM)
            try:
                host.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(host.proc.pid, signal.SIGKILL)
                host.proc.wait(10)
        host.proc = None

    def inventory(self, path: Path, hostvars: dict[str, dict[str, object]] | None = None,
                  **groupvars: object) -> Path:
        """Write a YAML inventory reaching every host over SSH (group ``appliances``)."""
        ssh_args = (f"-o StrictHostKeyChecking=no -o UserKnownHostsFile={self.known_hosts} "
                    "-o ConnectTimeout=5 -o BatchMode=yes")
        extra = hostvars or {}
        hosts = {h.name: {"ansible_host": h.ip, "airlock_root": str(h.root), **extra.get(h.name, {})}
                 for h in self.hosts}
        inv = {"all": {"children": {"appliances": {"hosts": hosts}}, "vars": {
            "ansible_connection": "ssh", "ansible_user": "root",
            "ansible_ssh_private_key_file": str(self.key), "ansible_ssh_common_args": ssh_args,
            "ansible_ssh_pipelining": True, **groupvars}}}
        path.write_text(yaml.safe_dump(inv, sort_keys=False))
        return path

    def teardown(self) -> None:
        for host in self.hosts:
            self.stop_sshd(host)
            subprocess.run(["ip", "netns", "del", host.netns], capture_output=True, check=False)
        for veth in self.veths:
            subprocess.run(["ip", "link", "del", veth], capture_output=True, check=False)


def create_fleet(base: Path, count: int = 3) -> Fleet:
    """Create ``count`` namespaced SSH hosts under ``base`` (needs root, iproute2, openssh-server)."""
    base.mkdir(parents=True, exist_ok=True)
    key = base / "id_ed25519"
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "airlock-fleet-test", "-f", str(key))
    known = base / "known_hosts"
    known.touch()
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    tag = f"{os.getpid() % 100000}"
    slot = (os.getpid() % 12) * 5  # /30 blocks 0..63: room for 5 hosts per session
    fleet = Fleet(base, key, known)
    try:
        for i in range(count):
            name = f"host{i + 1}"
            netns = f"alk{tag}h{i + 1}"
            outer, inner = f"alk{tag}o{i + 1}", f"alk{tag}i{i + 1}"
            k = slot + i
            root_ip, ip = f"{SUBNET}.{4 * k + 1}", f"{SUBNET}.{4 * k + 2}"
            confdir = base / name / "sshd"
            confdir.mkdir(parents=True)
            host = Host(name, netns, ip, base / name / "root", confdir)
            host.root.mkdir(parents=True)
            _run("ip", "netns", "add", netns)
            fleet.hosts.append(host)
            _run("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
            fleet.veths.append(outer)
            _run("ip", "link", "set", inner, "netns", netns)
            _run("ip", "addr", "add", f"{root_ip}/30", "dev", outer)
            _run("ip", "link", "set", outer, "up")
            _run("ip", "netns", "exec", netns, "ip", "addr", "add", f"{ip}/30", "dev", inner)
            _run("ip", "netns", "exec", netns, "ip", "link", "set", inner, "up")
            _run("ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up")
            _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(confdir / "host_ed25519_key"))
            (confdir / "authorized_keys").write_text(Path(f"{key}.pub").read_text())
            (confdir / "sshd_config").write_text("\n".join([
                "Port 22", f"ListenAddress {ip}", f"HostKey {confdir / 'host_ed25519_key'}",
                f"PidFile {confdir / 'sshd.pid'}", "UsePAM no", "PasswordAuthentication no",
                "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
                f"AuthorizedKeysFile {confdir / 'authorized_keys'}", "StrictModes no",
                "PermitRootLogin prohibit-password", "AllowUsers root", "Subsystem sftp internal-sftp",
                "LogLevel ERROR", ""]))
            fleet.start_sshd(host)
    except BaseException:
        fleet.teardown()
        raise
    return fleet
