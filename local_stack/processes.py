"""Detached processes with pid files: start, find, stop. Shared by every server of the local stack."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil


class StackError(RuntimeError):
    """A failure the user can act on; its message is the one line the CLI prints."""


class PortTakenError(StackError):
    """A server's port is held by a process that is not the platform's own."""


@dataclass(frozen=True)
class PidFile:
    """``<pid> <create_time>``: the create time guards against a recycled pid."""

    path: Path

    def write(self, pid: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(f"{pid} {psutil.Process(pid).create_time()}\n")

    def running_pid(self) -> int | None:
        try:
            pid_text, created_text = self.path.read_text().split()
            process = psutil.Process(int(pid_text))
            if abs(process.create_time() - float(created_text)) > 0.01 or process.status() == psutil.STATUS_ZOMBIE:
                return None
            return process.pid
        except (FileNotFoundError, ValueError, psutil.NoSuchProcess, psutil.AccessDenied):
            return None

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def start_detached(
    command: Sequence[str],
    log_path: Path,
    pid_file: PidFile,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> int:
    """Starts ``command`` in its own session (signals reach its whole tree), output to a rotated log."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    wrapped = [sys.executable, "-m", "local_stack.rotating_log", str(log_path), "--", *command]
    process = subprocess.Popen(
        wrapped, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=dict(env) if env is not None else None, cwd=cwd, start_new_session=True,
    )
    pid_file.write(process.pid)
    return process.pid


def stop_process_group(pid: int, timeout: float = 20.0) -> None:
    """SIGTERM to the process group, then SIGKILL to whatever is left after ``timeout`` seconds."""
    try:
        members = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    except PermissionError:
        os.kill(pid, signal.SIGTERM)
    _, alive = psutil.wait_procs(members, timeout=timeout)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def require_free_port(host: str, port: int, variable: str, service: str) -> None:
    """Fails with one line naming the port and the variable to change."""
    if not port_is_free(host, port):
        raise PortTakenError(
            f"{service} cannot start: port {port} on {host} is already in use by another process; "
            f"set {variable} to a free port"
        )


def wait_until(predicate, timeout: float, interval: float = 0.25) -> bool:
    """Polls ``predicate`` until it returns true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free now (for tests and ephemeral stacks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""
