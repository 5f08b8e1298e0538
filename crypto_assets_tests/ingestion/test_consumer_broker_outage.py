"""A consumer holding partitions survives the broker going away: its lag report and its poll fail softly
while the broker is down, and it writes what arrives once the broker is back."""

from __future__ import annotations

import threading
import time
from decimal import Decimal

import pytest
from kafka import KafkaProducer

from crypto_assets_tests.ingestion_harness import count_rows, wait_until
from streaming_services.consumer import ConsumerConfig, PricesConsumer
from streaming_services.messages import TradeMessage


def send_trades(bootstrap_servers: str, topic: str, agg_ids: range) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap_servers, acks="all")
    for agg_id in agg_ids:
        trade = TradeMessage("BTCUSDT", Decimal("61234.56"), Decimal("0.5"), int(time.time() * 1000), agg_id,
                             agg_id, agg_id, False, "test")
        producer.send(topic, key=trade.key, value=trade.to_json())
    producer.flush()
    producer.close()


@pytest.mark.slow
def test_the_consumer_keeps_going_through_a_broker_restart(platform_env, kafka_topic, db, stack) -> None:
    settings = platform_env(KAFKA_TOPIC=kafka_topic, SYMBOLS="BTCUSDT", CONSUMER_GROUP=f"group-{kafka_topic}")
    consumer = PricesConsumer(ConsumerConfig.from_settings(settings))
    errors: list[BaseException] = []

    def run() -> None:
        try:
            consumer.run()
        except BaseException as exc:  # the test reports it instead of a thread traceback
            errors.append(exc)
            raise

    thread = threading.Thread(target=run, name="consumer", daemon=True)
    thread.start()
    try:
        send_trades(settings.kafka_bootstrap_servers, kafka_topic, range(1, 101))
        wait_until(lambda: count_rows(settings.database_url) == 100, 60, "the first trades")
        stack.kafka.stop()
        try:
            consumer_alive_while_down = [thread.is_alive()]
            for _ in range(10):
                time.sleep(0.5)
                consumer_alive_while_down.append(thread.is_alive())
        finally:
            stack.kafka.start()
        send_trades(settings.kafka_bootstrap_servers, kafka_topic, range(101, 201))
        wait_until(lambda: count_rows(settings.database_url) == 200, 120, "the trades sent after the restart")
        assert all(consumer_alive_while_down) and thread.is_alive() and not errors, errors
    finally:
        consumer.stop()
        thread.join(30)
