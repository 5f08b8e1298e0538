"""The local stack: the platform's servers and services, started in order, detached, stopped by pid."""

from __future__ import annotations

import importlib.util
import logging
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

import psutil

from crypto_platform.credentials import DAGSTER, role_database_url, spark_connect_environment
from crypto_platform.raw_partitions import apply_retention
from crypto_platform.settings import WORKER_PORT_STRIDE, PlatformSettings
from local_stack.certificates import client_context
from local_stack.dagster_web import dagster_url, login_headers
from local_stack.jars import postgresql_jdbc_jar
from local_stack.kafka_cluster import KafkaCluster
from local_stack.kafka_users import ensure_service_users
from local_stack.migrations import apply_migrations
from local_stack.permissions import restrict_state_dir
from local_stack.postgres import PostgresServer, ServerAccount
from local_stack.processes import (
    StackError,
    belongs_to,
    describe_processes,
    listener,
    marked_processes,
    port_holder,
    port_is_free,
    service_marker,
    stop_processes,
    wait_until,
)
from local_stack.redis_server import redis_service
from local_stack.roles import provision_roles
from local_stack.service import REPO_ROOT, ManagedService, http_ok
from local_stack.spark_cluster import spark_cluster_services
from local_stack.spark_connect import spark_connect_service
from local_stack.superset import celery_services, superset_service

DAGSTER_READY_TIMEOUT_S = 300  # its webserver loads the code location first: ~6 s idle, over 4 min at load 40
DEFAULT_CONSUMER_INSTANCE_ID = "consumer-1"  # static group membership: see CONSUMER_INSTANCE_ID
SURPLUS_WORKER = re.compile(r"(producer|consumer)-\d+")
NOT_DAGSTERS = ("SYMBOLS", "KAFKA_", "REPLAY_", "PRODUCER_", "CONSUMER_", "DEAD_LETTER_", "SOURCE", "BINANCE_",
                "SUPERSET")

log = logging.getLogger(__name__)


def _module_exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


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
        # dagster.yaml's storage names no TLS options; libpq takes them from here (SECURE=1).
        **({"PGSSLMODE": "verify-full", "PGSSLROOTCERT": str(settings.tls_ca_cert)} if settings.secure else {}),
    }


def dagster_service(settings: PlatformSettings) -> ManagedService:
    """The webserver behind its Host/Origin guard and the daemon (so the sensor ticks) on BIND_HOST:DAGSTER_PORT."""
    # In-process candle runs (SPARK_REMOTE=) load the cached driver instead of fetching it.
    env = {**dagster_environment(settings), "SPARK_JDBC_DRIVER": str(postgresql_jdbc_jar()),
           **spark_connect_environment(settings)}
    home = Path(env["DAGSTER_HOME"])

    def install_instance_config() -> None:
        home.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")

    return ManagedService(
        "dagster", settings,
        [sys.executable, "-m", "local_stack.dagster_web", "-h", settings.bind_host, "-p", str(settings.dagster_port),
         "-w", str(REPO_ROOT / "workspace.yaml")],
        port=settings.dagster_port, port_variable="DAGSTER_PORT", env=env,
        ready=http_ok(f"{dagster_url(settings)}/server_info", lambda: client_context(settings),
                      login_headers(settings)),
        before_start=install_instance_config, ready_timeout_s=DAGSTER_READY_TIMEOUT_S,
        ignored=NOT_DAGSTERS,
    )


def _python_service(settings: PlatformSettings, name: str, module: str, port: int, port_variable: str,
                    ready: Callable[[], bool], watched: tuple[str, ...], env: dict[str, str] | None = None,
                    arguments: Sequence[str] = ()) -> ManagedService:
    """A streaming service; ready once its HTTP endpoint (metrics, or the replay server's ping) answers."""
    return ManagedService(name, settings, [sys.executable, "-m", module, *arguments], port=port,
                          port_variable=port_variable, ready=ready,
                          watched=("BIND_HOST", "LOG_LEVEL", "SYMBOLS", *watched), env=env or {})


def _metrics_answer(settings: PlatformSettings, port: int) -> Callable[[], bool]:
    """The Prometheus endpoint answers: with SECURE=1 over HTTPS, showing the platform's client certificate."""
    return http_ok(f"{settings.web_scheme}://{settings.bind_host}:{port}/metrics",
                   lambda: client_context(settings, with_certificate=True))


def _worker_name(service: str, worker: int) -> str:
    """Worker 0 keeps the service's own name (its pid file and log stay where they were)."""
    return service if worker == 0 else f"{service}-{worker}"


class LocalStack:
    """Everything ``make up`` runs, in start order. Only services whose code exists are included."""

    def __init__(self, settings: PlatformSettings) -> None:
        self.settings = settings
        self.postgres = PostgresServer(settings)
        self.kafka = KafkaCluster(settings)

    def services(self) -> list[ManagedService]:
        s = self.settings
        candidates: list[tuple[str, ManagedService]] = []
        if s.spark_cluster:
            candidates += [("pyspark", service) for service in spark_cluster_services(s)]
        if s.spark_connect_server:
            candidates.append(("pyspark.sql.connect.session", spark_connect_service(s)))
        if s.source == "replay":
            candidates.append(("streaming_services.replay_server", _python_service(
                s, "replay-server", "streaming_services.replay_server", s.replay_port, "REPLAY_PORT",
                # Binance's public endpoints' stand-in: plain HTTP in both modes, as public data.
                http_ok(f"http://{s.bind_host}:{s.replay_port}/api/v3/ping"), ("SOURCE", "REPLAY_", "STATE_DIR"))))
        # CONSUMER_WORKERS / PRODUCER_WORKERS processes each: consumer, consumer-1, … (``--worker I``).
        for i in range(s.consumer_workers):
            port = s.consumer_metrics_port + i * WORKER_PORT_STRIDE
            candidates.append(("streaming_services.consumer", _python_service(
                s, _worker_name("consumer", i), "streaming_services.consumer", port, "CONSUMER_METRICS_PORT",
                _metrics_answer(s, port), ("KAFKA_", "CONSUMER_", "DEAD_LETTER_", "PG_", "DATABASE_URL"),
                {"CONSUMER_INSTANCE_ID": s.consumer_instance_id or DEFAULT_CONSUMER_INSTANCE_ID},
                ("--worker", str(i)))))
        for i in range(s.producer_workers):
            port = s.producer_metrics_port + i * WORKER_PORT_STRIDE
            candidates.append(("streaming_services.producer", _python_service(
                s, _worker_name("producer", i), "streaming_services.producer", port, "PRODUCER_METRICS_PORT",
                _metrics_answer(s, port), ("KAFKA_", "PRODUCER_", "SOURCE", "BINANCE_", "REPLAY_PORT", "STATE_DIR"),
                arguments=("--worker", str(i)))))
        if (REPO_ROOT / "workspace.yaml").exists() and (REPO_ROOT / "dagster.yaml").exists():
            candidates.append(("crypto_assets.definitions", dagster_service(s)))
        if s.superset:
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
        """Migrations, run-time roles, Kafka's service users and topics on servers that already run (the local
        ones or docker-compose's)."""
        self.bootstrap_database()
        self.bootstrap_kafka()

    def bootstrap_kafka(self) -> None:
        """The producer's and consumer's SCRAM credentials from their secret files, then the topic and its ACLs."""
        ensure_service_users(self.kafka)
        self.kafka.ensure_topic(self.settings.kafka_topic, self.settings.kafka_partitions)

    def bootstrap_database(self) -> None:
        applied = apply_migrations(self.settings.database_url)
        log.info("schema ready", extra={"applied": ",".join(applied) or "none"})
        provision_roles(self.settings)
        done = apply_retention(self.settings.database_url, self.settings.raw_retention_days)
        log.info("raw partitions ready", extra={"retention_days": self.settings.raw_retention_days,
                                                "created": done.created, "dropped": done.dropped, "busy": done.busy})

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
        servers = {self.postgres.name, "kafka", "kafka-2", "kafka-3"}  # stopped by down() whatever KAFKA_BROKERS
        others = sorted({path.name.split(".")[0] for path in run_dir.glob("*.pid")} - known - servers) \
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
        for node in self.kafka.nodes:
            ports.update({node.port: "KAFKA_PORT", node.controller_port: "KAFKA_CONTROLLER_PORT"})
        survivors += self.kafka.stop()
        if self.settings.embedded_postgres:
            ports[self.settings.pg_port] = "PG_PORT"
            survivors += self.postgres.stop()
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
