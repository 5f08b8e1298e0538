"""One platform process run detached by pid (``ManagedService``) and the readiness probes services use.

The local stack (``stack.py``) assembles its services from this; so do the modules that describe one
service or server each (``spark_connect.py``, ``redis_server.py``, ``superset.py``, ``postgres.py``),
without importing the stack.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import ssl
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import psutil

from crypto_platform.settings import PlatformSettings
from local_stack.processes import (
    PidFile,
    StackError,
    describe_processes,
    marked_processes,
    require_free_port,
    service_marker,
    start_detached,
    stop_processes,
    stop_service_processes,
    tail,
    wait_until,
)
from local_stack.run_record import EVERY_SETTING, RunRecord, settings_snapshot

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVICE_READY_TIMEOUT_S = 30
SERVICE_STOP_TIMEOUT_S = 20
HTTP_PROBE_TIMEOUT_S = 10  # a readiness probe that gives up sooner fails forever on a loaded machine
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")

log = logging.getLogger(__name__)


@dataclass
class ManagedService:
    """A platform process (PostgreSQL, replay server, producer, consumer, Dagster, Superset) run detached by pid.

    Every service has a readiness check: ``make up`` returns only once each one answers, and fails with
    the service's own last line when one exits or does not answer in time. ``watched`` are the prefixes
    of the settings it reads: started again with other values, it is restarted, or with
    ``on_changed_settings="refuse"`` (a server holding data) ``make up`` fails with one line saying how to
    apply them. ``run_as`` gives the (uid, gid) its command runs as, looked up at each start. ``stop``
    sends ``stop_signal`` to the service, and to its children unless ``signal_children`` is false (the
    service stops them itself), and kills what is left after ``stop_timeout_s``.
    """

    name: str
    settings: PlatformSettings
    command: Sequence[str]
    ready: Callable[[], bool] = field(kw_only=True)
    port: int | None = None
    port_variable: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    before_start: Callable[[], None] | None = None
    ready_timeout_s: float = SERVICE_READY_TIMEOUT_S
    watched: tuple[str, ...] = EVERY_SETTING
    ignored: tuple[str, ...] = ()
    on_changed_settings: Literal["restart", "refuse"] = "restart"
    run_as: Callable[[], tuple[int, int]] | None = None
    stop_signal: signal.Signals = signal.SIGTERM
    stop_timeout_s: float = SERVICE_STOP_TIMEOUT_S
    signal_children: bool = True

    @property
    def log_path(self) -> Path:
        return self.settings.state_dir / "logs" / f"{self.name}.log"

    @property
    def pid_file(self) -> PidFile:
        return PidFile(self.settings.state_dir / "run" / f"{self.name}.pid")

    @property
    def run_record(self) -> RunRecord:
        return RunRecord(self.settings.state_dir / "run" / f"{self.name}.settings.json")

    @property
    def marker(self) -> str:
        return service_marker(self.settings.state_dir, self.name)

    def pid(self) -> int | None:
        return self.pid_file.running_pid()

    def is_running(self) -> bool:
        return self.pid() is not None

    def settings_snapshot(self) -> dict[str, str]:
        return settings_snapshot(self.settings, self.watched, self.ignored)

    def recorded_port(self) -> int | None:
        """The port it was started on (its run record), else the configured one."""
        recorded = (self.run_record.read() or {}).get(self.port_variable or "")
        return int(recorded) if recorded and recorded.isdigit() else self.port

    def leftovers(self) -> list[psutil.Process]:
        """Processes of an earlier run still alive while the pid file names no live service (an orphan)."""
        return [] if self.is_running() else marked_processes(self.marker)

    def start(self, say: Callable[[str], None] = log.info) -> None:
        if self.is_running():
            changes = self.run_record.changes(self.settings_snapshot())
            if not changes:
                return
            if self.on_changed_settings == "refuse":
                raise StackError(f"{self.name} runs with other settings ({'; '.join(changes)}); "
                                 "to apply them run `make down` then `make up`")
            say(f"{self.name} runs with other settings ({'; '.join(changes)}): restarting it")
            self.stop()
        leftovers = marked_processes(self.marker)
        if leftovers:
            say(f"{self.name}: found {describe_processes(leftovers)} left from an earlier run; stopping them")
            survivors = stop_processes(leftovers)
            if survivors:
                raise StackError(f"{self.name}: could not stop {describe_processes(survivors)}; stop them by hand")
        if self.port is not None and self.port_variable:
            require_free_port(self.settings.bind_host, self.port, self.port_variable, self.name)
        if self.before_start is not None:
            self.before_start()
        start_detached(self.command, self.log_path, self.pid_file, self.marker,
                       env={**os.environ, **self.env}, cwd=REPO_ROOT,
                       account=self.run_as() if self.run_as is not None else None)
        self.run_record.write(self.settings_snapshot())
        if not wait_until(self._ready_or_dead, self.ready_timeout_s, interval=0.5):
            last = self._last_log_line()
            self.stop()
            raise StackError(f"{self.name} did not become ready in {self.ready_timeout_s:.0f} s (stopped it)"
                             + (f"; its last line: {last}" if last else "") + f"; read {self.log_path}")

    def _ready_or_dead(self) -> bool:
        if not self.is_running():
            # The wrapper copies the service's last lines after it died: wait for it before reading them.
            wait_until(lambda: not marked_processes(self.marker), 5, interval=0.1)
            self.run_record.remove()
            raise StackError(f"{self.name} exited during start: {self._last_log_line() or 'no output'} "
                             f"(read {self.log_path})")
        return self.ready()

    def _last_log_line(self) -> str:
        lines = [ANSI_ESCAPE.sub("", line).strip() for line in tail(self.log_path, 5).splitlines()]
        lines = [line for line in lines if line]
        return lines[-1][:400] if lines else ""

    def stop(self) -> list[psutil.Process]:
        """Stops the service, its children and any process left with its marker; returns survivors."""
        survivors = stop_service_processes(self.pid(), self.marker, self.stop_timeout_s, self.stop_signal,
                                           self.signal_children)
        self.pid_file.remove()
        self.run_record.remove()
        return survivors

    def run_in_foreground(self) -> None:
        """As a docker-compose service runs it: ``before_start``, then the command replaces this process
        (its log on stdout, the container's; the container's restart policy stands in for ``start``)."""
        if self.before_start is not None:
            self.before_start()
        os.chdir(REPO_ROOT)
        os.execve(self.command[0], list(self.command), {**os.environ, **self.env})


def port_answers(host: str, port: int) -> Callable[[], bool]:
    def answers() -> bool:
        try:
            with socket.create_connection((host, port), timeout=1):
                return True
        except OSError:
            return False

    return answers


def http_ok(url: str, context: Callable[[], ssl.SSLContext | None] = lambda: None,
            headers: dict[str, str] | None = None) -> Callable[[], bool]:
    """Answers 200 (over HTTPS checked with the SSL context ``context`` makes at each probe, since the
    certificates may only exist once the servers start; sending ``headers``)."""
    request = urllib.request.Request(url, headers=headers or {})

    def answers() -> bool:
        try:
            with urllib.request.urlopen(request, timeout=HTTP_PROBE_TIMEOUT_S, context=context()) as response:
                return response.status == 200
        except OSError:
            return False

    return answers


