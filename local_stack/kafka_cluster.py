"""Apache Kafka in KRaft combined mode, run with the machine's Java from Maven jars: ``KAFKA_BROKERS`` nodes,
each a broker and a controller (one, or three that survive losing any one), each a ``ManagedService``.

Node 1 keeps ``<state>/kafka`` (data, properties, log ``kafka.log``); node I > 1 has ``<state>/kafka/node-I``
and ``kafka-I.log``. The nodes share the cluster id and the admin digest in ``<state>/kafka``, listen on
``KAFKA_PORT + I - 1`` and ``KAFKA_CONTROLLER_PORT + I - 1``, and advertise the I-th address of
``KAFKA_BOOTSTRAP_SERVERS``. Topics get ``KAFKA_REPLICATION_FACTOR`` copies and ``KAFKA_MIN_INSYNC_REPLICAS``,
so the producer's ``acks=all`` waits for that many copies. A storage formatted for another number of nodes
is refused with one line (a KRaft quorum's voters are fixed when it is formatted).

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

A node advertises its address of ``KAFKA_BOOTSTRAP_SERVERS`` (``BIND_HOST:KAFKA_PORT + I - 1`` by default):
where clients find it, also when it listens on every address, as in docker-compose, whose ``kafka`` services
run their node in the foreground (``run_in_foreground``) with the same properties and storage.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import shutil
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
from local_stack.processes import StackError, require_free_port, tail, wait_until
from local_stack.service import ManagedService

LOG4J = Path(__file__).with_name("kafka") / "log4j.properties"
READY_TIMEOUT_S = 180  # ~10 s idle; over 90 s at load 40+ (a node that dies is reported at once)
STOP_TIMEOUT_S = 30  # a node hands its partitions' leadership over before it exits
WATCHED = ("BIND_HOST", "KAFKA_BROKERS", "KAFKA_PORT", "KAFKA_CONTROLLER_PORT", "KAFKA_BOOTSTRAP_SERVERS",
           "KAFKA_HEAP", "KAFKA_RETENTION_HOURS", "KAFKA_GROUP_JOIN_DELAY_MS", "KAFKA_REPLICATION_FACTOR",
           "KAFKA_MIN_INSYNC_REPLICAS", "SECURE")
SCRAM = "SCRAM-SHA-512"
SECURED_MARKER = "scram-users"  # in the kafka folder: the storage was formatted with the SCRAM users
ADMIN_DIGEST = "platform-admin.sha256"  # in the kafka folder: salt and SHA-256 of the admin password it knows
NODE_COUNT = "nodes"  # in the kafka folder: how many nodes the storage was formatted for (absent: one)

log = logging.getLogger(__name__)


def node_address(settings: PlatformSettings, node_id: int) -> str:
    """``host:port`` where clients find node ``node_id``: its entry of ``KAFKA_BOOTSTRAP_SERVERS``."""
    return settings.kafka_bootstrap_servers.split(",")[node_id - 1].strip()


def java_command(main_class: str, *args: str, heap: str = "256m") -> list[str]:
    """The JVM's command line; ``main_class`` may be an ``@file`` naming the class and its arguments (the
    launcher reads argument files up to the main class only)."""
    return [
        shutil.which("java") or "java", f"-Xmx{heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
        f"-Dlog4j.configuration=file:{LOG4J}", "-cp", str(ensure_jars() / "*"), main_class, *args,
    ]


class KafkaNode:
    """Node ``node_id`` (1-based) of the cluster: its properties, its storage formatted once, its process."""

    def __init__(self, settings: PlatformSettings, node_id: int) -> None:
        self.settings = settings
        self.node_id = node_id
        self.cluster_root = settings.state_dir / "kafka"
        self.root = self.cluster_root if node_id == 1 else self.cluster_root / f"node-{node_id}"
        self.data_dir = self.root / "data"
        self.process = self._service([])

    @property
    def name(self) -> str:
        """``kafka``, ``kafka-2``, ``kafka-3``: node 1 keeps the single broker's name (pid file, log)."""
        return "kafka" if self.node_id == 1 else f"kafka-{self.node_id}"

    @property
    def port(self) -> int:
        return self.settings.kafka_port + self.node_id - 1

    @property
    def controller_port(self) -> int:
        return self.settings.kafka_controller_port + self.node_id - 1

    @property
    def advertised(self) -> str:
        return node_address(self.settings, self.node_id)

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    def pid(self) -> int | None:
        return self.process.pid()

    def is_running(self) -> bool:
        return self.process.is_running()

    def _service(self, command: list[str]) -> ManagedService:
        return ManagedService(
            self.name, self.settings, command, port=self.port, port_variable="KAFKA_PORT", before_start=self._prepare,
            # Alive is enough here: a node answers only once a quorum of nodes runs (``KafkaCluster.start``).
            ready=lambda: True, env={"KAFKA_LOG4J_OPTS": ""}, watched=WATCHED, stop_timeout_s=STOP_TIMEOUT_S,
            on_changed_settings="refuse",  # holds data: not restarted behind the user's back
        )

    def _command(self) -> list[str]:
        return java_command("kafka.Kafka", str(self.root / "server.properties"), heap=self.settings.kafka_heap)

    def start(self, say) -> None:
        self.process = self._service(self._command())
        self.process.start(say=say)

    def run_in_foreground(self) -> None:
        """docker-compose's ``kafka`` services: properties and storage as ``start`` makes them, then the node
        replaces this process (its log on stdout, the container's)."""
        self._service(self._command()).run_in_foreground()

    def stop(self) -> list:
        return self.process.stop()

    def _prepare(self) -> None:
        require_free_port(self.settings.bind_host, self.controller_port, "KAFKA_CONTROLLER_PORT", self.name)
        self.root.mkdir(parents=True, exist_ok=True)
        self._format_once(self._write_properties())

    def _controller_address(self, node_id: int) -> str:
        """Where node ``node_id``'s controller is reached: ``BIND_HOST``, or that node's advertised host when
        ``BIND_HOST`` is a wildcard (not an address to connect to)."""
        host = self.settings.bind_host
        if host in ("0.0.0.0", "::"):
            host = node_address(self.settings, node_id).rsplit(":", 1)[0]
        return f"{host}:{self.settings.kafka_controller_port + node_id - 1}"

    def _write_properties(self) -> Path:
        s = self.settings
        host = s.bind_host
        voters = ",".join(f"{node}@{self._controller_address(node)}" for node in range(1, s.kafka_brokers + 1))
        copies, in_sync = str(s.kafka_replication_factor), str(s.kafka_min_insync_replicas)
        properties = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://{host}:{self.port},CONTROLLER://{host}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{self.advertised}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.partitions": str(s.kafka_partitions),
            "auto.create.topics.enable": "false",
            "default.replication.factor": copies,
            "min.insync.replicas": in_sync,
            "offsets.topic.replication.factor": copies,
            "offsets.topic.num.partitions": "3",
            "transaction.state.log.replication.factor": copies,
            "transaction.state.log.min.isr": in_sync,
            # A replica that was down must catch up before it leads again: no acknowledged trade is lost.
            "unclean.leader.election.enable": "false",
            "group.initial.rebalance.delay.ms": str(s.kafka_group_join_delay_ms),
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
            "listeners": f"SASL_SSL://{host}:{self.port},CONTROLLER://{host}:{self.controller_port}",
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
            # The admin principal, and the nodes themselves on the controller listener (their certificate's name).
            "super.users": f"User:{KAFKA_ADMIN};User:CN={DEFAULT_HOSTS[0]}",
        }

    def _format_once(self, properties: Path) -> None:
        secured = self.cluster_root / SECURED_MARKER
        if (self.data_dir / "meta.properties").exists():
            if self.settings.secure and not secured.exists():
                raise StackError(f"Kafka's storage in {self.data_dir} was formatted without SECURE=1, so it has no "
                                 "SCRAM users; run `make clean` (its messages are lost) or leave SECURE unset")
            return
        arguments = ["kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id(self.cluster_root)}",
                     "-c", str(properties)]
        if self.settings.secure:
            for principal in KAFKA_PRINCIPALS:
                password = kafka_password(self.settings, principal)
                arguments += ["--add-scram", f"{SCRAM}=[name={principal},password={password}]"]
        # The arguments reach Java through an @argument file, so no password is on the command line.
        argument_file = self.root / "format.args"
        write_private(argument_file, "".join(f'"{argument}"\n' for argument in arguments).encode())
        try:
            result = subprocess.run(java_command(f"@{argument_file}"), capture_output=True, text=True, check=False)
        finally:
            argument_file.unlink(missing_ok=True)
        if result.returncode != 0:
            last_line = (result.stdout + result.stderr).strip().splitlines()[-1]
            raise StackError(f"formatting Kafka's storage failed: {last_line}")
        if self.settings.secure:
            secured.touch()


class KafkaCluster:
    """The ``KAFKA_BROKERS`` nodes in ``<state>/kafka``, started and stopped together, and what the stack asks of
    the running cluster: its SCRAM admin, the trades topic and its ACLs."""

    def __init__(self, settings: PlatformSettings) -> None:
        self.settings = settings
        self.root = settings.state_dir / "kafka"
        self.nodes = [KafkaNode(settings, node) for node in range(1, settings.kafka_brokers + 1)]

    @property
    def port(self) -> int:
        return self.settings.kafka_port

    def pids(self) -> list[int | None]:
        return [node.pid() for node in self.nodes]

    def is_running(self) -> bool:
        """Every node runs."""
        return all(node.is_running() for node in self.nodes)

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

    def check_node_count(self) -> None:
        """A storage formatted for another number of nodes is refused: its quorum's voters are fixed."""
        if not (self.root / "data" / "meta.properties").exists():
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / NODE_COUNT).write_text(f"{self.settings.kafka_brokers}\n")
            return
        marker = self.root / NODE_COUNT
        formatted = int(marker.read_text()) if marker.exists() else 1
        if formatted != self.settings.kafka_brokers:
            raise StackError(f"Kafka's storage in {self.root} was formatted for KAFKA_BROKERS={formatted}, not "
                             f"{self.settings.kafka_brokers}: set it back, or stop the stack and remove {self.root} "
                             "(messages not yet in PostgreSQL are lost)")

    def start(self, say=log.info) -> None:
        """Starts the nodes that do not run and waits until every node is in the cluster's metadata. A node
        running with other settings is not restarted behind the user's back: one line says how."""
        self.check_admin_password()
        self.check_node_count()
        for node in self.nodes:
            node.start(say)
        if not wait_until(self._every_node_answers, READY_TIMEOUT_S, interval=0.5):
            raise StackError(f"Kafka did not have its {len(self.nodes)} node(s) within {READY_TIMEOUT_S} s; read "
                             + " and ".join(f"{node.log_path}:\n{tail(node.log_path)}" for node in self.nodes))
        if self.settings.secure and not (self.root / ADMIN_DIGEST).exists():
            self.record_admin_password(kafka_password(self.settings, KAFKA_ADMIN))  # it just logged in with it

    def run_node_in_foreground(self, node_id: int) -> None:
        """docker-compose's ``kafka`` services: node ``node_id`` in the foreground (its storage made as ``start``
        makes it)."""
        self.check_admin_password()
        self.check_node_count()
        self.nodes[node_id - 1].run_in_foreground()

    def stop(self) -> list:
        """Stops every node and anything left with their markers; returns the processes that survived."""
        return [survivor for node in reversed(self.nodes) for survivor in node.stop()]

    def admin(self, bootstrap_servers: str | None = None) -> KafkaAdminClient:
        """An admin client of the cluster (or of the nodes ``bootstrap_servers`` names only)."""
        return KafkaAdminClient(
            bootstrap_servers=bootstrap_servers or self.settings.kafka_bootstrap_servers, client_id="local-stack",
            request_timeout_ms=10_000, **kafka_security(self.settings, KAFKA_ADMIN),
        )

    def _every_node_answers(self) -> bool:
        for node in self.nodes:
            if not node.is_running():
                raise StackError(f"Kafka node {node.name} exited during start; read {node.log_path}:\n"
                                 f"{tail(node.log_path)}")
        try:
            admin = self.admin()
        except KafkaError:
            return False
        try:
            return len(admin.describe_cluster()["brokers"]) == len(self.nodes)
        except KafkaError:
            return False
        finally:
            admin.close()

    def _every_node_knows(self, topic: str, partitions: int) -> bool:
        """Each node's own metadata has the topic with a leader for every partition (a node that learns of
        it later would answer clients that it does not exist)."""
        for node in self.nodes:
            try:
                admin = self.admin(node.advertised)
            except KafkaError:
                return False
            try:
                described = admin.describe_topics([topic])[0]
            except KafkaError:
                return False
            finally:
                admin.close()
            leaders = [p for p in described["partitions"] if p["leader_id"] >= 0]
            if described["error_code"] or len(leaders) < partitions:
                return False
        return True

    def ensure_topic(self, name: str, partitions: int) -> None:
        """Creates the topic when missing (``KAFKA_REPLICATION_FACTOR`` copies); an existing topic is kept."""
        s = self.settings
        configs = {"retention.ms": str(s.kafka_retention_hours * 3600 * 1000),
                   "min.insync.replicas": str(s.kafka_min_insync_replicas)}
        admin = self.admin()
        try:
            if name not in admin.list_topics():
                try:
                    admin.create_topics(
                        [NewTopic(name, num_partitions=partitions, replication_factor=s.kafka_replication_factor,
                                  topic_configs=configs)],
                        wait_for_metadata=True,
                    )
                    log.info("topic created", extra={"topic": name, "partitions": partitions,
                                                     "replicas": s.kafka_replication_factor})
                except TopicAlreadyExistsError:
                    pass
            if not wait_until(lambda: self._every_node_knows(name, partitions), READY_TIMEOUT_S, interval=0.5):
                raise StackError(f"Kafka's nodes do not all know topic {name} after {READY_TIMEOUT_S} s")
            if s.secure:
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


def cluster_id(folder: Path) -> str:
    """The cluster's id in ``folder/cluster.id``, made once; nodes starting at once (docker-compose's, on one
    volume) all read the first one written."""
    path = folder / "cluster.id"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        draft = folder / f".cluster.id.{os.getpid()}"
        draft.write_text(_kafka_cluster_id())
        try:
            os.link(draft, path)
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return path.read_text().strip()


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
