"""SECURE=1's Kafka SCRAM passwords after the storage was formatted: ``make rotate-kafka-password`` and a
secret file made anew at ``make up`` (the broker's part of it: ``KafkaCluster.start``, ``bootstrap_kafka``)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError

from crypto_platform.credentials import KAFKA_ADMIN, KAFKA_CONSUMER, KAFKA_PRODUCER, kafka_password, kafka_security
from crypto_platform.settings import PlatformSettings
from local_stack.ephemeral import make_state_dir, stack_environment
from local_stack.kafka_users import logs_in, rotate_password
from local_stack.processes import StackError
from local_stack.stack import LocalStack

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TOPIC = "binance-prices"


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    state_dir = make_state_dir("crypto-test-kafka-rotate-")
    settings = PlatformSettings.from_env({**os.environ, **stack_environment(state_dir), "SECURE": "1",
                                          "KAFKA_TOPIC": TOPIC, "KAFKA_PARTITIONS": "3"})
    local = LocalStack(settings)
    try:
        local.kafka.start()
        local.bootstrap_kafka()
        yield local
    finally:
        local.kafka.stop()
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def seen_passwords() -> set[str]:
    """Every password a test had: none may be in a log or on a command line (checked last)."""
    return set()


def produce(settings: PlatformSettings, value: bytes) -> None:
    sender = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all", enable_idempotence=True,
                           max_block_ms=15_000, request_timeout_ms=10_000, **kafka_security(settings, KAFKA_PRODUCER))
    try:
        sender.send(TOPIC, key=b"BTCUSDT", value=value).get(timeout=15)
    finally:
        sender.close()


def consumed(settings: PlatformSettings, wanted: bytes) -> bool:
    reader = KafkaConsumer(TOPIC, bootstrap_servers=settings.kafka_bootstrap_servers, group_id=settings.consumer_group,
                           auto_offset_reset="earliest", consumer_timeout_ms=15_000,
                           **kafka_security(settings, KAFKA_CONSUMER))
    try:
        return any(record.value == wanted for record in reader)
    finally:
        reader.close()


def test_a_rotated_service_user_logs_in_with_the_new_password_only(stack, seen_passwords, caplog):
    caplog.set_level(logging.INFO, logger="local_stack")
    settings = stack.settings
    old = {user: kafka_password(settings, user) for user in (KAFKA_PRODUCER, KAFKA_CONSUMER)}
    for user in old:
        rotate_password(stack, user)
    new = {user: kafka_password(settings, user) for user in old}
    seen_passwords.update(old.values(), new.values())
    secret = settings.state_dir / "secrets" / f"kafka-{KAFKA_PRODUCER}"
    assert oct(secret.stat().st_mode & 0o777) == "0o600"
    assert not secret.with_name(secret.name + ".next").exists()
    for user in old:
        assert old[user] != new[user]
        assert not logs_in(settings, user, old[user])
    produce(settings, b"after-rotation")
    assert consumed(settings, b"after-rotation")
    with pytest.raises(KafkaError, match="Authorization"):  # the consumer's ACLs are unchanged: it may not write
        KafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, max_block_ms=15_000,
                      **kafka_security(settings, KAFKA_CONSUMER)).send(TOPIC, b"x").get(timeout=15)
    assert "kafka password rotated" in caplog.text
    assert not any(password in caplog.text for password in seen_passwords)


def test_after_rotating_the_admin_the_stack_still_creates_topics_and_acls(stack, seen_passwords, caplog):
    caplog.set_level(logging.INFO, logger="local_stack")
    settings = stack.settings
    old = kafka_password(settings, KAFKA_ADMIN)
    pids = stack.kafka.pids()
    rotate_password(stack, KAFKA_ADMIN)
    new = kafka_password(settings, KAFKA_ADMIN)
    seen_passwords.update((old, new))
    assert new != old and stack.kafka.pids() != pids  # restarted with the new password in its properties
    assert new in (settings.state_dir / "kafka" / "server.properties").read_text()
    assert not logs_in(settings, KAFKA_ADMIN, old)
    stack.kafka.ensure_topic("rotation-check", 1)
    assert "rotation-check" in stack.kafka.admin().list_topics()
    stack.kafka.stop()  # the next `make up`
    stack.kafka.start()
    stack.bootstrap_kafka()
    produce(settings, b"after-admin-rotation")
    assert consumed(settings, b"after-admin-rotation")
    assert not any(password in caplog.text for password in seen_passwords)


def test_make_up_sets_a_service_users_password_from_a_file_made_anew(stack, seen_passwords):
    """Regression: the broker learnt the users only when its storage was formatted, so a producer secret made
    anew was refused forever."""
    settings = stack.settings
    secret = settings.state_dir / "secrets" / f"kafka-{KAFKA_PRODUCER}"
    seen_passwords.add(secret.read_text().strip())
    secret.unlink()
    stack.kafka.stop()
    stack.kafka.start()
    stack.bootstrap_kafka()
    seen_passwords.add(kafka_password(settings, KAFKA_PRODUCER))
    produce(settings, b"after-new-file")
    assert consumed(settings, b"after-new-file")


def test_make_up_names_an_admin_file_made_anew_in_one_line(stack, seen_passwords):
    """Nothing but the admin may set the admin's password: a replaced file is one line at once, not a broker that
    does not answer for minutes."""
    settings = stack.settings
    secret = settings.state_dir / "secrets" / f"kafka-{KAFKA_ADMIN}"
    kept = secret.read_bytes()
    secret.unlink()
    stack.kafka.stop()
    try:
        started = time.monotonic()
        with pytest.raises(StackError, match=f"{secret} is not the password .* rotate-kafka-password") as failure:
            stack.kafka.start()
        assert time.monotonic() - started < 10 and "\n" not in str(failure.value)
        seen_passwords.add(kafka_password(settings, KAFKA_ADMIN))
    finally:
        secret.write_bytes(kept)
    stack.kafka.start()
    stack.bootstrap_kafka()


def test_no_password_in_the_logs_or_on_a_command_line(stack, seen_passwords):
    assert len(seen_passwords) >= 6
    processes = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    logs = "".join(path.read_text(errors="replace") for path in (stack.settings.state_dir / "logs").glob("*"))
    for password in seen_passwords:
        assert password not in processes
        assert password not in logs
