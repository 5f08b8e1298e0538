"""SECURE=1's Kafka: SASL_SSL with SCRAM-SHA-512 for clients, TLS client certificates on the controller
listener, and ACLs that let each principal do its own job only."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError

from crypto_platform.credentials import KAFKA_CONSUMER, KAFKA_PRINCIPALS, KAFKA_PRODUCER, kafka_password, kafka_security
from crypto_platform.settings import PlatformSettings
from local_stack.ephemeral import make_state_dir, stack_environment
from local_stack.kafka_cluster import KafkaCluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TOPIC = "binance-prices"


@pytest.fixture(scope="module")
def secure_kafka() -> Iterator[KafkaCluster]:
    state_dir = make_state_dir("crypto-test-kafka-sasl-")
    settings = PlatformSettings.from_env({**os.environ, **stack_environment(state_dir), "SECURE": "1"})
    broker = KafkaCluster(settings)
    try:
        broker.start()
        broker.ensure_topic(TOPIC, 3)
        yield broker
    finally:
        broker.stop()
        shutil.rmtree(state_dir, ignore_errors=True)


def producer(settings: PlatformSettings, **options) -> KafkaProducer:
    return KafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all", enable_idempotence=True,
                         max_block_ms=10_000, request_timeout_ms=10_000, **options)


def test_the_producer_writes_and_the_consumer_reads_every_message(secure_kafka):
    settings = secure_kafka.settings
    sender = producer(settings, **kafka_security(settings, KAFKA_PRODUCER))
    for trade_id in range(100):
        sender.send(TOPIC, key=b"BTCUSDT", value=str(trade_id).encode())
    sender.flush()
    sender.close()
    reader = KafkaConsumer(TOPIC, bootstrap_servers=settings.kafka_bootstrap_servers, group_id=settings.consumer_group,
                           auto_offset_reset="earliest", consumer_timeout_ms=15_000,
                           **kafka_security(settings, KAFKA_CONSUMER))
    received = []
    for record in reader:  # until all 100 arrived, or 15 s without a record
        received.append(int(record.value))
        if len(received) == 100:
            break
    received.sort()
    reader.close()
    assert received == list(range(100))


@pytest.mark.parametrize("who", ["plaintext", "wrong password"])
def test_a_client_without_the_right_credentials_is_refused(secure_kafka, who):
    """The broker's refusal reaches kafka-python only as a bootstrap timeout (the SASL error is logged now and
    then: the broker closes the socket after its failed-authentication delay, often before the answer is read);
    the same broker serves the right credentials in the test above."""
    settings = secure_kafka.settings
    options = kafka_security(settings, KAFKA_PRODUCER)
    if who == "plaintext":
        options = {}
    else:
        options["sasl_plain_password"] = "not-the-password"
    with pytest.raises(KafkaError, match="Unable to bootstrap"):
        producer(settings, bootstrap_timeout_ms=5_000, **options).send(TOPIC, b"x").get(timeout=5)


def test_the_consumers_principal_may_not_produce(secure_kafka):
    settings = secure_kafka.settings
    with pytest.raises(KafkaError, match="Authorization"):
        producer(settings, **kafka_security(settings, KAFKA_CONSUMER)).send(TOPIC, b"x").get(timeout=15)


def test_the_consumer_may_read_in_its_own_group_only(secure_kafka):
    settings = secure_kafka.settings
    reader = KafkaConsumer(TOPIC, bootstrap_servers=settings.kafka_bootstrap_servers, group_id="someone-elses-group",
                           auto_offset_reset="earliest", consumer_timeout_ms=5_000,
                           **kafka_security(settings, KAFKA_CONSUMER))
    try:
        with pytest.raises(KafkaError, match="Authorization"):
            list(reader)
    finally:
        reader.close()


def test_the_controller_listener_wants_a_client_certificate(secure_kafka):
    settings = secure_kafka.settings
    context = ssl.create_default_context(cafile=str(settings.tls_ca_cert))
    with socket.create_connection((settings.bind_host, settings.kafka_controller_port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        # TLS 1.3 completes the handshake before the server checks the (missing) certificate: it then
        # closes the connection instead of answering.
        with pytest.raises((ssl.SSLError, ConnectionError)):
            tls.sendall(b"\x00\x00\x00\x01\x00")
            assert tls.recv(1) == b""
            raise ConnectionError("closed")


def test_no_kafka_password_on_a_command_line_or_in_a_readable_file(secure_kafka):
    settings = secure_kafka.settings
    processes = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    kafka_folder = settings.state_dir / "kafka"
    assert not (kafka_folder / "format.args").exists()
    assert oct((kafka_folder / "server.properties").stat().st_mode & 0o777) == "0o600"
    for principal in KAFKA_PRINCIPALS:
        assert kafka_password(settings, principal) not in processes
