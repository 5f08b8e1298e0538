"""Consumers of one group always end up sharing every partition, whenever the topic's metadata changes.

kafka-python 3.0.12 drops the result of a join when the group leader rejoined because its topic metadata
changed and ``poll`` timed out meanwhile: that member then stays idle for good. A short poll timeout makes
every such join time out, so these tests hit the case each time instead of once in many runs.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from kafka.admin import NewPartitions

from local_stack.stack import LocalStack
from streaming_services.consumer import ConsumerConfig, PricesConsumer

SHORT_POLL_MS = 20
SHARE_DEADLINE_S = 60


@pytest.fixture
def consumers(platform_env) -> Iterator[list[PricesConsumer]]:
    started: list[tuple[PricesConsumer, threading.Thread]] = []
    yield started
    for consumer, _ in started:
        consumer.stop()
    for _, thread in started:
        thread.join(30)


def start(consumers: list, config: ConsumerConfig) -> None:
    """Builds (subscribes) and runs a consumer on a thread of its own, as ``make up``'s process would."""
    def run() -> None:
        consumer = PricesConsumer(config)
        consumers.append((consumer, threading.current_thread()))
        consumer.run()

    threading.Thread(target=run, name=f"consumer-{len(consumers) + 1}", daemon=True).start()


def wait_until_shared(consumers: list, partitions: int) -> list[set[int]]:
    deadline = time.monotonic() + SHARE_DEADLINE_S
    while time.monotonic() < deadline:
        owned = [{tp.partition for tp in consumer.kafka.assignment()} for consumer, _ in consumers]
        if len(owned) == 2 and all(owned) and not owned[0] & owned[1] and len(owned[0] | owned[1]) == partitions:
            return owned
        time.sleep(0.5)
    raise AssertionError(f"after {SHARE_DEADLINE_S} s the group's members own {owned} of {partitions} partitions")


def group_config(platform_env, topic: str) -> ConsumerConfig:
    settings = platform_env(KAFKA_TOPIC=topic, CONSUMER_GROUP=f"group-{topic}")
    return dataclasses.replace(ConsumerConfig.from_settings(settings), poll_timeout_ms=SHORT_POLL_MS)


def test_consumers_started_before_their_topic_exists_share_it(stack: LocalStack, platform_env, consumers) -> None:
    topic = f"late-{uuid.uuid4().hex[:12]}"
    config = group_config(platform_env, topic)
    start(consumers, config)
    start(consumers, config)
    time.sleep(3)
    stack.kafka.ensure_topic(topic, 3)
    wait_until_shared(consumers, 3)


def test_consumers_share_partitions_added_while_they_run(stack: LocalStack, platform_env, consumers) -> None:
    topic = f"grow-{uuid.uuid4().hex[:12]}"
    stack.kafka.ensure_topic(topic, 1)
    config = group_config(platform_env, topic)
    start(consumers, config)
    start(consumers, config)
    deadline = time.monotonic() + SHARE_DEADLINE_S
    while len(consumers) < 2 or not any(consumer.kafka.assignment() for consumer, _ in consumers):
        assert time.monotonic() < deadline, "the group never took the first partition"
        time.sleep(0.5)
    admin = stack.kafka.admin()
    try:
        admin.create_partitions({topic: NewPartitions(total_count=3)})
    finally:
        admin.close()
    for consumer, _ in consumers:
        consumer.kafka.topics()  # a metadata refresh now rather than after metadata_max_age_ms (5 min)
    wait_until_shared(consumers, 3)
