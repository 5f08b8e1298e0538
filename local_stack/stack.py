"""The local stack: the platform's servers and services, started in order, detached, stopped by pid."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import socket
import sys
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from crypto_platform.settings import PlatformSettings
from local_stack.kafka_broker import KafkaBroker
from local_stack.migrations import apply_migrations
from local_stack.postgres import PostgresServer
from local_stack.processes import (
    PidFile,
    StackError,
    require_free_port,
    start_detached,
    stop_process_group,
    tail,
    wait_until,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVICE_READY_TIMEOUT_S = 30
DAGSTER_READY_TIMEOUT_S = 120  # its webserver loads the code location first: ~6 s idle, minutes under load

log = logging.getLogger(__name__)


@dataclass
class ManagedService:
    """A platform process (replay server, producer, consumer, Dagster, Superset) run detached by pid."""

    name: str
    settings: PlatformSettings
    command: Sequence[str]
    port: int | None = None
    port_variable: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    ready: Callable[[], bool] | None = None
    before_start: Callable[[], None] | None = None
    ready_timeout_s: float = SERVICE_READY_TIMEOUT_S

    @property
    def log_path(self) -> Path:
        return self.settings.state_dir / "logs" / f"{self.name}.log"

    @property
    def pid_file(self) -> PidFile:
        return PidFile(self.settings.state_dir / "run" / f"{self.name}.pid")

    def pid(self) -> int | None:
        return self.pid_file.running_pid()

    def is_running(self) -> bool:
        return self.pid() is not None

    def start(self) -> None:
        if self.is_running():
            return
        if self.port is not None and self.port_variable:
            require_free_port(self.settings.bind_host, self.port, self.port_variable, self.name)
        if self.before_start is not None:
            self.before_start()
        start_detached(self.command, self.log_path, self.pid_file, env={**os.environ, **self.env}, cwd=REPO_ROOT)
        if self.ready is not None and not wait_until(self._ready_or_dead, self.ready_timeout_s, interval=0.5):
            raise StackError(f"{self.name} did not become ready in {self.ready_timeout_s:.0f} s; read {self.log_path}")

    def _ready_or_dead(self) -> bool:
        if not self.is_running():
            raise StackError(f"{self.name} exited during start; read {self.log_path}:\n{tail(self.log_path)}")
        return bool(self.ready and self.ready())

    def stop(self) -> None:
        pid = self.pid()
        if pid is not None:
            stop_process_group(pid)
        self.pid_file.remove()


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
        ready=_port_answers(host, settings.spark_master_port),
    )
    worker = ManagedService(
        "spark-worker", settings,
        [spark_class, "org.apache.spark.deploy.worker.Worker", "--host", host, "--webui-port", "0",
         "--cores", str(settings.spark_worker_cores), "--memory", settings.spark_worker_memory, master_url],
        env=env,
    )
    return [master, worker]


def dagster_environment(settings: PlatformSettings) -> dict[str, str]:
    """What dagster.yaml reads: DAGSTER_HOME under the state folder and its PostgreSQL storage."""
    url = urlsplit(settings.database_url_for(settings.dagster_database))
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
    """``dagster dev``: the webserver and the daemon (so the sensor ticks) on BIND_HOST:DAGSTER_PORT."""
    env = dagster_environment(settings)
    home = Path(env["DAGSTER_HOME"])

    def install_instance_config() -> None:
        home.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")

    return ManagedService(
        "dagster", settings,
        [sys.executable, "-m", "dagster", "dev", "-h", settings.bind_host, "-p", str(settings.dagster_port),
         "-w", str(REPO_ROOT / "workspace.yaml")],
        port=settings.dagster_port, port_variable="DAGSTER_PORT", env=env,
        ready=_http_ok(f"http://{settings.bind_host}:{settings.dagster_port}/server_info"),
        before_start=install_instance_config, ready_timeout_s=DAGSTER_READY_TIMEOUT_S,
    )


def _http_ok(url: str) -> Callable[[], bool]:
    def answers() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    return answers


def _python_service(settings: PlatformSettings, name: str, module: str, port: int | None = None,
                    port_variable: str | None = None) -> ManagedService:
    return ManagedService(name, settings, [sys.executable, "-m", module], port=port, port_variable=port_variable)


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
        if s.source == "replay":
            candidates.append(("streaming_services.replay_server", _python_service(
                s, "replay-server", "streaming_services.replay_server", s.replay_port, "REPLAY_PORT")))
        candidates += [
            ("streaming_services.consumer", _python_service(
                s, "consumer", "streaming_services.consumer", s.consumer_metrics_port, "CONSUMER_METRICS_PORT")),
            ("streaming_services.producer", _python_service(
                s, "producer", "streaming_services.producer", s.producer_metrics_port, "PRODUCER_METRICS_PORT")),
        ]
        if (REPO_ROOT / "workspace.yaml").exists() and (REPO_ROOT / "dagster.yaml").exists():
            candidates.append(("crypto_assets.definitions", _dagster_service(s)))
        if s.superset:
            from local_stack.superset import superset_service  # it builds on ManagedService

            candidates.append(("local_stack.superset", superset_service(s)))
        return [service for module, service in candidates if _module_exists(module)]

    def start_servers(self) -> None:
        """PostgreSQL (unless DATABASE_URL is external) and Kafka, then the schema and the topic."""
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        if self.settings.embedded_postgres:
            self.postgres.start()
        self.kafka.start()
        self.bootstrap()

    def bootstrap(self) -> None:
        """Migrations and topics on servers that already run (the local ones or docker-compose's)."""
        applied = apply_migrations(self.settings.database_url)
        log.info("schema ready", extra={"applied": ",".join(applied) or "none"})
        self.kafka.ensure_topic(self.settings.kafka_topic, self.settings.kafka_partitions)

    def up(self, progress: Callable[[str], None] = lambda _: None) -> None:
        progress("servers: PostgreSQL, Kafka")
        self.start_servers()
        for service in self.services():
            progress(f"service: {service.name}")
            service.start()

    def down(self) -> None:
        for service in reversed(self.services()):
            service.stop()
        self.kafka.stop()
        if self.settings.embedded_postgres:
            self.postgres.stop()
