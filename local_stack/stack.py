"""The local stack: the platform's servers and services, started in order, detached, stopped by pid."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shutil
import socket
import sys
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import psutil

from crypto_platform.credentials import DAGSTER, role_database_url
from crypto_platform.settings import WORKER_PORT_STRIDE, PlatformSettings
from local_stack.kafka_broker import KafkaBroker
from local_stack.migrations import apply_migrations
from local_stack.permissions import restrict_state_dir
from local_stack.postgres import PostgresServer, ServerAccount
from local_stack.processes import (
    PidFile,
    StackError,
    belongs_to,
    describe_processes,
    listener,
    marked_processes,
    port_holder,
    port_is_free,
    require_free_port,
    service_marker,
    start_detached,
    stop_processes,
    stop_service_processes,
    tail,
    wait_until,
)
from local_stack.roles import provision_roles
from local_stack.run_record import EVERY_SETTING, RunRecord, settings_snapshot

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVICE_READY_TIMEOUT_S = 30
DAGSTER_READY_TIMEOUT_S = 300  # its webserver loads the code location first: ~6 s idle, over 4 min at load 40
HTTP_PROBE_TIMEOUT_S = 10  # a readiness probe that gives up sooner fails forever on a loaded machine
DEFAULT_CONSUMER_INSTANCE_ID = "consumer-1"  # static group membership: see CONSUMER_INSTANCE_ID
SURPLUS_WORKER = re.compile(r"(producer|consumer)-\d+")
NOT_DAGSTERS = ("SYMBOLS", "KAFKA_", "REPLAY_", "PRODUCER_", "CONSUMER_", "DEAD_LETTER_", "SOURCE", "BINANCE_", "SUPERSET")

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")

log = logging.getLogger(__name__)


@dataclass
class ManagedService:
    """A platform process (replay server, producer, consumer, Dagster, Superset) run detached by pid.

    Every service has a readiness check: ``make up`` returns only once each one answers, and fails with
    the service's own last line when one exits or does not answer in time. ``watched`` are the prefixes
    of the settings it reads: started again with other values, it is restarted.
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
                       env={**os.environ, **self.env}, cwd=REPO_ROOT)
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
        survivors = stop_service_processes(self.pid(), self.marker)
        self.pid_file.remove()
        self.run_record.remove()
        return survivors


def _module_exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _port_answers(host: str, port: int) -> Callable[[], bool]:
    def answers() -> bool:
        try:
            with socket.create_connection((host, port), timeout=1):
                return True
        except OSError:
            return False

    return answers


def _spark_services(settings: PlatformSettings) -> list[ManagedService]:
    """A standalone Spark master and one worker from the pyspark package (SPARK_CLUSTER=1)."""
    spark_home = Path(importlib.util.find_spec("pyspark").submodule_search_locations[0])
    spark_class = str(spark_home / "bin" / "spark-class")
    host, work_dir = settings.bind_host, settings.state_dir / "spark"
    env = {"SPARK_HOME": str(spark_home), "SPARK_LOCAL_IP": host, "SPARK_WORKER_DIR": str(work_dir / "work"),
           "SPARK_LOG_DIR": str(work_dir / "logs"), "SPARK_NO_DAEMONIZE": "1"}
    master_url = f"spark://{host}:{settings.spark_master_port}"
    master = ManagedService(
        "spark-master", settings,
        [spark_class, "org.apache.spark.deploy.master.Master", "--host", host,
         "--port", str(settings.spark_master_port), "--webui-port", str(settings.spark_master_webui_port)],
        port=settings.spark_master_port, port_variable="SPARK_MASTER_PORT", env=env,
        ready=_port_answers(host, settings.spark_master_port), watched=("BIND_HOST", "SPARK_"),
    )
    worker = ManagedService(
        "spark-worker", settings,
        [spark_class, "org.apache.spark.deploy.worker.Worker", "--host", host, "--webui-port", "0",
         "--cores", str(settings.spark_worker_cores), "--memory", settings.spark_worker_memory, master_url],
        env=env, ready=_spark_worker_registered(f"http://{host}:{settings.spark_master_webui_port}/json/"),
        watched=("BIND_HOST", "SPARK_"),
    )
    return [master, worker]


def _spark_worker_registered(master_json_url: str) -> Callable[[], bool]:
    """The master's JSON lists an ALIVE worker."""
    def registered() -> bool:
        try:
            with urllib.request.urlopen(master_json_url, timeout=HTTP_PROBE_TIMEOUT_S) as response:
                return json.load(response).get("aliveworkers", 0) > 0
        except (OSError, ValueError):
            return False

    return registered


def dagster_environment(settings: PlatformSettings) -> dict[str, str]:
    """What dagster.yaml reads: DAGSTER_HOME under the state folder and its storage, as role ``dagster``."""
    url = urlsplit(role_database_url(settings, DAGSTER, settings.dagster_database))
    return {
        "DAGSTER_HOME": str(settings.state_dir / "dagster"),
        "DAGSTER_PG_HOST": url.hostname or settings.bind_host,
        "DAGSTER_PG_PORT": str(url.port or 5432),
        "DAGSTER_PG_USER": unquote(url.username or ""),
        "DAGSTER_PG_PASSWORD": unquote(url.password or ""),
        "DAGSTER_PG_DB": settings.dagster_database,
        "SPARK_LOCAL_IP": settings.bind_host,
    }


def _dagster_service(settings: PlatformSettings) -> ManagedService:
    """The webserver behind its Host/Origin guard and the daemon (so the sensor ticks) on BIND_HOST:DAGSTER_PORT."""
    env = dagster_environment(settings)
    home = Path(env["DAGSTER_HOME"])

    def install_instance_config() -> None:
        home.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")

    return ManagedService(
        "dagster", settings,
        [sys.executable, "-m", "local_stack.dagster_web", "-h", settings.bind_host, "-p", str(settings.dagster_port),
         "-w", str(REPO_ROOT / "workspace.yaml")],
        port=settings.dagster_port, port_variable="DAGSTER_PORT", env=env,
        ready=_http_ok(f"http://{settings.bind_host}:{settings.dagster_port}/server_info"),
        before_start=install_instance_config, ready_timeout_s=DAGSTER_READY_TIMEOUT_S,
        ignored=NOT_DAGSTERS,
    )


def _http_ok(url: str) -> Callable[[], bool]:
    def answers() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=HTTP_PROBE_TIMEOUT_S) as response:
                return response.status == 200
        except OSError:
            return False

    return answers


def _python_service(settings: PlatformSettings, name: str, module: str, port: int, port_variable: str,
                    ready_path: str, watched: tuple[str, ...], env: dict[str, str] | None = None,
                    arguments: Sequence[str] = ()) -> ManagedService:
    """A streaming service; ready once its HTTP endpoint (metrics, or the replay server's ping) answers."""
    return ManagedService(name, settings, [sys.executable, "-m", module, *arguments], port=port, port_variable=port_variable,
                          ready=_http_ok(f"http://{settings.bind_host}:{port}{ready_path}"),
                          watched=("BIND_HOST", "LOG_LEVEL", "SYMBOLS", *watched), env=env or {})


def _worker_name(service: str, worker: int) -> str:
    """Worker 0 keeps the service's own name (its pid file and log stay where they were)."""
    return service if worker == 0 else f"{service}-{worker}"


class LocalStack:
    """Everything ``make up`` runs, in start order. Only services whose code exists are included."""

    def __init__(self, settings: PlatformSettings) -> None:
        self.settings = settings
        self.postgres = PostgresServer(settings)
        self.kafka = KafkaBroker(settings)

    def services(self) -> list[ManagedService]:
        s = self.settings
        candidates: list[tuple[str, ManagedService]] = []
        if s.spark_cluster:
            candidates += [("pyspark", service) for service in _spark_services(s)]
        if s.spark_connect_server:
            from local_stack.spark_connect import spark_connect_service  # it builds on ManagedService

            candidates.append(("pyspark.sql.connect.session", spark_connect_service(s)))
        if s.source == "replay":
            candidates.append(("streaming_services.replay_server", _python_service(
                s, "replay-server", "streaming_services.replay_server", s.replay_port, "REPLAY_PORT",
                "/api/v3/ping", ("SOURCE", "REPLAY_", "STATE_DIR"))))
        # CONSUMER_WORKERS / PRODUCER_WORKERS processes each: consumer, consumer-1, … (``--worker I``).
        candidates += [
            ("streaming_services.consumer", _python_service(
                s, _worker_name("consumer", i), "streaming_services.consumer",
                s.consumer_metrics_port + i * WORKER_PORT_STRIDE, "CONSUMER_METRICS_PORT",
                "/metrics", ("KAFKA_", "CONSUMER_", "DEAD_LETTER_", "PG_", "DATABASE_URL"),
                {"CONSUMER_INSTANCE_ID": s.consumer_instance_id or DEFAULT_CONSUMER_INSTANCE_ID}, ("--worker", str(i))))
            for i in range(s.consumer_workers)
        ]
        candidates += [
            ("streaming_services.producer", _python_service(
                s, _worker_name("producer", i), "streaming_services.producer",
                s.producer_metrics_port + i * WORKER_PORT_STRIDE, "PRODUCER_METRICS_PORT",
                "/metrics", ("KAFKA_", "PRODUCER_", "SOURCE", "BINANCE_", "REPLAY_PORT", "STATE_DIR"),
                arguments=("--worker", str(i))))
            for i in range(s.producer_workers)
        ]
        if (REPO_ROOT / "workspace.yaml").exists() and (REPO_ROOT / "dagster.yaml").exists():
            candidates.append(("crypto_assets.definitions", _dagster_service(s)))
        if s.superset:
            from local_stack.redis_server import redis_service
            from local_stack.superset import celery_services, superset_service  # they build on ManagedService

            alerts = s.superset_alerts
            if alerts and s.embedded_redis:
                candidates.append(("local_stack.redis_server", redis_service(s)))
            candidates.append(("local_stack.superset", superset_service(s)))
            if alerts:
                candidates += [("local_stack.superset", service) for service in celery_services(s)]
        return [service for module, service in candidates if _module_exists(module)]

    def start_servers(self) -> None:
        """PostgreSQL (unless DATABASE_URL is external) and Kafka, then the schema and the topic."""
        self._start_postgres()
        self.kafka.start()
        self.bootstrap()

    def start_database(self) -> None:
        """PostgreSQL only, with the schema and the run-time roles (for work that needs no Kafka)."""
        self._start_postgres()
        self.bootstrap_database()

    def _start_postgres(self) -> None:
        server = ServerAccount.for_current_user() if self.settings.embedded_postgres else None
        restrict_state_dir(self.settings.state_dir, server.gid if server and server.is_other_user else None)
        if self.settings.embedded_postgres:
            self.postgres.start()

    def bootstrap(self) -> None:
        """Migrations, run-time roles and topics on servers that already run (the local ones or docker-compose's)."""
        self.bootstrap_database()
        self.kafka.ensure_topic(self.settings.kafka_topic, self.settings.kafka_partitions)

    def bootstrap_database(self) -> None:
        applied = apply_migrations(self.settings.database_url)
        log.info("schema ready", extra={"applied": ",".join(applied) or "none"})
        provision_roles(self.settings)

    def up(self, progress: Callable[[str], None] = lambda _: None) -> None:
        progress("starting servers: PostgreSQL, Kafka")
        self.start_servers()
        services = self.services()
        configured = {service.name for service in services}
        for service in self.stopped_services():
            if service.name not in configured and SURPLUS_WORKER.fullmatch(service.name):
                # PRODUCER_WORKERS or CONSUMER_WORKERS went down: the shares of symbols and partitions change.
                progress(f"stopping service: {service.name} (beyond the workers configured)")
                service.stop()
        for service in services:
            progress(f"starting service: {service.name}")
            service.start(say=progress)

    def stopped_services(self) -> list[ManagedService]:
        """The services of the settings of the day, and any other this state folder has a pid file of
        (started with other settings, e.g. SUPERSET=1 then): ``make down`` stops them all."""
        services = self.services()
        known = {service.name for service in services}
        run_dir = self.settings.state_dir / "run"
        others = sorted({path.name.split(".")[0] for path in run_dir.glob("*.pid")} - known - {"kafka"}) \
            if run_dir.is_dir() else []
        return [ManagedService(name, self.settings, [], ready=lambda: True) for name in others] + services

    def down(self) -> None:
        """Stops every process this state folder started, then checks that none of their ports is held."""
        ports: dict[int, str] = {}
        survivors: list[psutil.Process] = []
        for service in reversed(self.stopped_services()):
            port = service.recorded_port()
            if port is not None:
                ports[port] = service.port_variable or service.name
            survivors += service.stop()
        ports.update({self.settings.kafka_port: "KAFKA_PORT", self.settings.kafka_controller_port: "KAFKA_CONTROLLER_PORT"})
        survivors += self.kafka.stop()
        if self.settings.embedded_postgres:
            ports[self.settings.pg_port] = "PG_PORT"
            self.postgres.stop()
        survivors += stop_processes(marked_processes(service_marker(self.settings.state_dir, ""), prefix=True))
        problems = [f"could not stop {describe_processes(survivors)}"] if survivors else []
        host, state_dir = self.settings.bind_host, self.settings.state_dir

        def held_by_this_stack(port: int) -> bool:
            # A port taken since by someone else (its number was free again) is not one we failed to free.
            holder = listener(host, port)
            return not port_is_free(host, port) and (holder is None or belongs_to(holder, state_dir))

        wait_until(lambda: not any(held_by_this_stack(port) for port in ports), 10)
        problems += [f"port {port} ({variable}) is still held by {port_holder(host, port)}"
                     for port, variable in sorted(ports.items()) if held_by_this_stack(port)]
        if problems:
            raise StackError("make down left processes running: " + "; ".join(problems))
