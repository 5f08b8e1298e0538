"""After a point-in-time restore: the producer and the consumer group go back to what the restored
database holds, so the trades (and dead letters) written after the restore point arrive again.

- The consumer group is set to ``stock.consumer_offsets`` (written with each batch, so restored to the same
  instant): Kafka delivers again every message the restored database lacks. A partition with no row is
  read from its earliest retained message. The unique keys absorb what is delivered twice.
- The producer's acknowledged ids (``STATE_DIR/producer/acked*.json``) are lowered to each symbol's newest
  id in the restored database: its catch-up refetches the rest over REST, which also covers what Kafka no
  longer retains.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import psycopg2
from kafka import TopicPartition
from kafka.admin import KafkaAdminClient, MemberToRemove, OffsetSpec
from kafka.errors import KafkaError

from crypto_platform.credentials import KAFKA_ADMIN, kafka_security
from crypto_platform.settings import PlatformSettings
from local_stack.backup_plan import rewound_acked
from local_stack.processes import StackError, wait_until
from streaming_services.producer_state import StateError, read_state_file, state_files, write_state_file

GROUP_EMPTY_TIMEOUT_S = 120
KAFKA_RETRY_S = 60
T = TypeVar("T")
EMPTY_STATES = {"Empty", "Dead"}
log = logging.getLogger(__name__)


@dataclass
class Rewind:
    """What was rewound: partition → offset, producer file → {symbol: (before, after)} where it moved."""

    offsets: dict[int, int] = field(default_factory=dict)
    producer: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)


def restored_positions(settings: PlatformSettings, symbols: set[str]) -> tuple[dict[str, int], dict[int, int]]:
    """The restored database's newest trade id per symbol, and its consumer offsets per partition."""
    connection = psycopg2.connect(settings.database_url, connect_timeout=10)
    try:
        with connection, connection.cursor() as cursor:
            newest = {}
            for symbol in sorted(symbols):
                cursor.execute("SELECT max(agg_trade_id) FROM stock.real_time_prices WHERE symbol = %s", (symbol,))
                value = cursor.fetchone()[0]
                if value is not None:
                    newest[symbol] = value
            cursor.execute("SELECT partition, next_offset FROM stock.consumer_offsets WHERE topic = %s",
                           (settings.kafka_topic,))
            offsets = dict(cursor.fetchall())
    finally:
        connection.close()
    return newest, offsets


def rewind_producer(state_dir: Path, newest: dict[str, int]) -> dict[str, dict[str, tuple[int, int]]]:
    moved: dict[str, dict[str, tuple[int, int]]] = {}
    for path in state_files(state_dir):
        try:
            source, acked = read_state_file(path)
        except StateError as error:
            raise StackError(str(error)) from None
        rewound = rewound_acked(acked, newest)
        changes = {s: (acked[s], rewound[s]) for s in acked if rewound[s] != acked[s]}
        if changes:
            write_state_file(path, source, rewound)
            moved[path.name] = changes
    return moved


def rewind_consumer_group(settings: PlatformSettings, stored: dict[int, int]) -> dict[int, int]:
    """Sets the group's committed offsets to the restored database's (earliest where it has none). The
    group's processes are stopped; static members stay registered until their session ends, so they
    are removed first (a commit into a group with members is refused)."""
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers, client_id="crypto-restore",
                             **kafka_security(settings, KAFKA_ADMIN))
    try:
        group, topic = settings.consumer_group, settings.kafka_topic
        partitions = admin.describe_topics([topic])[0]["partitions"]
        members = retrying_kafka(describe_group, admin, group).get("members", [])
        static = [member["group_instance_id"] for member in members if member.get("group_instance_id")]
        if static:
            retrying_kafka(admin.remove_group_members, group, [MemberToRemove(group_instance_id=i) for i in static])
        if not wait_until(lambda: retrying_kafka(describe_group, admin, group).get("group_state") in EMPTY_STATES,
                          GROUP_EMPTY_TIMEOUT_S, 1):
            raise StackError(f"consumer group {group} still has members after {GROUP_EMPTY_TIMEOUT_S} s; "
                             "stop every consumer of it (another platform?) and run make restore again")
        specs = {TopicPartition(topic, p["partition_index"]): stored.get(p["partition_index"], OffsetSpec.EARLIEST)
                 for p in partitions}
        result = retrying_kafka(admin.reset_group_offsets, group, specs)
    except KafkaError as exc:
        raise StackError(f"could not rewind consumer group {settings.consumer_group}: {exc!r}"[:300]) from None
    finally:
        admin.close()
    failed = {tp.partition: outcome["error"] for tp, outcome in result.items()
              if outcome["error"] is not None and outcome["error"].__name__ != "NoError"}
    if failed:
        raise StackError(f"could not rewind consumer group {settings.consumer_group}: {failed}")
    return {tp.partition: outcome["offset"] for tp, outcome in sorted(result.items())}


def retrying_kafka(call: Callable[..., T], *args: object) -> T:
    """Retries what Kafka calls retriable (a group coordinator not elected yet on a fresh broker)."""
    deadline = time.monotonic() + KAFKA_RETRY_S
    while True:
        try:
            return call(*args)
        except KafkaError as exc:
            if not getattr(exc, "retriable", False) or time.monotonic() > deadline:
                raise
            time.sleep(1)


def describe_group(admin: KafkaAdminClient, group: str) -> dict:
    """Kafka's description of ``group``: its ``group_state``, its ``members`` (empty when unknown)."""
    return admin.describe_groups([group]).get(group, {})


def rewind_streams(settings: PlatformSettings) -> Rewind:
    symbols = set(settings.symbols)
    for path in state_files(settings.state_dir):
        try:
            symbols |= set(read_state_file(path)[1])
        except StateError as error:
            raise StackError(str(error)) from None
    newest, stored = restored_positions(settings, symbols)
    rewind = Rewind(offsets=rewind_consumer_group(settings, stored),
                    producer=rewind_producer(settings.state_dir, newest))
    log.info("streams rewound to the restored database",
             extra={"offsets": json.dumps(rewind.offsets), "producer": json.dumps(rewind.producer)})
    return rewind
