"""Ingestion benchmarks on a throwaway stack (real Kafka, real PostgreSQL):

1. consumer throughput from a pre-filled topic, side by side with a plain COPY of the same rows;
2. the whole chain at full replay speed (replay server → producer → Kafka → consumer → PostgreSQL);
3. latency at a steady rate: producer send → broker ack, and trade time → row in PostgreSQL.

Usage: ``python -m bench.ingestion [--rows N] [--rate R --seconds S] [--part consumer|chain|latency ...]``.
"""

from __future__ import annotations

import argparse
import csv
import io
import random
import statistics
import threading
import time
from decimal import Decimal
from pathlib import Path

import psycopg2
from kafka import KafkaProducer

from crypto_platform.settings import PlatformSettings
from local_stack.ephemeral import ephemeral_stack, make_state_dir
from local_stack.stack import LocalStack
from streaming_services.consumer import ConsumerConfig, PricesConsumer
from streaming_services.messages import TradeMessage
from streaming_services.producer import SEND_LATENCY, BinanceProducer, ProducerConfig
from streaming_services.replay_server import ReplayConfig, ReplayServer

SYMBOLS = ("BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT")
COPY_COLUMNS = ("symbol, price, timestamp, event_time, volume, agg_trade_id, first_trade_id, last_trade_id,"
                " trades, is_buyer_maker, source")


def synthetic_trades(rows: int, start_ms: int) -> list[TradeMessage]:
    rng = random.Random(1)
    return [TradeMessage(symbol=SYMBOLS[i % len(SYMBOLS)], price=Decimal(f"{60000 + rng.random() * 100:.2f}"),
                         volume=Decimal(f"{rng.random():.5f}") + Decimal("0.00001"), timestamp=start_ms + i,
                         agg_trade_id=i // len(SYMBOLS), first_trade_id=i, last_trade_id=i, is_buyer_maker=i % 2 == 0,
                         source="bench") for i in range(rows)]


def rows_in(database_url: str) -> int:
    with psycopg2.connect(database_url) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM stock.real_time_prices")
        return cursor.fetchone()[0]


def truncate(database_url: str) -> None:
    with psycopg2.connect(database_url) as connection, connection.cursor() as cursor:
        cursor.execute("TRUNCATE stock.real_time_prices, stock.rejected_messages")


def wait_rows(database_url: str, target: int, timeout: float) -> float:
    started = time.perf_counter()
    while rows_in(database_url) < target:
        if time.perf_counter() - started > timeout:
            raise SystemExit(f"bench: only {rows_in(database_url)} of {target} rows after {timeout} s")
        time.sleep(0.05)
    return time.perf_counter() - started


def plain_copy_rate(database_url: str, trades: list[TradeMessage]) -> float:
    """The floor of what any writer can do: one COPY of the same rows into the same table."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    for t in trades:
        writer.writerow((t.symbol, t.price, t.timestamp, t.event_time, t.volume, t.agg_trade_id, t.first_trade_id,
                         t.last_trade_id, t.trades, t.is_buyer_maker, t.source))
    truncate(database_url)
    with psycopg2.connect(database_url) as connection, connection.cursor() as cursor:
        buffer.seek(0)
        started = time.perf_counter()
        cursor.copy_expert(f"COPY stock.real_time_prices ({COPY_COLUMNS}) FROM STDIN WITH (FORMAT csv)", buffer)
        connection.commit()
        elapsed = time.perf_counter() - started
    truncate(database_url)
    return len(trades) / elapsed


def consumer_rate(settings: PlatformSettings, stack: LocalStack, trades: list[TradeMessage]) -> float:
    topic = "bench-consumer"
    stack.kafka.ensure_topic(topic, settings.kafka_partitions)
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all", linger_ms=20,
                             batch_size=512 * 1024)
    for trade in trades:
        producer.send(topic, key=trade.key, value=trade.to_json())
    producer.flush()
    producer.close()
    config = ConsumerConfig(settings.kafka_bootstrap_servers, topic, "bench-consumer", settings.database_url,
                            frozenset(SYMBOLS), settings.consumer_batch_size)
    consumer = PricesConsumer(config)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    elapsed = wait_rows(settings.database_url, len(trades), 600)
    consumer.stop()
    thread.join(30)
    truncate(settings.database_url)
    return len(trades) / elapsed


def write_agg_trades_file(folder: Path, rows: int, start_ms: int) -> Path:
    """A Binance aggTrades CSV (no header) of ``rows`` BTCUSDT trades, 1 ms apart."""
    path = folder / "BTCUSDT-aggTrades-bench.csv"
    rng = random.Random(2)
    with path.open("w") as handle:
        for i in range(rows):
            handle.write(f"{i + 1},{60000 + rng.random() * 100:.8f},{rng.random() + 0.00001:.8f},{i + 1},{i + 1},"
                         f"{start_ms + i},{'true' if i % 2 else 'false'},true\n")
    return path


def chain_rate(settings: PlatformSettings, stack: LocalStack, rows: int) -> float:
    """Counted from the first committed row to the last, so connection set-up and the group join are not in it."""
    folder = make_state_dir("crypto-bench-chain-")
    path = write_agg_trades_file(folder, rows, int(time.time() * 1000) - rows)
    topic = "bench-chain"
    stack.kafka.ensure_topic(topic, settings.kafka_partitions)
    server = ReplayServer(ReplayConfig(symbols=("BTCUSDT",), files=(path,), speed=0, port=0, state_dir=folder / "replay"))
    ws_url, rest_url = server.start_in_thread()
    consumer = PricesConsumer(ConsumerConfig(settings.kafka_bootstrap_servers, topic, "bench-chain",
                                             settings.database_url, frozenset({"BTCUSDT"}), settings.consumer_batch_size))
    producer = BinanceProducer(ProducerConfig(ws_url, rest_url, ("BTCUSDT",), topic, settings.kafka_bootstrap_servers,
                                              "replay", folder / "acked.json"))
    threads = [threading.Thread(target=consumer.run, daemon=True), threading.Thread(target=producer.run, daemon=True)]
    for thread in threads:
        thread.start()
    wait_rows(settings.database_url, 1, 120)
    first_row = time.perf_counter()
    wait_rows(settings.database_url, rows, 600)
    elapsed = time.perf_counter() - first_row
    producer.stop()
    consumer.stop()
    for thread in threads:
        thread.join(30)
    server.stop_thread()
    truncate(settings.database_url)
    return rows / elapsed


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000)[int(q * 1000) - 1] if len(values) > 1 else values[0]


def steady_latency(settings: PlatformSettings, stack: LocalStack, rate: int, seconds: int) -> dict[str, float]:
    folder = make_state_dir("crypto-bench-latency-")
    topic = "bench-latency"
    stack.kafka.ensure_topic(topic, settings.kafka_partitions)
    config = ReplayConfig(symbols=SYMBOLS, speed=1, port=0, state_dir=folder / "replay",
                          synthetic_trades_per_second=rate / len(SYMBOLS))
    server = ReplayServer(config)
    ws_url, rest_url = server.start_in_thread()
    consumer = PricesConsumer(ConsumerConfig(settings.kafka_bootstrap_servers, topic, "bench-latency",
                                             settings.database_url, frozenset(SYMBOLS), settings.consumer_batch_size))
    producer = BinanceProducer(ProducerConfig(ws_url, rest_url, SYMBOLS, topic, settings.kafka_bootstrap_servers,
                                              "replay", folder / "acked.json"))
    acks: list[float] = []
    original_observe = SEND_LATENCY.observe
    SEND_LATENCY.observe = lambda value: (acks.append(value), original_observe(value))  # type: ignore[method-assign]
    threads = [threading.Thread(target=consumer.run, daemon=True), threading.Thread(target=producer.run, daemon=True)]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    producer.stop()
    time.sleep(2)
    consumer.stop()
    for thread in threads:
        thread.join(30)
    server.stop_thread()
    SEND_LATENCY.observe = original_observe  # type: ignore[method-assign]
    with psycopg2.connect(settings.database_url) as connection, connection.cursor() as cursor:
        # Skip the first seconds: connection set-up and the consumer group's first join are not steady state.
        cursor.execute("SELECT extract(epoch FROM created_at - event_time) FROM stock.real_time_prices"
                       " WHERE event_time > (SELECT min(event_time) + interval '5 seconds' FROM stock.real_time_prices)")
        e2e = [float(row[0]) for row in cursor.fetchall()]
        cursor.execute("SELECT count(*) FROM stock.real_time_prices")
        total = cursor.fetchone()[0]
    truncate(settings.database_url)
    return {"trades": total, "rate": total / seconds, "ack_p50_ms": percentile(acks, 0.5) * 1000,
            "ack_p99_ms": percentile(acks, 0.99) * 1000, "e2e_p50_ms": percentile(e2e, 0.5) * 1000,
            "e2e_p99_ms": percentile(e2e, 0.99) * 1000}


def positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


PARTS = ("consumer", "chain", "latency")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ingestion", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=positive_int, default=200_000, help="rows for the throughput runs")
    parser.add_argument("--rate", type=positive_int, default=1000, help="trades per second for the latency run")
    parser.add_argument("--seconds", type=positive_int, default=30, help="length of the latency run")
    parser.add_argument("--part", choices=PARTS, action="append", help="run only this part (repeatable)")
    args = parser.parse_args()
    parts = args.part or PARTS
    with ephemeral_stack("crypto-bench-") as stack:
        settings = stack.settings
        if "consumer" in parts:
            trades = synthetic_trades(args.rows, int(time.time() * 1000) - args.rows)
            copy = plain_copy_rate(settings.database_url, trades)
            consumer = consumer_rate(settings, stack, trades)
            print(f"consumer throughput: {consumer:,.0f} rows/s committed; plain COPY of the same {args.rows:,} rows: "
                  f"{copy:,.0f} rows/s; ratio {consumer / copy:.2f}", flush=True)
        if "chain" in parts:
            chain = chain_rate(settings, stack, args.rows)
            print(f"whole chain at full replay speed: {chain:,.0f} trades/s ({args.rows:,} trades, replay → producer → "
                  f"Kafka → consumer → PostgreSQL)", flush=True)
        if "latency" in parts:
            latency = steady_latency(settings, stack, args.rate, args.seconds)
            print(f"steady {latency['rate']:,.0f} trades/s for {args.seconds} s: producer send→ack p50 "
                  f"{latency['ack_p50_ms']:.1f} ms, p99 {latency['ack_p99_ms']:.1f} ms; trade time→row in PostgreSQL "
                  f"p50 {latency['e2e_p50_ms']:.1f} ms, p99 {latency['e2e_p99_ms']:.1f} ms", flush=True)


if __name__ == "__main__":
    main()
