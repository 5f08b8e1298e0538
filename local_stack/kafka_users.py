"""SECURE=1's Kafka SCRAM users after the storage was formatted, through the admin API as ``platform-admin``.

``rotate_password`` (``make rotate-kafka-password KAFKA_USER=…``): a new password is written to
``STATE_DIR/secrets/kafka-<user>.next`` (0600) first, so it is never lost, then upserted on the running broker;
once it logs in and the old one is refused, it replaces ``kafka-<user>`` (a rename) and what uses it is
restarted: the producer's or the consumer's workers, or for ``platform-admin`` the broker itself (its
listener logs in as the admin, from ``server.properties``, which every start writes anew).

``ensure_service_users`` (each ``make up`` and compose's ``bootstrap``): the producer's and the consumer's
credentials are set from their secret files, so a file made anew works as every other secret does. The
admin cannot be set that way (it is who sets them): ``KafkaCluster.check_admin_password`` reports a
replaced file in one line instead.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING

from kafka.admin import KafkaAdminClient, UserScramCredentialUpsertion
from kafka.errors import KafkaError

from crypto_platform.credentials import (
    KAFKA_ADMIN,
    KAFKA_CONSUMER,
    KAFKA_PRINCIPALS,
    KAFKA_PRODUCER,
    kafka_password,
    kafka_security,
    secrets_dir,
)
from crypto_platform.settings import PlatformSettings
from local_stack.kafka_cluster import SCRAM, KafkaCluster
from local_stack.permissions import write_private
from local_stack.processes import StackError, wait_until

if TYPE_CHECKING:
    from local_stack.stack import LocalStack

SERVICE_USERS = {KAFKA_PRODUCER: "producer", KAFKA_CONSUMER: "consumer"}  # user -> the service that logs in
LOGIN_TIMEOUT_MS = 5_000  # a refused login reaches kafka-python only as a bootstrap timeout
CHANGE_TIMEOUT_S = 60  # the controller commits the credential, then the broker applies it

log = logging.getLogger(__name__)


def _upsert(admin: KafkaAdminClient, user: str, password: str) -> None:
    result = admin.alter_user_scram_credentials([UserScramCredentialUpsertion(user, SCRAM, password)])
    if result.get(user):
        raise StackError(f"Kafka refused the SCRAM credential of {user}: {result[user]}")


def _admin(broker: KafkaCluster) -> KafkaAdminClient:
    try:
        return broker.admin()
    except KafkaError as exc:
        raise StackError(f"Kafka at {broker.settings.kafka_bootstrap_servers} did not let {KAFKA_ADMIN} in "
                         f"({type(exc).__name__}); is it running (`make up`)?") from None


def logs_in(settings: PlatformSettings, user: str, password: str) -> bool:
    """The broker lets ``user`` in with ``password``."""
    options = {**kafka_security(settings, user), "sasl_plain_password": password}
    try:
        client = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers, client_id="local-stack-login",
                                  request_timeout_ms=10_000, bootstrap_timeout_ms=LOGIN_TIMEOUT_MS, **options)
    except KafkaError:
        return False
    client.close()
    return True


def ensure_service_users(broker: KafkaCluster) -> None:
    """The producer's and the consumer's SCRAM credentials from their secret files (SECURE=1)."""
    if not broker.settings.secure:
        return
    admin = _admin(broker)
    try:
        for user in SERVICE_USERS:
            _upsert(admin, user, kafka_password(broker.settings, user))
    finally:
        admin.close()
    log.info("kafka users set from their secret files", extra={"users": ",".join(SERVICE_USERS)})


def rotate_password(stack: LocalStack, user: str, say: Callable[[str], None] = log.info) -> None:
    settings, broker = stack.settings, stack.kafka
    if user not in KAFKA_PRINCIPALS:
        raise StackError(f"unknown Kafka user {user!r}; KAFKA_USER is one of {', '.join(KAFKA_PRINCIPALS)}")
    if not settings.secure:
        raise StackError("Kafka has SCRAM users with SECURE=1 only; run it with SECURE=1")
    secret = secrets_dir(settings) / f"kafka-{user}"
    old, new = kafka_password(settings, user), secrets.token_urlsafe(24)
    pending = secret.with_name(secret.name + ".next")
    write_private(pending, (new + "\n").encode())
    admin = _admin(broker)
    try:
        _upsert(admin, user, new)
    finally:
        admin.close()
    if not wait_until(lambda: logs_in(settings, user, new), CHANGE_TIMEOUT_S, interval=1):
        raise StackError(f"Kafka took {user}'s new password but does not let it in after {CHANGE_TIMEOUT_S} s; "
                         f"it is in {pending}: move it to {secret} once Kafka accepts it")
    if not wait_until(lambda: not logs_in(settings, user, old), CHANGE_TIMEOUT_S, interval=1):
        raise StackError(f"Kafka still lets {user} in with the old password after {CHANGE_TIMEOUT_S} s; "
                         f"the new one is in {pending}")
    pending.replace(secret)
    if user == KAFKA_ADMIN:
        broker.record_admin_password(new)
    log.info("kafka password rotated", extra={"user": user})
    say(f"{user}: new password in {secret}; the old one is refused")
    _restart_users_of(stack, user, say)


def _restart_users_of(stack: LocalStack, user: str, say: Callable[[str], None]) -> None:
    """The processes that logged in with the old password: they keep their sessions until they reconnect."""
    if user == KAFKA_ADMIN:
        if not stack.kafka.is_running():
            say("Kafka is not this stack's process (docker-compose?): restart its kafka service")
            return
        say("restarting Kafka (its listener logs in as platform-admin)")
        stack.kafka.stop()
        stack.kafka.start()
        return
    service = SERVICE_USERS[user]
    running = [s for s in stack.services()
               if (s.name == service or s.name.startswith(f"{service}-")) and s.is_running()]
    if not running:
        say(f"no {service} runs here; it logs in with the new password when it starts")
    for managed in running:
        say(f"restarting {managed.name}")
        managed.stop()
        managed.start(say=say)
