"""Apache Kafka in KRaft combined mode (broker + controller), run with the machine's Java from Maven jars.

With ``SECURE=1`` the client listener is SASL_SSL with SCRAM-SHA-512 and the controller's is TLS with
client certificates (the broker shows the platform CA's server certificate, see ``certificates``); the
SCRAM users (``credentials.KAFKA_PRINCIPALS``) are created when the storage is formatted, from an
argument file (0600, deleted after) so no password is on a command line; ``kafka_users`` changes them later
(``make rotate-kafka-password``) and sets the service users' from their secret files at each ``make up``.
The storage keeps a salted digest of ``platform-admin``'s password (``ADMIN_DIGEST``): a secret file that is
not that password is reported in one line at start, before the broker would refuse its own admin.
``StandardAuthorizer`` with ``allow.everyone.if.no.acl.found=false``: the producer may write the trades
topic, the consumer read it in its group (``ensure_topic`` grants both), the admin principal and the
broker itself are super users.

The broker advertises the first of ``KAFKA_BOOTSTRAP_SERVERS`` (``BIND_HOST:KAFKA_PORT`` by default): where
clients find it, also when it listens on every address, as in docker-compose, whose ``kafka`` service runs
it in the foreground (``run_in_foreground``) with the same properties and storage.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import subprocess
import uuid
from pathlib import Path

from kafka.admin import (
    ACL,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    KafkaAdminClient,
    NewTopic,
    ResourcePattern,
    ResourceType,
)
from kafka.errors import KafkaError, TopicAlreadyExistsError

from crypto_platform.credentials import (
    KAFKA_ADMIN,
    KAFKA_CONSUMER,
    KAFKA_PRINCIPALS,
    KAFKA_PRODUCER,
    kafka_password,
    kafka_security,
)
from crypto_platform.settings import PlatformSettings
from local_stack.certificates import DEFAULT_HOSTS, platform_certificates
from local_stack.jars import ensure_jars
from local_stack.permissions import write_private
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
WATCHED = ("BIND_HOST", "KAFKA_PORT", "KAFKA_CONTROLLER_PORT", "KAFKA_BOOTSTRAP_SERVERS", "KAFKA_HEAP",
           "KAFKA_RETENTION_HOURS", "SECURE")
SCRAM = "SCRAM-SHA-512"
SECURED_MARKER = "scram-users"  # in the kafka folder: the storage was formatted with the SCRAM users
ADMIN_DIGEST = "platform-admin.sha256"  # in the kafka folder: salt and SHA-256 of the admin password it knows

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
        """The JVM's command line; ``main_class`` may be an ``@file`` naming the class and its arguments (the
        launcher reads argument files up to the main class only)."""
        return [
            "java", f"-Xmx{heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{LOG4J}", "-cp", self._classpath(), main_class, *args,
        ]

    @property
    def advertised(self) -> str:
        """``host:port`` the broker gives clients: the first bootstrap server."""
        return self.settings.kafka_bootstrap_servers.split(",")[0].strip()

    def _controller_host(self) -> str:
        """Where the broker reaches its own controller: ``BIND_HOST``, or the advertised host when that is a
        wildcard (not an address to connect to)."""
        host = self.settings.bind_host
        return self.advertised.rsplit(":", 1)[0] if host in ("0.0.0.0", "::") else host

    def _write_properties(self) -> Path:
        s = self.settings
        host = s.bind_host
        properties = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{self._controller_host()}:{s.kafka_controller_port}",
            "listeners": f"PLAINTEXT://{host}:{s.kafka_port},CONTROLLER://{host}:{s.kafka_controller_port}",
            "advertised.listeners": f"PLAINTEXT://{self.advertised}",
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
            **(self._secure_properties() if s.secure else {}),
        }
        path = self.root / "server.properties"
        write_private(path, "".join(f"{k}={v}\n" for k, v in properties.items()).encode())
        return path

    def _secure_properties(self) -> dict[str, str]:
        s = self.settings
        host = s.bind_host
        tls = platform_certificates(s)
        admin_password = kafka_password(s, KAFKA_ADMIN)
        return {
            "listeners": f"SASL_SSL://{host}:{s.kafka_port},CONTROLLER://{host}:{s.kafka_controller_port}",
            "advertised.listeners": f"SASL_SSL://{self.advertised}",
            "inter.broker.listener.name": "SASL_SSL",
            "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:SSL",
            "sasl.enabled.mechanisms": SCRAM,
            "sasl.mechanism.inter.broker.protocol": SCRAM,
            f"listener.name.sasl_ssl.{SCRAM.lower()}.sasl.jaas.config":
                f'org.apache.kafka.common.security.scram.ScramLoginModule required username="{KAFKA_ADMIN}" '
                f'password="{admin_password}";',
            "ssl.keystore.type": "PEM",
            "ssl.keystore.certificate.chain": _one_line_pem(tls.server_cert.read_text()),
            "ssl.keystore.key": _one_line_pem(tls.server_key.read_text()),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(tls.ca_cert),
            "listener.name.controller.ssl.client.auth": "required",
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found": "false",
            # The admin principal, and the broker itself on the controller listener (its certificate's name).
            "super.users": f"User:{KAFKA_ADMIN};User:CN={DEFAULT_HOSTS[0]}",
        }

    def _format_once(self, properties: Path) -> None:
        secured = self.root / SECURED_MARKER
        if (self.data_dir / "meta.properties").exists():
            if self.settings.secure and not secured.exists():
                raise StackError(f"Kafka's storage in {self.data_dir} was formatted without SECURE=1, so it has no "
                                 "SCRAM users; run `make clean` (its messages are lost) or leave SECURE unset")
            return
        cluster_id_file = self.root / "cluster.id"
        if not cluster_id_file.exists():
            cluster_id_file.write_text(_kafka_cluster_id())
        arguments = ["kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id_file.read_text().strip()}",
                     "-c", str(properties)]
        if self.settings.secure:
            for principal in KAFKA_PRINCIPALS:
                password = kafka_password(self.settings, principal)
                arguments += ["--add-scram", f"{SCRAM}=[name={principal},password={password}]"]
        # The arguments reach Java through an @argument file, so no password is on the command line.
        argument_file = self.root / "format.args"
        write_private(argument_file, "".join(f'"{argument}"\n' for argument in arguments).encode())
        try:
            result = subprocess.run(self._java(f"@{argument_file}"), capture_output=True, text=True, check=False)
        finally:
            argument_file.unlink(missing_ok=True)
        if result.returncode != 0:
            last_line = (result.stdout + result.stderr).strip().splitlines()[-1]
            raise StackError(f"formatting Kafka's storage failed: {last_line}")
        if self.settings.secure:
            self.record_admin_password(kafka_password(self.settings, KAFKA_ADMIN))
            secured.touch()

    def record_admin_password(self, password: str) -> None:
        """Notes (as a salted digest, 0600) that the storage knows ``password`` as ``platform-admin``'s."""
        salt = os.urandom(16)
        write_private(self.root / ADMIN_DIGEST, f"{salt.hex()}:{_digest(salt, password)}\n".encode())

    def check_admin_password(self) -> None:
        """With SECURE=1: the admin's secret file is the password the storage knows (unknown on a storage
        formatted before the digest existed: then the broker's answer tells, and ``start`` records it)."""
        if not self.settings.secure or not (self.root / ADMIN_DIGEST).exists():
            return
        salt, digest = (self.root / ADMIN_DIGEST).read_text().strip().split(":")
        if not hmac.compare_digest(_digest(bytes.fromhex(salt), kafka_password(self.settings, KAFKA_ADMIN)), digest):
            secret = self.settings.state_dir / "secrets" / f"kafka-{KAFKA_ADMIN}"
            raise StackError(f"{secret} is not the password Kafka's storage knows for {KAFKA_ADMIN} (the file was "
                             "replaced or made anew): put the old file back, or run `make clean` (Kafka's messages "
                             "are lost); change it with `make rotate-kafka-password KAFKA_USER=platform-admin` only")

    def start(self) -> None:
        """Starts the broker when it is not running and waits until it answers a metadata request.
        A broker running with other settings is not restarted behind the user's back: one line says how."""
        self.check_admin_password()
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
        if self.settings.secure and not (self.root / ADMIN_DIGEST).exists():
            self.record_admin_password(kafka_password(self.settings, KAFKA_ADMIN))  # it just logged in with it

    def run_in_foreground(self) -> None:
        """docker-compose's ``kafka`` service: properties and storage as ``start`` makes them, then the broker
        replaces this process (its log on stdout, the container's)."""
        self.root.mkdir(parents=True, exist_ok=True)
        properties = self._write_properties()
        self._format_once(properties)
        self.check_admin_password()
        command = self._java("kafka.Kafka", str(properties), heap=self.settings.kafka_heap)
        os.execvpe(command[0], command, {**os.environ, "KAFKA_LOG4J_OPTS": ""})

    def stop(self) -> list:
        """Stops the broker and anything left with its marker; returns the processes that survived."""
        survivors = stop_service_processes(self.pid(), self.marker, timeout=30)
        self.pid_file.remove()
        self.run_record.remove()
        return survivors

    def admin(self) -> KafkaAdminClient:
        return KafkaAdminClient(
            bootstrap_servers=self.settings.kafka_bootstrap_servers, client_id="local-stack",
            request_timeout_ms=10_000, **kafka_security(self.settings, KAFKA_ADMIN),
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
            if self.settings.secure:
                result = admin.create_acls(self._acls(name))
                if result["failed"]:
                    raise StackError(f"Kafka refused the ACLs of topic {name}: {result['failed'][0]}")
        finally:
            admin.close()

    def _acls(self, topic: str) -> list[ACL]:
        """The producer writes ``topic``; the consumer reads it in groups named after CONSUMER_GROUP."""
        def allow(principal: str, operation: ACLOperation, kind: ResourceType, name: str,
                  pattern: ACLResourcePatternType = ACLResourcePatternType.LITERAL) -> ACL:
            return ACL(f"User:{principal}", "*", operation, ACLPermissionType.ALLOW,
                       ResourcePattern(kind, name, pattern))

        return [
            allow(KAFKA_PRODUCER, ACLOperation.WRITE, ResourceType.TOPIC, topic),
            allow(KAFKA_PRODUCER, ACLOperation.DESCRIBE, ResourceType.TOPIC, topic),
            allow(KAFKA_PRODUCER, ACLOperation.IDEMPOTENT_WRITE, ResourceType.CLUSTER, "kafka-cluster"),
            allow(KAFKA_CONSUMER, ACLOperation.READ, ResourceType.TOPIC, topic),
            allow(KAFKA_CONSUMER, ACLOperation.DESCRIBE, ResourceType.TOPIC, topic),
            allow(KAFKA_CONSUMER, ACLOperation.READ, ResourceType.GROUP, self.settings.consumer_group,
                  ACLResourcePatternType.PREFIXED),
        ]

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


def _digest(salt: bytes, password: str) -> str:
    return hashlib.sha256(salt + password.encode()).hexdigest()


def _one_line_pem(pem: str) -> str:
    """A PEM block as one properties value (Kafka's inline PEM keystore reads the escaped newlines)."""
    return pem.strip().replace("\n", "\\n")
