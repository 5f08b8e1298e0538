"""Apache Kafka in KRaft combined mode (broker + controller), run with the machine's Java from Maven jars."""

from __future__ import annotations

import base64
import logging
import os
import subprocess
import uuid
from pathlib import Path

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from crypto_platform.settings import PlatformSettings
from local_stack.jars import ensure_jars
from local_stack.processes import (
    PidFile,
    StackError,
    require_free_port,
    service_marker,
    start_detached,
    stop_service_processes,
    tail,
    wait_until,
)
from local_stack.run_record import RunRecord, settings_snapshot

LOG4J = Path(__file__).with_name("kafka") / "log4j.properties"
READY_TIMEOUT_S = 180  # ~10 s idle; over 90 s at load 40+ (a broker that dies is reported at once)
WATCHED = ("BIND_HOST", "KAFKA_PORT", "KAFKA_CONTROLLER_PORT", "KAFKA_HEAP", "KAFKA_RETENTION_HOURS")

log = logging.getLogger(__name__)


class KafkaBroker:
    """One KRaft node in ``<state>/kafka``: formatted once, then started and stopped by pid."""

    name = "kafka"

    def __init__(self, settings: PlatformSettings) -> None:
        self.settings = settings
        self.root = settings.state_dir / "kafka"
        self.data_dir = self.root / "data"
        self.log_path = settings.state_dir / "logs" / "kafka.log"
        self.pid_file = PidFile(settings.state_dir / "run" / "kafka.pid")
        self.run_record = RunRecord(settings.state_dir / "run" / "kafka.settings.json")
        self.marker = service_marker(settings.state_dir, self.name)

    @property
    def port(self) -> int:
        return self.settings.kafka_port

    def pid(self) -> int | None:
        return self.pid_file.running_pid()

    def is_running(self) -> bool:
        return self.pid() is not None

    def _classpath(self) -> str:
        return str(ensure_jars() / "*")

    def _java(self, main_class: str, *args: str, heap: str = "256m") -> list[str]:
        return [
            "java", f"-Xmx{heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{LOG4J}", "-cp", self._classpath(), main_class, *args,
        ]

    def _write_properties(self) -> Path:
        s = self.settings
        host = s.bind_host
        properties = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{host}:{s.kafka_controller_port}",
            "listeners": f"PLAINTEXT://{host}:{s.kafka_port},CONTROLLER://{host}:{s.kafka_controller_port}",
            "advertised.listeners": f"PLAINTEXT://{host}:{s.kafka_port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.partitions": str(s.kafka_partitions),
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "3",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "log.retention.hours": str(s.kafka_retention_hours),
            "log.segment.bytes": str(256 * 1024 * 1024),
        }
        path = self.root / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in properties.items()))
        return path

    def _format_once(self, properties: Path) -> None:
        if (self.data_dir / "meta.properties").exists():
            return
        cluster_id_file = self.root / "cluster.id"
        if not cluster_id_file.exists():
            cluster_id_file.write_text(_kafka_cluster_id())
        result = subprocess.run(
            self._java("kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id_file.read_text().strip()}",
                       "-c", str(properties)),
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            last_line = (result.stdout + result.stderr).strip().splitlines()[-1]
            raise StackError(f"formatting Kafka's storage failed: {last_line}")

    def start(self) -> None:
        """Starts the broker when it is not running and waits until it answers a metadata request.
        A broker running with other settings is not restarted behind the user's back: one line says how."""
        if self.is_running():
            changes = self.run_record.changes(settings_snapshot(self.settings, WATCHED))
            if changes:
                raise StackError(f"Kafka runs with other settings ({'; '.join(changes)}); "
                                 "to apply them run `make down` then `make up`")
        else:
            for port, variable in ((self.settings.kafka_port, "KAFKA_PORT"),
                                   (self.settings.kafka_controller_port, "KAFKA_CONTROLLER_PORT")):
                require_free_port(self.settings.bind_host, port, variable, "Kafka")
            self.root.mkdir(parents=True, exist_ok=True)
            properties = self._write_properties()
            self._format_once(properties)
            stop_service_processes(None, self.marker)  # a broker left without its pid file holds the data folder
            start_detached(
                self._java("kafka.Kafka", str(properties), heap=self.settings.kafka_heap),
                self.log_path, self.pid_file, self.marker, env={**os.environ, "KAFKA_LOG4J_OPTS": ""},
            )
            self.run_record.write(settings_snapshot(self.settings, WATCHED))
        if not wait_until(self._answers_metadata, READY_TIMEOUT_S, interval=0.5):
            raise StackError(f"Kafka did not answer within {READY_TIMEOUT_S} s; read {self.log_path}:\n"
                             f"{tail(self.log_path)}")

    def stop(self) -> list:
        """Stops the broker and anything left with its marker; returns the processes that survived."""
        survivors = stop_service_processes(self.pid(), self.marker, timeout=30)
        self.pid_file.remove()
        self.run_record.remove()
        return survivors

    def admin(self) -> KafkaAdminClient:
        return KafkaAdminClient(
            bootstrap_servers=self.settings.kafka_bootstrap_servers, client_id="local-stack",
            request_timeout_ms=10_000,
        )

    def _answers_metadata(self) -> bool:
        if not self.is_running():
            raise StackError(f"Kafka exited during start; read {self.log_path}:\n{tail(self.log_path)}")
        try:
            admin = self.admin()
        except KafkaError:
            return False
        try:
            admin.list_topics()
            return True
        except KafkaError:
            return False
        finally:
            admin.close()

    def ensure_topic(self, name: str, partitions: int) -> None:
        """Creates the topic when missing; an existing topic with fewer partitions is grown."""
        retention_ms = str(self.settings.kafka_retention_hours * 3600 * 1000)
        admin = self.admin()
        try:
            if name not in admin.list_topics():
                try:
                    admin.create_topics(
                        [NewTopic(name, num_partitions=partitions, replication_factor=1,
                                  topic_configs={"retention.ms": retention_ms})],
                        wait_for_metadata=True,
                    )
                    log.info("topic created", extra={"topic": name, "partitions": partitions})
                except TopicAlreadyExistsError:
                    pass
        finally:
            admin.close()

    def partition_count(self, name: str) -> int:
        admin = self.admin()
        try:
            described = admin.describe_topics([name])
            return len(described[0]["partitions"])
        finally:
            admin.close()


def _kafka_cluster_id() -> str:
    """Kafka's cluster id format: a UUID as 22 characters of URL-safe base64, not starting with '-'
    (Kafka's own Uuid.randomUuid() avoids those too: command lines would read them as options)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id
