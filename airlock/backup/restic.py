"""The one place that runs restic (Debian package ``restic``, 0.14+): environment, password pipe,
S3 credentials, JSON progress and the mapping of restic's failures onto Airlock's exit codes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airlock import settings
from airlock.backup.password import PasswordSource
from airlock.crypto.errors import KeyProviderError, WrongKeyError
from airlock.errors import BackupError, IntegrityError, LockBusyError

Progress = Callable[[int, int], None]  # (bytes done, bytes total)
TAG = "airlock"


def restic_binary() -> str:
    found = settings.restic() or shutil.which("restic")
    if not found:
        raise BackupError("restic not found: apt-get install restic (scripts/apt-packages.txt)",
                          rule="restic-missing")
    return found


def read_s3_credentials(path: Path) -> dict[str, str]:
    """``access_key_id=...`` and ``secret_access_key=...`` lines from a private file (0600)."""
    raw = read_private_lines(path)
    env = {"access_key_id": "AWS_ACCESS_KEY_ID", "secret_access_key": "AWS_SECRET_ACCESS_KEY",
           "region": "AWS_DEFAULT_REGION"}
    out: dict[str, str] = {}
    for line in raw:
        key, sep, value = line.partition("=")
        if sep and key.strip() in env:
            out[env[key.strip()]] = value.strip()
    if "AWS_ACCESS_KEY_ID" not in out or "AWS_SECRET_ACCESS_KEY" not in out:
        raise KeyProviderError("S3 credentials file needs access_key_id= and secret_access_key= lines",
                               path=str(path), rule="backup-s3-credentials")
    return out


def read_private_lines(path: Path) -> list[str]:
    from airlock.crypto.providers.base import check_private

    if not path.is_file():
        raise KeyProviderError("S3 credentials file not found", path=str(path))
    check_private(path, "S3 credentials file", secret=True)
    return [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


@dataclass
class Restic:
    """A restic repository (a local path, ``s3:http(s)://host/bucket``, ``rest:...``) and how to open it."""

    repo: str
    password: PasswordSource
    s3_credentials: Path | None = None
    cache_dir: Path | None = None
    _password: bytes | None = field(default=None, repr=False)

    def _secret(self) -> bytes:
        if self._password is None:
            self._password = self.password.read()
        return self._password

    def check_secrets(self) -> None:
        """Read (and check the modes of) every secret now, before anything is written."""
        self._secret()
        if self.s3_credentials is not None:
            read_s3_credentials(self.s3_credentials)

    @contextlib.contextmanager
    def _env(self) -> Iterator[tuple[dict[str, str], int]]:
        r, w = os.pipe()
        try:
            os.write(w, self._secret() + b"\n")  # a pipe holds 64 KiB; the password is at most 4 KiB
            os.close(w)
            w = -1
            env = {k: v for k, v in os.environ.items()
                   if not k.startswith(("RESTIC_", "AWS_"))}  # nothing inherited decides for us
            env.update({"RESTIC_REPOSITORY": self.repo, "RESTIC_PASSWORD_FILE": f"/dev/fd/{r}",
                        "RESTIC_PROGRESS_FPS": "2"})
            if self.cache_dir is not None:
                env["RESTIC_CACHE_DIR"] = str(self.cache_dir)
            if self.s3_credentials is not None:
                env.update(read_s3_credentials(self.s3_credentials))
            yield env, r
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)

    def run(self, *args: str, cwd: Path | None = None, progress: Progress | None = None,
            ok_codes: tuple[int, ...] = (0,), timeout: float | None = None) -> list[dict[str, Any]]:
        """Run ``restic --json ARGS``; return its JSON messages (status lines go to ``progress``).
        A failure raises the Airlock error that fits restic's message."""
        cmd = [restic_binary(), "--json", *args]
        with self._env() as (env, fd):
            proc = subprocess.Popen(cmd, cwd=cwd, env=env, pass_fds=(fd,), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            messages: list[dict[str, Any]] = []
            assert proc.stdout is not None and proc.stderr is not None
            try:
                for line in proc.stdout:
                    msg = _json(line)
                    if msg is None:
                        messages.append({"message_type": "text", "text": line.rstrip("\n")})
                    elif msg.get("message_type") == "status":
                        if progress is not None:
                            progress(int(msg.get("bytes_done") or 0), int(msg.get("total_bytes") or 0))
                    else:
                        messages.append(msg)
                stderr = proc.stderr.read()
                rc = proc.wait(timeout=timeout)
            except BaseException:
                proc.kill()
                proc.wait()
                raise
        if rc not in ok_codes:
            raise classify(rc, stderr, self.repo, args[0] if args else "")
        return messages

    def is_initialized(self) -> bool:
        try:
            self.run("cat", "config")
        except BackupError as exc:
            if exc.rule == "backup-no-repository":
                return False
            raise
        return True

    def init(self) -> None:
        self.run("init")


def _json(line: str) -> dict[str, Any] | None:
    line = line.strip()
    if not line.startswith(("{", "[")):
        return None
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else {"message_type": "list", "items": value}


def classify(rc: int, stderr: str, repo: str, verb: str) -> Exception:
    """restic's exit status and last words -> one Airlock error with a remedy."""
    text = " ".join(stderr.split())[-600:]
    low = text.lower()
    if "wrong password" in low or "no key found" in low:
        return WrongKeyError(f"{repo}: the restic password does not open this backup repository",
                             path=repo, rule="backup-password")
    if "ciphertext verification failed" in low or "repository contains errors" in low or (
            "pack" in low and ("invalid" in low or "does not match" in low)) or "hash mismatch" in low:
        return IntegrityError(f"{repo}: the backup repository is damaged or was tampered with "
                              f"(restic {verb}: {text})", path=repo, rule="backup-integrity")
    if "is there a repository at the following location" in low or "config file does not exist" in low \
            or "unable to open config file" in low:
        return BackupError(f"{repo}: no restic repository there (airlock backup create initialises one)",
                           path=repo, rule="backup-no-repository")
    if "repository is already locked" in low or "unable to create lock" in low:
        return LockBusyError(f"{repo}: the backup repository is locked by another restic run ({text}); "
                             "wait, or remove a stale lock with restic unlock", path=repo, rule="backup-lock")
    if "no matching id found" in low or "no snapshot found" in low:
        return BackupError(f"{repo}: no such snapshot ({text})", path=repo, rule="backup-snapshot")
    return BackupError(f"{repo}: restic {verb} failed (exit {rc}): {text or 'no message'}", path=repo,
                       rule="backup-restic")
