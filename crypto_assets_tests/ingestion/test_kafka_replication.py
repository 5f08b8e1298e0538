"""Three Kafka nodes (``KAFKA_BROKERS=3``): every partition of the trades topic on all three, a write
acknowledged once on two. The node leading the trades' partition is killed (SIGKILL) while real Binance trades
stream through the real producer and consumer: no trade is lost or doubled. Started again, the node catches up
and is back in every partition's in-sync replicas."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from kafka import KafkaConsumer, TopicPartition

from crypto_assets_tests.ingestion_harness import (
    IngestionChain,
    as_decimal_strings,
    count_rows,
    expected_trades,
    stored_trades,
    wait_until,
)
from crypto_platform.settings import PlatformSettings
from local_stack.ephemeral import ephemeral_stack, process_environment
from local_stack.kafka_cluster import KafkaCluster, KafkaNode
from local_stack.processes import StackError
from local_stack.stack import LocalStack

TRADES = ("spot_BTCUSDT_2023-04-05", "spot_BTCUSDT_trades_2023-04-04T235959_to_2023-04-05T000654.csv")
REPLAY_SPEED = 8  # the file's 415 s of trading (3,144 trades) in about 52 s


@pytest.fixture(scope="module")
def three_nodes() -> Iterator[LocalStack]:
    with process_environment({"KAFKA_BROKERS": "3"}), ephemeral_stack("crypto-test-kafka3-") as stack:
        yield stack


def partitions(stack: LocalStack) -> list[dict]:
    admin = stack.kafka.admin()
    try:
        return admin.describe_topics([stack.settings.kafka_topic])[0]["partitions"]
    finally:
        admin.close()


def busiest_partition(stack: LocalStack) -> int:
    """The partition the trades went to (one symbol: one key, one partition)."""
    consumer = KafkaConsumer(bootstrap_servers=stack.settings.kafka_bootstrap_servers)
    try:
        topic = stack.settings.kafka_topic
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)])
        return max(ends, key=ends.get).partition
    finally:
        consumer.close()


def node_of(stack: LocalStack, node_id: int) -> KafkaNode:
    return next(node for node in stack.kafka.nodes if node.node_id == node_id)


@pytest.mark.slow
@pytest.mark.integration
def test_a_node_killed_mid_stream_loses_no_trade_and_rejoins(three_nodes: LocalStack, shared_data: Path,
                                                             tmp_path: Path) -> None:
    stack, settings = three_nodes, three_nodes.settings
    assert [len(p["replica_nodes"]) for p in partitions(stack)] == [3] * settings.kafka_partitions
    assert (settings.kafka_replication_factor, settings.kafka_min_insync_replicas) == (3, 2)

    files = [shared_data.joinpath(*TRADES)]
    expected = expected_trades(files)
    chain = IngestionChain.start_server(settings, files, ("BTCUSDT",), tmp_path, speed=REPLAY_SPEED)
    try:
        chain.start_consumer()
        chain.start_producer()
        wait_until(lambda: count_rows(settings.database_url) >= len(expected) // 4, 120, "a quarter of the trades")
        leader = next(p["leader_id"] for p in partitions(stack) if p["partition_index"] == busiest_partition(stack))
        victim = node_of(stack, leader)
        process = psutil.Process(victim.pid())
        process.send_signal(signal.SIGKILL)
        process.wait(30)
        killed_at = count_rows(settings.database_url)
        print(f"killed node {leader} (the partition's leader) at {killed_at} rows", flush=True)
        wait_until(lambda: count_rows(settings.database_url) >= killed_at + len(expected) // 4, 120,
                   "trades written with a node down")
        assert not victim.is_running()
        stack.kafka.start()  # as `make up` does: the node that does not run is started
        wait_until(lambda: count_rows(settings.database_url) >= len(expected), 180, "every trade")
        time.sleep(2)  # anything doubled would land now
    finally:
        chain.stop()
    assert as_decimal_strings(expected) == stored_trades(settings.database_url)
    assert count_rows(settings.database_url) == len(expected)
    wait_until(lambda: all(sorted(p["isr_nodes"]) == [1, 2, 3] for p in partitions(stack)), 120,
               "the restarted node in every partition's in-sync replicas")


def test_a_storage_formatted_for_one_node_refuses_three_in_one_line(tmp_path: Path) -> None:
    one = KafkaCluster(PlatformSettings.from_env({"STATE_DIR": str(tmp_path)}))
    one.check_node_count()  # a new storage: noted as formatted for one node
    (tmp_path / "kafka" / "data").mkdir(parents=True)
    (tmp_path / "kafka" / "data" / "meta.properties").write_text("node.id=1\n")
    one.check_node_count()
    three = KafkaCluster(PlatformSettings.from_env({"STATE_DIR": str(tmp_path), "KAFKA_BROKERS": "3"}))
    with pytest.raises(StackError, match="formatted for KAFKA_BROKERS=1, not 3") as refused:
        three.check_node_count()
    assert "\n" not in str(refused.value)
