"""Detached processes with pid files: start, find, stop. Shared by every server of the local stack."""

from __future__ import annotations

import errno
import os
import random
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
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(f"{pid} {psutil.Process(pid).create_time()}\n")
        partial.replace(self.path)

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


SERVICE_MARKER = "CRYPTO_PLATFORM_SERVICE"
"""Environment variable set on every process the stack starts (and inherited by its children):
``<state dir>:<service>``. It finds a service's processes whatever became of its pid file or parent."""
PID_FILE_WAIT_S = 30


def service_marker(state_dir: Path, name: str) -> str:
    return f"{state_dir}:{name}"


def as_account(uid: int, gid: int) -> dict[str, object]:
    """``subprocess`` options that run a command as ``uid``:``gid`` without supplementary groups; none when
    that is this process's own user."""
    return {} if uid == os.getuid() else {"user": uid, "group": gid, "extra_groups": []}


def start_detached(
    command: Sequence[str],
    log_path: Path,
    pid_file: PidFile,
    marker: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    account: tuple[int, int] | None = None,
) -> int:
    """Starts ``command`` in its own session under the log wrapper; returns the service's own pid.

    The wrapper writes the pid of the command it runs (not its own) into ``pid_file``: the pid that
    ``make status`` shows is the one that serves, and killing it stops the service. Every file the
    service creates is private to its user (umask 077). With ``account`` (uid, gid) the command runs as
    that user while the wrapper, which writes the log and the pid file, stays this process's.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    pid_file.remove()
    user = ["--user", f"{account[0]}:{account[1]}"] if account is not None else []
    wrapped = [sys.executable, "-m", "local_stack.rotating_log", "--pid-file", str(pid_file.path), *user,
               str(log_path), "--", *command]
    wrapper = subprocess.Popen(
        wrapped, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**(env if env is not None else os.environ), SERVICE_MARKER: marker}, cwd=cwd, start_new_session=True,
        umask=0o077,
    )
    deadline = time.monotonic() + PID_FILE_WAIT_S
    while (pid := pid_file.running_pid()) is None:
        if wrapper.poll() is not None or time.monotonic() > deadline:
            wrapper.kill()
            wrapper.wait()
            raise StackError(f"{command[0]} could not be started (its log wrapper exited); read {log_path}")
        time.sleep(0.05)
    return pid


def marked_processes(marker: str, prefix: bool = False) -> list[psutil.Process]:
    """Live processes carrying ``marker`` (one service's), or any marker starting with it (``prefix``)."""
    found = []
    for process in psutil.process_iter(["environ"]):
        try:
            value = (process.info["environ"] or {}).get(SERVICE_MARKER)
            if value is None or not (value.startswith(marker) if prefix else value == marker):
                continue
            if process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def describe_processes(processes: Sequence[psutil.Process], most: int = 3) -> str:
    """``pid 12 (python -m x), pid 13 (java) and 4 more``: what the user would find with ps."""
    described = []
    for process in processes[:most]:
        try:
            command = " ".join(process.cmdline()[:3]) or process.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            command = "gone"
        described.append(f"pid {process.pid} ({command[:60]})")
    more = f" and {len(processes) - most} more" if len(processes) > most else ""
    return ", ".join(described) + more


def stop_processes(processes: Sequence[psutil.Process], timeout: float = 20.0,
                   stop_signal: signal.Signals = signal.SIGTERM) -> list[psutil.Process]:
    """``stop_signal`` to each, SIGKILL to whatever is left after ``timeout`` seconds; returns what survived both."""
    for process in processes:
        try:
            process.send_signal(stop_signal)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(alive, timeout=5)
    return alive


def stop_service_processes(pid: int | None, marker: str, timeout: float = 20.0,
                           stop_signal: signal.Signals = signal.SIGTERM,
                           signal_children: bool = True) -> list[psutil.Process]:
    """The service first, with its children unless it stops them itself (``signal_children`` false: a
    postmaster, whose children must not be signalled behind its back), then every process left with its
    marker."""
    if pid is not None:
        try:
            service = psutil.Process(pid)
            children = service.children(recursive=True) if signal_children else []
            stop_processes([service, *children], timeout, stop_signal)
        except psutil.NoSuchProcess:
            pass
    return stop_processes(marked_processes(marker), timeout=5)


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


def listener(host: str, port: int) -> psutil.Process | None:
    """The process listening on ``port``, when the OS tells us (Java listens on IPv4-mapped IPv6 addresses)."""
    try:
        for connection in psutil.net_connections("tcp"):
            if (connection.status == psutil.CONN_LISTEN and connection.laddr.port == port
                    and connection.laddr.ip in (host, f"::ffff:{host}", "0.0.0.0", "::") and connection.pid):
                return psutil.Process(connection.pid)
    except (psutil.AccessDenied, psutil.NoSuchProcess):
        pass
    return None


def port_holder(host: str, port: int) -> str:
    """Who listens on ``port``, as ``pid N (command)`` when the OS tells us, else ``another process``."""
    process = listener(host, port)
    return describe_processes([process]) if process is not None else "another process"


def belongs_to(process: psutil.Process, state_dir: Path) -> bool:
    """Started for this state folder: our marker in its environment."""
    try:
        return (process.environ().get(SERVICE_MARKER) or "").startswith(service_marker(state_dir, ""))
    except (psutil.AccessDenied, psutil.NoSuchProcess):
        return False


def require_free_port(host: str, port: int, variable: str, service: str) -> None:
    """Fails with one line naming the port, who holds it and the variable to change."""
    if not port_is_free(host, port):
        raise PortTakenError(
            f"{service} cannot start: port {port} on {host} is already in use by {port_holder(host, port)}; "
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


FREE_PORT_LOW = 20_000  # above every default port of the platform (5432, 6379, 8088, 9092, 15002, …)
_handed_out: set[int] = set()


def _ephemeral_port_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32_768, 60_999


def free_port(host: str = "127.0.0.1", count: int = 1) -> int:
    """The first of ``count`` consecutive ports free now (for tests and ephemeral stacks), below the kernel's
    ephemeral range: a port the OS hands out for port 0 may be taken a moment later as the local end of any
    outgoing connection (a Kafka client's), and the server meant to listen on it then fails to start. Never the
    same port twice in a process."""
    low, high = FREE_PORT_LOW, _ephemeral_port_range()[0] - count
    if high - low < 1_000:  # an ephemeral range reaching down here: any port may collide, take any
        low, high = FREE_PORT_LOW, 65_536 - count
    for first in random.sample(range(low, high), min(200, high - low)):
        block = range(first, first + count)
        if not _handed_out.intersection(block) and all(_binds(host, port) for port in block):
            _handed_out.update(block)
            return first
    raise StackError(f"no {count} free port(s) in a row between {low} and {high} on {host}")


def _binds(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
            return True
        except OSError:
            return False


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""
