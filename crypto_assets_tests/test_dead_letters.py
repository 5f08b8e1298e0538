"""Bad input through the real Kafka and PostgreSQL: every bad message becomes a dead letter with its reason,
byte for byte, every good one a row, and the consumer keeps going (property-based, thousands of cases)."""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka import KafkaProducer

from streaming_services.consumer import ConsumerConfig, PricesConsumer
from streaming_services.messages import MAX_MESSAGE_BYTES, InvalidMessage, TradeMessage, parse_trade_message

SYMBOLS = ("BTCUSDT", "ETHUSDT")
AGG_TRADE = {"e": "aggTrade", "E": 1723161255000, "s": "BTCUSDT", "a": 1, "p": "61234.56000000",
             "q": "0.00120000", "f": 10, "l": 12, "T": 1723161255000, "m": False, "M": True}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=10,
)
EDGE_VALUES = {"price": ["NaN", "-Infinity", "-1", "0", "1e-9", "123456789012345"],
               "volume": ["0", "-0.5", "Infinity", "1.000000001"],
               "symbol": ['"DOGEUSDT"', '""', "7", '"btcusdt"'],
               "timestamp": ["0", "-1", "99999999999999", '"1723161255000"', "1.5"],
               "agg_trade_id": ["-1", "true", "1e3", "null"]}


def valid_document(agg_id: int) -> dict:
    return json.loads(TradeMessage.from_agg_trade({**AGG_TRADE, "a": agg_id}, "test").to_json())


@st.composite
def bad_messages(draw) -> bytes | None:
    """Malformed JSON, wrong types, missing fields, NaN, negative or zero values, unknown symbols, oversized
    payloads, tombstones, or a valid message with fields replaced by anything JSON can hold."""
    kind = draw(st.sampled_from(["bytes", "json", "edge", "fields", "oversized", "tombstone"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "tombstone":
        return None
    document = valid_document(draw(st.integers(1, 10**6)))
    if kind == "oversized":
        document["padding"] = "x" * draw(st.integers(MAX_MESSAGE_BYTES, 3 * MAX_MESSAGE_BYTES))
        return json.dumps(document).encode()
    if kind == "edge":
        name = draw(st.sampled_from(sorted(EDGE_VALUES)))
        text = json.dumps({k: v for k, v in document.items() if k != name})
        return (text[:-1] + f', "{name}": {draw(st.sampled_from(EDGE_VALUES[name]))}}}').encode()
    for name in draw(st.lists(st.sampled_from(sorted(document)), min_size=1, max_size=3)):
        if draw(st.booleans()):
            document.pop(name, None)
        else:
            document[name] = draw(json_values)
    return json.dumps(document, default=str).encode()


def test_every_bad_message_is_dead_lettered_and_every_good_one_written(platform_env, kafka_topic, db) -> None:
    config = ConsumerConfig.from_settings(platform_env(KAFKA_TOPIC=kafka_topic, SYMBOLS=",".join(SYMBOLS),
                                                       CONSUMER_GROUP=f"group-{kafka_topic}"))
    consumer = PricesConsumer(config)
    thread = threading.Thread(target=consumer.run, name="consumer", daemon=True)
    thread.start()
    kafka = KafkaProducer(bootstrap_servers=config.bootstrap_servers, acks="all", linger_ms=5,
                          max_request_size=4 * MAX_MESSAGE_BYTES)
    good_ids = itertools.count(10**7)
    expected_rows: set[tuple[str, int]] = set()
    expected_dead: dict[tuple[int, int], tuple[bytes, str]] = {}
    now_ms = time.time_ns() // 1_000_000

    @settings(max_examples=60, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.lists(bad_messages(), min_size=20, max_size=80))
    def produce(payloads: list[bytes | None]) -> None:
        good = TradeMessage.from_agg_trade({**AGG_TRADE, "a": next(good_ids)}, "test")
        futures = [(raw, kafka.send(kafka_topic, key=b"bad", value=raw)) for raw in payloads]
        futures.append((good.to_json(), kafka.send(kafka_topic, key=good.key, value=good.to_json())))
        kafka.flush()
        for raw, future in futures:
            metadata = future.get(30)
            try:
                trade = parse_trade_message(raw, frozenset(SYMBOLS), now_ms)
            except InvalidMessage as exc:
                expected_dead[(metadata.partition, metadata.offset)] = (raw or b"", str(exc))
            else:
                expected_rows.add((trade.symbol, trade.agg_trade_id))

    try:
        produce()
        assert len(expected_dead) >= 1000
        cursor = db.cursor()

        def stored() -> tuple[dict, set]:
            cursor.execute('SELECT partition, "offset", raw_payload, payload_bytes, payload_sha256, error'
                           " FROM stock.rejected_messages WHERE topic = %s", (kafka_topic,))
            dead = {(p, o): (bytes(raw), length, bytes(digest), error)
                    for p, o, raw, length, digest, error in cursor.fetchall()}
            cursor.execute("SELECT symbol, agg_trade_id FROM stock.real_time_prices")
            return dead, set(cursor.fetchall())

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            dead, rows = stored()
            if len(dead) >= len(expected_dead) and rows >= expected_rows:
                break
            time.sleep(0.5)
        assert thread.is_alive(), "the consumer stopped on bad input"
        assert rows == expected_rows
        assert dead.keys() == expected_dead.keys()
        for position, (raw, reason) in expected_dead.items():
            assert dead[position] == (raw[:config.dead_letter_max_bytes], len(raw), hashlib.sha256(raw).digest(), reason)
    finally:
        kafka.close()
        consumer.stop()
        thread.join(30)


def test_a_one_megabyte_message_is_stored_capped_with_its_length_and_hash(platform_env, kafka_topic, db) -> None:
    config = ConsumerConfig.from_settings(platform_env(KAFKA_TOPIC=kafka_topic, SYMBOLS=",".join(SYMBOLS),
                                                       CONSUMER_GROUP=f"group-{kafka_topic}"))
    assert config.dead_letter_max_bytes == 64 * 1024
    raw = json.dumps({**AGG_TRADE, "padding": "x" * 1_000_000}).encode()
    kafka = KafkaProducer(bootstrap_servers=config.bootstrap_servers, acks="all", max_request_size=2 * len(raw))
    kafka.send(kafka_topic, key=b"huge", value=raw).get(30)
    kafka.close()
    consumer = PricesConsumer(config)
    thread = threading.Thread(target=consumer.run, name="consumer", daemon=True)
    thread.start()
    try:
        with db.cursor() as cursor:
            deadline = time.monotonic() + 60
            row = None
            while row is None and time.monotonic() < deadline:
                cursor.execute("SELECT raw_payload, payload_bytes, payload_sha256, error FROM stock.rejected_messages"
                               " WHERE topic = %s", (kafka_topic,))
                row = cursor.fetchone()
                time.sleep(0.2)
    finally:
        consumer.stop()
        thread.join(30)
    assert row is not None, "the 1 MB message was not dead-lettered"
    stored, length, digest, error = row
    assert bytes(stored) == raw[:64 * 1024] and length == len(raw) > 1_000_000
    assert bytes(digest) == hashlib.sha256(raw).digest() and "exceeds" in error
