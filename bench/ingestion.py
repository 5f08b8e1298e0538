"""Ingestion benchmarks on a throwaway stack (real Kafka, real PostgreSQL):

1. consumer throughput from a pre-filled topic, side by side with a plain COPY of the same rows, and the
   cost of each stage of the message path in µs per message, each stage measured alone in the same run;
2. the whole chain at full replay speed (replay server → producer → Kafka → consumer → PostgreSQL) with 1,
   2, … producer and consumer worker processes (``--workers``), every id compared afterwards;
3. latency at a steady rate: producer send → broker ack, and trade time → row in PostgreSQL.

Usage: ``[LOG_LEVEL=INFO] python -m bench.ingestion [--rows N] [--workers 1,2,3] [--rate R --seconds S]
[--part consumer|stages|chain|latency ...] [--modes plain,secure] [--brokers 1,3]``; ``--modes plain,secure``
runs the parts on a stack with SECURE=0, then on a new one with SECURE=1, and prints both side by side;
``--brokers 1,3`` does the same with one Kafka node and with three (every partition on three, acks from two).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import psutil
import psycopg2
import websocket
from kafka import KafkaProducer

from bench.modes import MODES, Figure, comparison, mode_list, side_by_side
from crypto_platform.credentials import KAFKA_CONSUMER, KAFKA_PRODUCER, kafka_security
from crypto_platform.settings import PlatformSettings
from local_stack.ephemeral import ephemeral_stack, make_state_dir, process_environment
from local_stack.processes import free_port, stop_processes, wait_until
from local_stack.stack import REPO_ROOT, LocalStack
from local_stack.stream_rewind import describe_group, retrying_kafka
from streaming_services.consumer import ConsumerConfig, PricesConsumer, classify
from streaming_services.messages import TradeMessage, decode_agg_trade_frame
from streaming_services.postgres_sink import COPY_TRADES, encode_copy_rows
from streaming_services.producer import SEND_LATENCY, BinanceProducer, ProducerConfig, worker_symbols
from streaming_services.producer_state import acked_path, write_state_file
from streaming_services.replay_server import ReplayConfig, ReplayServer

SYMBOLS = ("BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT")


def synthetic_trades(rows: int, start_ms: int) -> list[TradeMessage]:
    rng = random.Random(1)
    return [TradeMessage(symbol=SYMBOLS[i % len(SYMBOLS)], price=Decimal(f"{60000 + rng.random() * 100:.2f}"),
                         volume=Decimal(f"{rng.random():.5f}") + Decimal("0.00001"), timestamp=start_ms + i,
                         agg_trade_id=i // len(SYMBOLS), first_trade_id=i, last_trade_id=i, is_buyer_maker=i % 2 == 0,
                         source="bench") for i in range(rows)]


def truncate(database_url: str) -> None:
    """Empty what the consumer judges new trades against, so each run starts as on a new platform: the rows,
    the dead letters and the exchange clock (a clock left by one run would make the next run's trades late),
    and where the consumers' writes reached in each partition."""
    with psycopg2.connect(database_url) as connection, connection.cursor() as cursor:
        cursor.execute("TRUNCATE stock.real_time_prices, stock.rejected_messages, stock.market_clock,"
                       " stock.consumer_offsets")


STALL_S = 120.0  # no new row for this long while rows are missing: the run is stuck, not slow
COUNT_ROWS = "SELECT count(*) FROM stock.real_time_prices"


def stored_rows(database_url: str) -> int:
    with psycopg2.connect(database_url) as connection, connection.cursor() as cursor:
        cursor.execute(COUNT_ROWS)
        return cursor.fetchone()[0]


def commit_rate(database_url: str, target: int, timeout: float, where: str = "", progress: str = COUNT_ROWS) -> float:
    """Rows committed per second from the first commit seen until ``progress`` (a query of the rows committed)
    reaches ``target``, so that process start and the group join are not in it. One connection polled every
    0.1 s, so that watching costs the machine little (a new connection is a password hash on both sides). A
    table that stops growing for ``STALL_S`` ends the run at once, with the rows per symbol and ``where``."""
    started = time.perf_counter()
    first: tuple[int, float] | None = None
    moved: tuple[int, float] = (0, started)
    with psycopg2.connect(database_url) as connection, connection.cursor() as cursor:
        connection.autocommit = True
        while True:
            cursor.execute(progress)
            rows, now = cursor.fetchone()[0], time.perf_counter()
            if first is None and rows > 0:
                first = (rows, now)
            if rows >= target and first is not None and now > first[1]:
                return (rows - first[0]) / (now - first[1])
            if rows != moved[0]:
                moved = (rows, now)
            if now - started > timeout or (first is not None and now - moved[1] > STALL_S):
                cursor.execute("SELECT symbol, count(*), max(agg_trade_id) FROM stock.real_time_prices"
                               " GROUP BY symbol ORDER BY symbol")
                per_symbol = ", ".join(f"{symbol} {count} (max id {top})" for symbol, count, top in cursor.fetchall())
                raise SystemExit(f"bench: only {rows} of {target} rows after {now - started:.0f} s, none new for "
                                 f"{now - moved[1]:.0f} s; per symbol: {per_symbol or 'none'}; {where}")
            time.sleep(0.1)


def plain_copy_rate(database_url: str, trades: list[TradeMessage]) -> float:
    """The floor of what any writer can do: one COPY of the same rows into the same table, in the consumer's
    format (COPY's text format, which PostgreSQL parses faster than CSV)."""
    buffer = encode_copy_rows(trades)
    truncate(database_url)
    with psycopg2.connect(database_url) as connection, connection.cursor() as cursor:
        started = time.perf_counter()
        cursor.copy_expert(COPY_TRADES, io.BytesIO(buffer), size=1 << 20)
        connection.commit()
        elapsed = time.perf_counter() - started
    truncate(database_url)
    return len(trades) / elapsed


CONSUMER_TOPIC = "bench-consumer"
# The consumers' progress from where each batch's transaction says it reached in every partition: a few rows
# to read, where count(*) would scan the growing table ten times a second on the cores being measured. The
# rows committed, as only the bench's consumers run and their topic holds only valid trades from offset 0
# (checked against count(*) at the end).
CONSUMED_ROWS = "SELECT coalesce(sum(next_offset), 0)::bigint FROM stock.consumer_offsets"


def fill_topic(settings: PlatformSettings, stack: LocalStack, trades: list[TradeMessage]) -> None:
    stack.kafka.ensure_topic(CONSUMER_TOPIC, settings.kafka_partitions)
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all", linger_ms=20,
                             batch_size=512 * 1024, **kafka_security(settings, KAFKA_PRODUCER))
    for trade in trades:
        producer.send(CONSUMER_TOPIC, key=trade.key, value=trade.to_json())
    producer.flush()
    producer.close()


def service_log_level() -> str:
    """The services' LOG_LEVEL: WARNING (their logs stay quiet while measured) unless the caller sets one."""
    return os.environ.get("LOG_LEVEL", "WARNING")


def share_stack_secrets(settings: PlatformSettings, folder: Path) -> None:
    """The bench stack's passwords and CA for worker processes whose STATE_DIR is ``folder`` (they would
    generate passwords of their own there, which the bench's PostgreSQL and Kafka do not know)."""
    for name in ("secrets", "tls"):
        if (settings.state_dir / name).exists():
            (folder / name).symlink_to(settings.state_dir / name)


def _process_tree(pid: int | None) -> list[psutil.Process]:
    """The process ``pid`` and its descendants; none when it does not run."""
    if pid is None:
        return []
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def cpu_snapshot(stack: LocalStack, consumers: list[psutil.Process]) -> dict[tuple[str, int], float]:
    """CPU seconds so far of each process a consumer run keeps busy, keyed by (part, pid): the consumer
    processes, PostgreSQL (its sessions and background writers; not the bench's own sessions, which watch
    progress), its WAL archiver with the compressor it runs for each segment, and the Kafka broker(s)."""
    parts: list[tuple[str, psutil.Process, bool]] = [("consumers", p, False) for p in consumers]
    for process in _process_tree(stack.postgres.pid()):
        with contextlib.suppress(psutil.NoSuchProcess):
            title = " ".join(process.cmdline()).split()
            if title[:2] == ["postgres:", "archiver"]:
                parts.append(("WAL archive", process, True))
            elif title[:1] == ["postgres:"] and title[1:2] != [stack.settings.pg_user]:
                parts.append(("PostgreSQL", process, False))
    parts += [("Kafka", p, False) for pid in stack.kafka.pids() for p in _process_tree(pid)]
    seconds = {}
    for part, process, with_reaped_children in parts:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            seconds[part, process.pid] = times.user + times.system + (
                times.children_user + times.children_system if with_reaped_children else 0.0)
    return seconds


def cpu_per_row_us(before: dict[tuple[str, int], float], after: dict[tuple[str, int], float],
                   rows: int) -> dict[str, float]:
    """µs of CPU per row of each part between two snapshots: a process new since ``before`` counts from zero,
    one gone since (a session that ended) is not counted."""
    used: dict[str, float] = {}
    for (part, pid), seconds in after.items():
        used[part] = used.get(part, 0.0) + seconds - before.get((part, pid), 0.0)
    return {part: per_message_us(seconds, rows) for part, seconds in used.items()}


def consumer_rate(stack: LocalStack, rows: int, workers: int) -> tuple[float, dict[str, float]]:
    """``workers`` consumer processes of a new group (as ``make up`` runs them) drain the filled topic: rows
    committed per second, and µs of CPU per row of each part of the machine the run kept busy."""
    settings = stack.settings
    folder = make_state_dir(f"crypto-bench-consumer-{workers}-")
    share_stack_secrets(settings, folder)
    group = f"{CONSUMER_TOPIC}-{workers}"
    env = {**os.environ, "STATE_DIR": str(folder), "SYMBOLS": ",".join(SYMBOLS), "KAFKA_TOPIC": CONSUMER_TOPIC,
           "CONSUMER_GROUP": group, "CONSUMER_WORKERS": str(workers), "CONSUMER_METRICS_PORT": str(free_port()),
           "LOG_LEVEL": service_log_level()}
    before = cpu_snapshot(stack, [])
    processes = [psutil.Process(start_service("streaming_services.consumer", i, env, folder / f"consumer-{i}.log").pid)
                 for i in range(workers)]
    try:
        rate = commit_rate(settings.database_url, rows, 900, f"logs in {folder}", CONSUMED_ROWS)
        cpu = cpu_per_row_us(before, cpu_snapshot(stack, processes), rows)
    finally:
        stop_processes(processes)
    if (stored := stored_rows(settings.database_url)) != rows:
        raise SystemExit(f"bench: the consumers reached the topic's end but the table holds {stored} of {rows} rows; "
                         f"logs in {folder}")
    truncate(settings.database_url)
    return rate, cpu


def write_agg_trades_file(folder: Path, rows: int, start_ms: int, symbol: str = "BTCUSDT") -> Path:
    """A Binance aggTrades CSV (no header) of ``rows`` trades of ``symbol``, 1 ms apart."""
    path = folder / f"{symbol}-aggTrades-bench.csv"
    rng = random.Random(symbol)
    with path.open("w") as handle:
        for i in range(rows):
            handle.write(f"{i + 1},{60000 + rng.random() * 100:.8f},{rng.random() + 0.00001:.8f},{i + 1},{i + 1},"
                         f"{start_ms + i},{'true' if i % 2 else 'false'},true\n")
    return path


def write_market_files(folder: Path, rows: int) -> list[Path]:
    """``rows`` trades shared out over the five symbols, so that producer workers have symbols to divide."""
    start_ms = int(time.time() * 1000) - rows
    return [write_agg_trades_file(folder, rows // len(SYMBOLS), start_ms, symbol) for symbol in SYMBOLS]


def per_message_us(elapsed_s: float, messages: int) -> float:
    return elapsed_s / messages * 1e6


def stage_costs(settings: PlatformSettings, stack: LocalStack, rows: int) -> dict[str, float]:
    """µs per message of each stage of the path, each alone: CPU time of the process for the Python stages
    (the WebSocket read: of the reading thread only, the replay server being in this process), wall time for
    COPY (PostgreSQL does that work)."""
    folder = make_state_dir("crypto-bench-stages-")
    server = ReplayServer(ReplayConfig(symbols=SYMBOLS, files=tuple(write_market_files(folder, rows)), speed=0,
                                       port=0, state_dir=folder / "replay"))
    ws_url, rest_url = server.start_in_thread()
    config = ProducerConfig(ws_url, rest_url, SYMBOLS, "bench-stages", settings.kafka_bootstrap_servers, "replay",
                            folder / "acked.json", kafka_security=kafka_security(settings, KAFKA_PRODUCER))
    stack.kafka.ensure_topic(config.topic, settings.kafka_partitions)
    expected = rows // len(SYMBOLS) * len(SYMBOLS)
    costs: dict[str, float] = {}

    ws = websocket.create_connection(config.stream_url, timeout=10, skip_utf8_validation=True)
    frames: list[bytes] = []
    started = time.thread_time()
    while len(frames) < expected:  # the stream also carries the klines of the market clock: trades only
        opcode, frame = ws.recv_data_frame(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_TEXT and b"@aggTrade" in frame.data:
            frames.append(frame.data)
    costs["WS read"] = per_message_us(time.thread_time() - started, len(frames))
    ws.close()
    server.stop_thread()

    started = time.process_time()
    trades = [decode_agg_trade_frame(frame, "replay") for frame in frames]
    costs["parse"] = per_message_us(time.process_time() - started, len(trades))

    producer = BinanceProducer(config)
    started = time.process_time()
    for trade in trades:
        producer.send(trade, "live")
    producer.kafka.flush()
    costs["Kafka send"] = per_message_us(time.process_time() - started, len(trades))
    producer.kafka.close()

    consumer = PricesConsumer(ConsumerConfig(settings.kafka_bootstrap_servers, config.topic, "bench-stages",
                                             settings.database_url, frozenset(SYMBOLS), settings.consumer_batch_size,
                                             kafka_security=kafka_security(settings, KAFKA_CONSUMER)))
    while not consumer.kafka.poll(timeout_ms=1000, max_records=1):  # joins the group; read again below
        pass
    consumer.kafka.seek_to_beginning()
    records = []
    started = time.process_time()
    while len(records) < len(trades):
        records += [r for batch in consumer.kafka.poll(timeout_ms=5000).values() for r in batch]
    costs["Kafka poll/decode"] = per_message_us(time.process_time() - started, len(records))
    consumer.kafka.close()
    consumer.writer.close()

    started = time.process_time()
    accepted, rejected = classify(records, frozenset(SYMBOLS), int(time.time() * 1000))
    costs["validate"] = per_message_us(time.process_time() - started, len(records))
    assert not rejected, rejected[:3]

    started = time.process_time()
    buffer = encode_copy_rows(item.trade for item in accepted)
    costs["encode"] = per_message_us(time.process_time() - started, len(accepted))

    truncate(settings.database_url)
    with psycopg2.connect(settings.database_url) as connection, connection.cursor() as cursor:
        started = time.perf_counter()
        cursor.copy_expert(COPY_TRADES, io.BytesIO(buffer), size=1 << 20)
        connection.commit()
        costs["COPY"] = per_message_us(time.perf_counter() - started, len(accepted))
    truncate(settings.database_url)
    return costs


def stored_ids_check(database_url: str, per_symbol: int) -> str:
    """Every id 1..per_symbol of every symbol exactly once (the unique key forbids doubles in the table)."""
    with psycopg2.connect(database_url) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT symbol, count(*), count(DISTINCT agg_trade_id), min(agg_trade_id), max(agg_trade_id)"
                       " FROM stock.real_time_prices GROUP BY symbol")
        found = {symbol: rest for symbol, *rest in cursor.fetchall()}
    wanted = {symbol: (per_symbol, per_symbol, 1, per_symbol) for symbol in SYMBOLS}
    if {s: tuple(v) for s, v in found.items()} != wanted:
        raise SystemExit(f"bench: ids differ: stored {found}, expected {wanted}")
    return "every id once"


def start_service(module: str, worker: int | None, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    arguments = [] if worker is None else ["--worker", str(worker)]
    with log_path.open("ab") as log:
        return subprocess.Popen([sys.executable, "-m", module, *arguments], env=env, cwd=REPO_ROOT,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def start_producers_from_the_first_id(state_dir: Path, workers: int, source: str) -> None:
    """Each producer worker's acknowledged ids, as if it had stopped before its symbols' first trade (id 1).

    The replay market's clock starts with its first subscriber, and at full speed it has published every
    trade of the files a few seconds later. A worker that subscribes after that (its connection timed out
    on the busy machine) would never hear of its symbols: a producer without saved ids starts at the minute
    of the first live trade it sees, and none comes. With these ids it backfills from REST on connecting,
    the path of a restarted producer, so the run's completion (every id once) no longer depends on when
    each worker subscribed.
    """
    for worker in range(workers):
        write_state_file(acked_path(state_dir, worker), source,
                         {symbol: 0 for symbol in worker_symbols(SYMBOLS, worker, workers)})


def wait_for_group(stack: LocalStack, group: str, members: int, where: str) -> None:
    """Until ``group`` is stable with ``members`` members, each holding its partitions: a new group waits
    ``KAFKA_GROUP_JOIN_DELAY_MS`` for its members before the first assignment."""
    admin = stack.kafka.admin()
    try:
        def assigned() -> bool:
            description = retrying_kafka(describe_group, admin, group)
            return description.get("group_state") == "Stable" and len(description.get("members", [])) == members

        if not wait_until(assigned, 180):
            raise SystemExit(f"bench: consumer group {group} did not settle with {members} members; {where}")
    finally:
        admin.close()


def chain_rate(settings: PlatformSettings, stack: LocalStack, rows: int, workers: int) -> float:
    """The services as ``make up`` runs them (replay server, ``workers`` producer and consumer processes).
    The producers start once the consumers hold their partitions, and the rate is counted from the first
    committed row to the last, so process start and the group join are not in it, and the consumers keep
    up with the producers rather than drain what they sent meanwhile."""
    folder = make_state_dir(f"crypto-bench-chain-{workers}-")
    files = write_market_files(folder, rows)
    share_stack_secrets(settings, folder)
    expected = rows // len(SYMBOLS) * len(SYMBOLS)
    topic = f"bench-chain-{workers}"
    consumers = min(workers, settings.kafka_partitions)
    stack.kafka.ensure_topic(topic, settings.kafka_partitions)
    start_producers_from_the_first_id(folder, workers, "replay")
    replay_port = free_port()
    env = {**os.environ, "STATE_DIR": str(folder), "SYMBOLS": ",".join(SYMBOLS), "SOURCE": "replay",
           "REPLAY_FILES": ",".join(map(str, files)), "REPLAY_SPEED": "0", "REPLAY_PORT": str(replay_port),
           "BINANCE_WS_URL": f"ws://127.0.0.1:{replay_port}", "BINANCE_REST_URL": f"http://127.0.0.1:{replay_port}",
           "KAFKA_TOPIC": topic, "CONSUMER_GROUP": topic, "PRODUCER_WORKERS": str(workers),
           "CONSUMER_WORKERS": str(consumers), "PRODUCER_METRICS_PORT": str(free_port()),
           "CONSUMER_METRICS_PORT": str(free_port()), "LOG_LEVEL": service_log_level()}
    processes = [start_service("streaming_services.replay_server", None, env, folder / "replay.log")]
    try:
        if not wait_until(lambda: _port_answers(replay_port), 120):
            raise SystemExit(f"bench: the replay server did not start; read {folder / 'replay.log'}")
        processes += [start_service("streaming_services.consumer", i, env, folder / f"consumer-{i}.log")
                      for i in range(consumers)]
        wait_for_group(stack, topic, consumers, f"logs in {folder}")
        processes += [start_service("streaming_services.producer", i, env, folder / f"producer-{i}.log")
                      for i in range(workers)]
        rate = commit_rate(settings.database_url, expected, 900, f"logs in {folder}")
        stored_ids_check(settings.database_url, rows // len(SYMBOLS))
    finally:
        stop_processes([psutil.Process(process.pid) for process in reversed(processes)])
    truncate(settings.database_url)
    return rate


def _port_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000)[int(q * 1000) - 1] if len(values) > 1 else values[0]


def steady_latency(settings: PlatformSettings, stack: LocalStack, rate: int, seconds: int) -> dict[str, float]:
    """Trades at a steady ``rate`` through a producer and a consumer in this process. They start as services
    do, from a quiet state: the earlier parts' writes are checkpointed first (else PostgreSQL flushes them
    during the run), and this process's objects are collected and frozen (else the ~500,000 the earlier
    parts left make each full collection pause both threads, 262 ms once)."""
    with psycopg2.connect(settings.database_url) as connection, connection.cursor() as cursor:
        cursor.execute("CHECKPOINT")
    gc.collect()
    gc.freeze()
    try:
        return _steady_latency(settings, stack, rate, seconds)
    finally:
        gc.unfreeze()


def _steady_latency(settings: PlatformSettings, stack: LocalStack, rate: int, seconds: int) -> dict[str, float]:
    folder = make_state_dir("crypto-bench-latency-")
    topic = "bench-latency"
    stack.kafka.ensure_topic(topic, settings.kafka_partitions)
    config = ReplayConfig(symbols=SYMBOLS, speed=1, port=0, state_dir=folder / "replay",
                          synthetic_trades_per_second=rate / len(SYMBOLS))
    server = ReplayServer(config)
    ws_url, rest_url = server.start_in_thread()
    consumer = PricesConsumer(ConsumerConfig(settings.kafka_bootstrap_servers, topic, "bench-latency",
                                             settings.database_url, frozenset(SYMBOLS), settings.consumer_batch_size,
                                             kafka_security=kafka_security(settings, KAFKA_CONSUMER)))
    producer = BinanceProducer(ProducerConfig(ws_url, rest_url, SYMBOLS, topic, settings.kafka_bootstrap_servers,
                                              "replay", folder / "acked.json",
                                              kafka_security=kafka_security(settings, KAFKA_PRODUCER)))
    acks: list[float] = []
    original_observe = SEND_LATENCY.observe
    SEND_LATENCY.observe = lambda value: (acks.append(value), original_observe(value))  # type: ignore[method-assign]
    threads = [threading.Thread(target=consumer.run, daemon=True), threading.Thread(target=producer.run, daemon=True)]
    threads[0].start()
    wait_for_group(stack, "bench-latency", 1, "the consumer runs in this process")  # the trades meet a reader
    threads[1].start()
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
                       " WHERE event_time > (SELECT min(event_time) + interval '5 seconds'"
                       " FROM stock.real_time_prices)")
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


PARTS = ("consumer", "stages", "chain", "latency")


def worker_counts(raw: str) -> list[int]:
    return [positive_int(part) for part in raw.split(",")]


def broker_counts(raw: str) -> list[int]:
    counts = [positive_int(part) for part in raw.split(",")]
    if any(count not in (1, 3) for count in counts) or len(set(counts)) != len(counts) or len(counts) > 2:
        raise argparse.ArgumentTypeError(f"{raw!r}: 1, 3 or 1,3")
    return counts


# The bench's consumer groups ("bench-…") are the stack's CONSUMER_GROUP prefix, which SECURE=1's ACLs allow.
BENCH_GROUP_PREFIX = "bench"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ingestion", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=positive_int, default=200_000, help="rows for the throughput runs")
    parser.add_argument("--rate", type=positive_int, default=1000, help="trades per second for the latency run")
    parser.add_argument("--seconds", type=positive_int, default=30, help="length of the latency run")
    parser.add_argument("--workers", type=worker_counts, default=[1, 2, 3],
                        help="producer and consumer processes of the chain runs, comma list (consumers at most the "
                        "partitions)")
    parser.add_argument("--part", choices=PARTS, action="append", help="run only this part (repeatable)")
    parser.add_argument("--modes", type=mode_list, default=["plain"],
                        help="comma list of plain (SECURE=0), secure (SECURE=1): each on a new stack, then compared")
    parser.add_argument("--brokers", type=broker_counts, default=[1],
                        help="comma list of KAFKA_BROKERS (1, 3): each on a new stack, then side by side")
    args = parser.parse_args()
    results: dict[tuple[str, int], dict[str, Figure]] = {}
    for brokers in args.brokers:
        for mode in args.modes:
            if len(args.modes) > 1 or len(args.brokers) > 1:
                print(f"== {mode} (SECURE={MODES[mode]}), KAFKA_BROKERS={brokers}", flush=True)
            environment = {"SECURE": MODES[mode], "CONSUMER_GROUP": BENCH_GROUP_PREFIX, "KAFKA_BROKERS": str(brokers)}
            with process_environment(environment), ephemeral_stack(f"crypto-bench-{mode}-") as stack:
                results[mode, brokers] = run_parts(args, args.part or PARTS, stack)
    for brokers in args.brokers:
        if len(args.modes) > 1:
            print("\n".join(comparison({mode: results[mode, brokers] for mode in args.modes})), flush=True)
    if len(args.brokers) == 2:
        one, more = args.brokers
        for mode in args.modes:
            print("\n".join(side_by_side(f"{one} node(s)", results[mode, one], f"{more} nodes", results[mode, more])),
                  flush=True)


def microseconds_by_part(costs: dict[str, float]) -> str:
    """``'WS read 14.7, parse 1.3; sum 16.0'``: what the summary lines print of µs per message or per row."""
    return ", ".join(f"{name} {us:.1f}" for name, us in costs.items()) + f"; sum {sum(costs.values()):.1f}"


def run_parts(args: argparse.Namespace, parts: tuple[str, ...], stack: LocalStack) -> dict[str, Figure]:
    """The parts asked for on ``stack``, each printed as it ends; their figures for the comparison."""
    figures: dict[str, Figure] = {}
    settings = stack.settings
    if "consumer" in parts:
        trades = synthetic_trades(args.rows, int(time.time() * 1000) - args.rows)
        copy = plain_copy_rate(settings.database_url, trades)
        fill_topic(settings, stack, trades)
        rates = {}
        for workers in sorted({min(w, settings.kafka_partitions) for w in args.workers}):
            rates[workers], cpu = consumer_rate(stack, args.rows, workers)
            print(f"  consumer with {workers} worker(s): {rates[workers]:,.0f} rows/s; CPU µs per row: "
                  f"{microseconds_by_part(cpu)}", flush=True)
        best = max(rates, key=rates.get)
        print(f"consumer throughput: {rates[best]:,.0f} rows/s committed; plain COPY of the same {args.rows:,} rows: "
              f"{copy:,.0f} rows/s; ratio {rates[best] / copy:.2f} (best of {', '.join(map(str, rates))} "
              f"workers: {best})", flush=True)
        figures["consumer, best of the worker counts, rows/s"] = Figure(rates[best], True)
        figures["plain COPY of the same rows, rows/s"] = Figure(copy, True)
    if "stages" in parts:
        costs = stage_costs(settings, stack, args.rows)
        print(f"µs per message by stage (each alone, this run): {microseconds_by_part(costs)}", flush=True)
        figures |= {f"stage {name}, µs/message": Figure(us, False, judged=False) for name, us in costs.items()}
    if "chain" in parts:
        rates = {}
        for workers in args.workers:
            rates[workers] = chain_rate(settings, stack, args.rows, workers)
            print(f"  chain with {workers} producer and {min(workers, settings.kafka_partitions)} consumer "
                  f"worker(s): {rates[workers]:,.0f} trades/s, every id once", flush=True)
        best = max(rates, key=rates.get)
        print(f"whole chain at full replay speed: {rates[best]:,.0f} trades/s "
              f"({args.rows // len(SYMBOLS) * len(SYMBOLS):,} trades of {len(SYMBOLS)} symbols, "
              f"replay → producer → Kafka → consumer → PostgreSQL; best of {', '.join(map(str, rates))} workers: "
              f"{best})", flush=True)
        figures["chain, best of the worker counts, trades/s"] = Figure(rates[best], True)
    if "latency" in parts:
        latency = steady_latency(settings, stack, args.rate, args.seconds)
        print(f"steady {latency['rate']:,.0f} trades/s for {args.seconds} s: producer send→ack p50 "
              f"{latency['ack_p50_ms']:.1f} ms, p99 {latency['ack_p99_ms']:.1f} ms; trade time→row in PostgreSQL "
              f"p50 {latency['e2e_p50_ms']:.1f} ms, p99 {latency['e2e_p99_ms']:.1f} ms", flush=True)
        figures |= {f"steady: {name.replace('_', ' ')}": Figure(latency[name], False)
                    for name in ("ack_p50_ms", "ack_p99_ms", "e2e_p50_ms", "e2e_p99_ms")}
    return figures


if __name__ == "__main__":
    main()
