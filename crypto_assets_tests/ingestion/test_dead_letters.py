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
from streaming_services.messages import (
    MAX_MESSAGE_BYTES,
    InvalidMessage,
    MarketClock,
    TradeMessage,
    parse_trade_message,
)

SYMBOLS = ("BTCUSDT", "ETHUSDT")
ADMISSION_REASONS = ("conflicting duplicate", "source ", "agg_trade_id ", "late trade")
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
            if len(dead) + len(rows) >= len(expected_dead) + len(expected_rows):
                break
            time.sleep(0.5)
        assert thread.is_alive(), "the consumer stopped on bad input"
        assert rows <= expected_rows
        for position, (raw, reason) in expected_dead.items():
            assert dead[position] == (raw[:config.dead_letter_max_bytes], len(raw), hashlib.sha256(raw).digest(),
                                      reason)
        # Valid messages that contradict what is stored (another source, an id far away, a late time, a
        # conflicting duplicate of a mutated message) are dead letters of the writer's judgement.
        judged = {position: dead[position] for position in dead.keys() - expected_dead.keys()}
        assert all(error.startswith(ADMISSION_REASONS) for *_, error in judged.values())
        judged_trades = {(json.loads(raw)["symbol"], json.loads(raw)["agg_trade_id"]) for raw, *_ in judged.values()}
        assert expected_rows <= rows | judged_trades
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


def _run_consumer(platform_env, kafka_topic: str, **overrides: object):
    config = ConsumerConfig.from_settings(platform_env(KAFKA_TOPIC=kafka_topic, SYMBOLS=",".join(SYMBOLS),
                                                       CONSUMER_GROUP=f"group-{kafka_topic}", **overrides))
    consumer = PricesConsumer(config)
    thread = threading.Thread(target=consumer.run, name="consumer", daemon=True)
    thread.start()
    return config, consumer, thread


def test_trades_that_contradict_the_stored_market_are_dead_lettered_with_their_reason(
        platform_env, kafka_topic, db) -> None:
    """Through the real Kafka and PostgreSQL, in one partition (key BTCUSDT), in this order: ten good trades,
    the poison value, an injected id of 7e11, a conflicting duplicate, an identical duplicate, a trade dated
    30 days back, then a good trade. Failed on the old code: the poison value, the high id and the stale
    trade became rows and the conflicting duplicate vanished without a trace."""
    config, consumer, thread = _run_consumer(platform_env, kafka_topic)
    now_ms = time.time_ns() // 1_000_000

    def trade(agg_id: int, **change: object) -> bytes:
        payload = {**AGG_TRADE, "a": agg_id, "f": agg_id * 3, "l": agg_id * 3, "T": now_ms - 60_000 + agg_id % 1000,
                   **change}
        return TradeMessage.from_agg_trade(payload, "test").to_json()

    good = [trade(agg_id) for agg_id in range(1000, 1010)]
    poison = trade(1010, p="999999999999", q="999999999999")
    injected = trade(700_000_000_000, p="100.00000001")
    conflicting = trade(1005, p="1.00000000")
    stale = trade(1010, T=now_ms - 30 * 86_400_000)
    sequence = [*good, poison, injected, conflicting, trade(1003), stale, trade(1010)]
    kafka = KafkaProducer(bootstrap_servers=config.bootstrap_servers, acks="all")
    try:
        for raw in sequence:
            kafka.send(kafka_topic, key=b"BTCUSDT", value=raw).get(30)
        cursor = db.cursor()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            cursor.execute("SELECT agg_trade_id, price::text FROM stock.real_time_prices ORDER BY agg_trade_id")
            rows = cursor.fetchall()
            if rows and rows[-1][0] == 1010:
                break
            time.sleep(0.5)
        cursor.execute('SELECT raw_payload, error FROM stock.rejected_messages ORDER BY "offset"')
        dead = [(bytes(raw), error) for raw, error in cursor.fetchall()]
    finally:
        kafka.close()
        consumer.stop()
        thread.join(30)
    assert rows == [(agg_id, "61234.56000000") for agg_id in range(1000, 1011)]
    assert [raw for raw, _ in dead] == [poison, injected, conflicting, stale]
    reasons = [error for _, error in dead]
    assert reasons[0].startswith("price × volume = 999999999998000000000001 is not below 1e+14")
    assert reasons[1] == ("agg_trade_id 700000000000 is 699999998991 ids away from BTCUSDT's newest stored id"
                          " 1009, more than CONSUMER_MAX_ID_DISTANCE=100000000")
    assert reasons[2].startswith("conflicting duplicate of BTCUSDT agg_trade_id 1005: stored price=61234.56000000")
    assert "this message price=1.00000000" in reasons[2]
    assert reasons[3].startswith("late trade: time ") and "more than CONSUMER_MAX_LATENESS_S=300" in reasons[3]


def test_market_clock_messages_keep_the_greatest_time_per_source_and_symbol(platform_env, kafka_topic, db) -> None:
    """A quiet symbol (ETHUSDT never trades here) gets its clock written; an older clock never moves it back.
    Failed on the old code: a marketClock message was dead-lettered as a trade with missing fields."""
    config, consumer, thread = _run_consumer(platform_env, kafka_topic)
    minute = (time.time_ns() // 1_000_000) // 60_000 * 60_000
    clocks = [MarketClock("ETHUSDT", minute - 60_000, "test"), MarketClock("ETHUSDT", minute, "test"),
              MarketClock("ETHUSDT", minute - 120_000, "test")]
    kafka = KafkaProducer(bootstrap_servers=config.bootstrap_servers, acks="all")
    try:
        for clock in clocks:
            kafka.send(kafka_topic, key=clock.key, value=clock.to_json()).get(30)
        # A last message in the same partition: once it is a dead letter, the clocks before it are written.
        kafka.send(kafka_topic, key=b"ETHUSDT", value=b"end of test").get(30)
        cursor = db.cursor()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            cursor.execute("SELECT raw_payload FROM stock.rejected_messages")
            dead = [bytes(raw) for (raw,) in cursor.fetchall()]
            if dead:
                break
            time.sleep(0.5)
        cursor.execute("SELECT source, symbol, closed_until_ms FROM stock.market_clock")
        rows = cursor.fetchall()
    finally:
        kafka.close()
        consumer.stop()
        thread.join(30)
    assert dead == [b"end of test"]
    assert rows == [("test", "ETHUSDT", minute)]
