"""Kafka consumer → PostgreSQL ``stock.real_time_prices``, exactly once in effect.

Each polled batch is validated; valid trades and the dead letters of invalid messages are written in one
PostgreSQL transaction, idempotently (``ON CONFLICT DO NOTHING`` on (symbol, agg_trade_id) and on the
dead letter's (topic, partition, offset)); Kafka offsets are committed only after PostgreSQL committed.
A crash anywhere replays at most the uncommitted batch, which the unique keys absorb. The same transaction
records where each partition's writes reached (``stock.consumer_offsets``), which a point-in-time restore
rewinds the group to.

Valid trades are also judged against what is stored (``admission.py``): conflicting duplicates, another
source, ids far from the symbol's range and late trades become dead letters with their reason. Market
clock messages update ``stock.market_clock`` in the same transaction as the trades before them.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import msgspec
import psycopg2
import psycopg2.errors
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata
from prometheus_client import Counter, Gauge, Histogram
from psycopg2.extras import execute_values
from psycopg2.pool import ThreadedConnectionPool

from crypto_platform.credentials import INGEST_WRITER, KAFKA_CONSUMER, kafka_security, role_database_url
from crypto_platform.logs import configure_logging
from crypto_platform.retrying import retry_while_unavailable
from crypto_platform.settings import WORKER_PORT_STRIDE, PlatformSettings, SettingsError
from streaming_services.admission import DEFAULT_LIMITS, Limits, StoredSymbol, judge
from streaming_services.kafka_records import install_fast_records
from streaming_services.messages import InvalidMessage, MarketClock, TradeMessage, parse_message, utc_text
from streaming_services.metrics import BatchHistogram
from streaming_services.startup import StartupError, start_metrics, wait_for_kafka, worker_argument

RETRY_INITIAL_S = 0.5
RETRY_MAX_S = 10.0
POLL_RETRY_S = 1.0
TOPIC_RETRY_S = 1.0
CONNECTION_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError)
ROW_ERRORS = (psycopg2.DataError, psycopg2.IntegrityError)

log = logging.getLogger(__name__)

RESULTS = Counter("consumer_messages_total", "Messages handled", ["result"])
BATCH_SIZE = Histogram("consumer_batch_size", "Messages per transaction", buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000))
DB_RETRIES = Counter("consumer_db_retries_total", "Transactions retried because PostgreSQL was unavailable")
LAG = Gauge("consumer_lag", "Messages behind the partition's end", ["partition"])
END_TO_END = BatchHistogram("consumer_end_to_end_latency_seconds", "Trade time to PostgreSQL commit",
                            buckets=(0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 60))

STAGING_TABLE = """
CREATE TEMP TABLE IF NOT EXISTS incoming_trades (
    symbol TEXT, price NUMERIC, timestamp BIGINT, event_time TIMESTAMPTZ, volume NUMERIC,
    agg_trade_id BIGINT, first_trade_id BIGINT, last_trade_id BIGINT, trades INTEGER,
    is_buyer_maker BOOLEAN, source TEXT
) ON COMMIT DELETE ROWS
"""
COPY_INCOMING = "COPY incoming_trades FROM STDIN WITH (FORMAT csv)"
COPY_READ_BYTES = 1 << 20
TRADE_COLUMNS = ("symbol, price, timestamp, event_time, volume, agg_trade_id, first_trade_id, last_trade_id, trades,"
                 " is_buyer_maker, source")
COPY_TRADES = f"COPY stock.real_time_prices ({TRADE_COLUMNS}) FROM STDIN WITH (FORMAT csv)"
MERGE = """
INSERT INTO stock.real_time_prices (symbol, price, timestamp, event_time, volume, agg_trade_id, first_trade_id, last_trade_id, trades, is_buyer_maker, source)
SELECT symbol, price, timestamp, event_time, volume, agg_trade_id, first_trade_id, last_trade_id, trades, is_buyer_maker, source FROM incoming_trades
ON CONFLICT (symbol, agg_trade_id) DO NOTHING
"""
INSERT_ONE = """
INSERT INTO stock.real_time_prices (symbol, price, timestamp, event_time, volume, agg_trade_id, first_trade_id, last_trade_id, trades, is_buyer_maker, source)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (symbol, agg_trade_id) DO NOTHING
"""
# Writers of one symbol take turns (a rebalance can briefly give a partition to two consumers), so each
# judges its batch against what the other committed. Locks are taken in symbol order: no deadlock.
# Two-key advisory space (sql/011): the first key (7420312) names the lock's purpose, the second the symbol.
LOCK_SYMBOLS = "SELECT pg_advisory_xact_lock(7420312, hashtext(symbol)) FROM unnest(%s::text[]) AS s(symbol)"
NEWEST_STORED = """
SELECT s.symbol, r.agg_trade_id, r.timestamp, r.source, c.closed_until_ms
FROM unnest(%s::text[]) AS s(symbol)
CROSS JOIN LATERAL (SELECT agg_trade_id, timestamp, source FROM stock.real_time_prices p
                    WHERE p.symbol = s.symbol ORDER BY agg_trade_id DESC LIMIT 1) AS r
LEFT JOIN stock.market_clock c ON c.symbol = s.symbol AND c.source = r.source
"""
EXISTING_ROWS = """
SELECT p.symbol, p.price, p.volume, p.timestamp, p.agg_trade_id, p.first_trade_id, p.last_trade_id,
       p.is_buyer_maker, p.source
FROM unnest(%s::text[], %s::bigint[]) AS k(symbol, agg_trade_id)
JOIN stock.real_time_prices p ON p.symbol = k.symbol AND p.agg_trade_id = k.agg_trade_id
"""
CLOCKS = """
INSERT INTO stock.market_clock (source, symbol, closed_until_ms) VALUES %s
ON CONFLICT (source, symbol) DO UPDATE SET closed_until_ms = EXCLUDED.closed_until_ms, updated_at = now()
WHERE stock.market_clock.closed_until_ms < EXCLUDED.closed_until_ms
"""
DEAD_LETTERS = ('INSERT INTO stock.rejected_messages (topic, partition, "offset", message_key, raw_payload,'
                " payload_bytes, payload_sha256, error)"
                " VALUES %s ON CONFLICT (topic, partition, \"offset\") DO NOTHING")
# Where the batch's writes reached, in its transaction: a point-in-time restore rewinds the group to it.
CONSUMER_OFFSETS = ("INSERT INTO stock.consumer_offsets (topic, partition, next_offset) VALUES %s"
                    " ON CONFLICT (topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()")


class Accepted(msgspec.Struct, frozen=True):
    """A valid message: a trade, or a market clock (``trade`` holds either)."""

    trade: TradeMessage | MarketClock
    topic: str
    partition: int
    offset: int


class Rejected(msgspec.Struct, frozen=True):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    raw: bytes
    error: str


def classify(records: Iterable, known_symbols: frozenset[str], now_ms: int) -> tuple[list[Accepted], list[Rejected]]:
    """Splits Kafka records into trades and dead letters; never raises on any payload."""
    accepted, rejected = [], []
    for record in records:
        try:
            trade = parse_message(record.value, known_symbols, now_ms)
            accepted.append(Accepted(trade, record.topic, record.partition, record.offset))
        except InvalidMessage as exc:
            rejected.append(Rejected(record.topic, record.partition, record.offset, record.key,
                                     record.value or b"", str(exc)))
    return accepted, rejected


def next_offsets(accepted: Iterable[Accepted], rejected: Iterable[Rejected]) -> list[tuple[str, int, int]]:
    """(topic, partition, offset after the batch's last message) per partition: every record of a polled
    batch is either accepted or rejected, so together they cover it."""
    reached: dict[tuple[str, int], int] = {}
    for item in (*accepted, *rejected):
        key = (item.topic, item.partition)
        reached[key] = max(reached.get(key, 0), item.offset + 1)
    return [(topic, partition, offset) for (topic, partition), offset in sorted(reached.items())]


def dead_letter_row(rejected: Rejected, max_bytes: int) -> tuple:
    """What is stored of a dead letter: the payload's first ``max_bytes``, its full length and its SHA-256."""
    return (rejected.topic, rejected.partition, rejected.offset,
            psycopg2.Binary(rejected.key) if rejected.key is not None else None,
            psycopg2.Binary(rejected.raw[:max_bytes]), len(rejected.raw),
            psycopg2.Binary(hashlib.sha256(rejected.raw).digest()), rejected.error)


@functools.lru_cache(maxsize=4096)
def _csv_text(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def encode_copy_rows(trades: Iterable[TradeMessage]) -> bytes:
    """The COPY buffer (CSV, columns of ``TRADE_COLUMNS``) built in one pass of f-strings: a third of the
    cost of ``csv.writer`` with ``Decimal`` and ``datetime`` objects. Texts are always quoted."""
    return "".join([
        f"{_csv_text(t.symbol)},{t.price},{t.timestamp},{utc_text(t.timestamp)},{t.volume},{t.agg_trade_id},"
        f"{t.first_trade_id},{t.last_trade_id},{t.last_trade_id - t.first_trade_id + 1},"
        f"{'t' if t.is_buyer_maker else 'f'},{_csv_text(t.source)}\n"
        for t in trades
    ]).encode()


def _row(trade: TradeMessage) -> tuple:
    return (trade.symbol, trade.price, trade.timestamp, trade.event_time, trade.volume, trade.agg_trade_id,
            trade.first_trade_id, trade.last_trade_id, trade.trades, trade.is_buyer_maker, trade.source)


@dataclass(frozen=True)
class WriteOutcome:
    """What one batch did: new trades, identical re-reads skipped, trades dead-lettered by the writer."""

    written: int
    duplicates: int = 0
    refused: tuple[Rejected, ...] = ()


class TradeWriter:
    """Writes one batch per transaction through a small connection pool."""

    def __init__(self, database_url: str, max_connections: int = 2, dead_letter_max_bytes: int = 65536,
                 limits: Limits = DEFAULT_LIMITS) -> None:
        self.database_url = database_url
        self.max_connections = max_connections
        self.dead_letter_max_bytes = dead_letter_max_bytes
        self.limits = limits
        self._pool: ThreadedConnectionPool | None = None

    def _connection(self):
        if self._pool is None:
            self._pool = ThreadedConnectionPool(1, self.max_connections, self.database_url, connect_timeout=5)
        return self._pool.getconn()

    def _release(self, connection, broken: bool) -> None:
        if self._pool is not None:
            self._pool.putconn(connection, close=broken)

    def write(self, accepted: list[Accepted], rejected: list[Rejected]) -> WriteOutcome:
        """Trades that ``admission.judge`` refuses and rows PostgreSQL itself refuses become dead letters too."""
        connection = self._connection()
        broken = False
        positions = next_offsets(accepted, rejected)
        try:
            return self._write_batch(connection, accepted, rejected, positions)
        except CONNECTION_ERRORS:
            broken = True
            raise
        finally:
            self._release(connection, broken)

    def _write_batch(self, connection, accepted: list[Accepted], rejected: list[Rejected],
                     positions: list[tuple[str, int, int]]) -> WriteOutcome:
        with connection, connection.cursor() as cursor:
            written, duplicates, refused = 0, 0, []
            trades = [item for item in accepted if isinstance(item.trade, TradeMessage)]
            if trades:
                new, duplicates, refused = self._admit(cursor, trades)
                written = self._insert(cursor, new, refused) if new else 0
            clocks: dict[tuple[str, str], int] = {}
            for item in accepted:
                if isinstance(item.trade, MarketClock):
                    key = (item.trade.source, item.trade.symbol)
                    clocks[key] = max(clocks.get(key, 0), item.trade.closed_until_ms)
            if clocks:
                execute_values(cursor, CLOCKS, [(source, symbol, ms) for (source, symbol), ms in clocks.items()])
            if rejected or refused:
                execute_values(cursor, DEAD_LETTERS, [dead_letter_row(r, self.dead_letter_max_bytes)
                                                      for r in rejected + refused])
            if positions:
                execute_values(cursor, CONSUMER_OFFSETS, positions)
            return WriteOutcome(written, duplicates, tuple(refused))

    def _admit(self, cursor, trades: list[Accepted]) -> tuple[list[Accepted], int, list[Rejected]]:
        """Judges the batch against the stored rows of its symbols (``admission.judge``), under their locks."""
        symbols = sorted({item.trade.symbol for item in trades})
        cursor.execute(LOCK_SYMBOLS, (symbols,))
        cursor.execute(NEWEST_STORED, (symbols,))
        stored = {symbol: StoredSymbol(agg_id, ms, source, closed)
                  for symbol, agg_id, ms, source, closed in cursor.fetchall()}
        candidates = [item.trade for item in trades
                      if item.trade.symbol in stored and item.trade.agg_trade_id <= stored[item.trade.symbol].newest_id]
        existing = {}
        if candidates:
            cursor.execute(EXISTING_ROWS, ([t.symbol for t in candidates], [t.agg_trade_id for t in candidates]))
            for row in cursor.fetchall():
                existing[(row[0], row[4])] = TradeMessage(*row)
        verdicts = judge([item.trade for item in trades], stored, existing, self.limits)
        refused = [Rejected(trades[index].topic, trades[index].partition, trades[index].offset,
                            trades[index].trade.key, trades[index].trade.to_json(), reason)
                   for index, reason in verdicts.refused]
        return [trades[index] for index in verdicts.new], verdicts.duplicates, refused

    def _insert(self, cursor, new: list[Accepted], refused: list[Rejected]) -> int:
        """All rows at once; if PostgreSQL refuses one (a defect of validation), one by one, adding the rows it
        refuses to ``refused`` so that they cannot stall the stream."""
        cursor.execute("SAVEPOINT whole_batch")
        try:
            written = self._copy(cursor, encode_copy_rows(item.trade for item in new))
            cursor.execute("RELEASE SAVEPOINT whole_batch")
            return written
        except ROW_ERRORS:
            cursor.execute("ROLLBACK TO SAVEPOINT whole_batch")
        return self._write_one_by_one(cursor, new, refused)

    @staticmethod
    def _copy(cursor, rows: bytes) -> int:
        """COPY straight into the table, twice as fast as a merge; a batch holding a row that is already
        there (read again after a crash or a rebalance) is merged instead, skipping those rows."""
        cursor.execute("SAVEPOINT direct_copy")
        try:
            cursor.copy_expert(COPY_TRADES, io.BytesIO(rows), size=COPY_READ_BYTES)
            copied = cursor.rowcount
            cursor.execute("RELEASE SAVEPOINT direct_copy")
            return copied
        except psycopg2.errors.UniqueViolation:
            cursor.execute("ROLLBACK TO SAVEPOINT direct_copy")
        cursor.execute(STAGING_TABLE)
        cursor.copy_expert(COPY_INCOMING, io.BytesIO(rows), size=COPY_READ_BYTES)
        cursor.execute(MERGE)
        return cursor.rowcount

    @staticmethod
    def _write_one_by_one(cursor, new: list[Accepted], refused: list[Rejected]) -> int:
        written = 0
        for item in new:
            cursor.execute("SAVEPOINT one_row")
            try:
                cursor.execute(INSERT_ONE, _row(item.trade))
                written += cursor.rowcount
                cursor.execute("RELEASE SAVEPOINT one_row")
            except ROW_ERRORS as exc:
                cursor.execute("ROLLBACK TO SAVEPOINT one_row")
                refused.append(Rejected(item.topic, item.partition, item.offset, item.trade.key,
                                        item.trade.to_json(), f"refused by PostgreSQL: {str(exc).strip()[:300]}"))
        return written

    def close(self) -> None:
        if self._pool is not None:
            self._pool.closeall()
            self._pool = None


@dataclass(frozen=True)
class ConsumerConfig:
    bootstrap_servers: str
    topic: str
    group: str
    database_url: str
    symbols: frozenset[str]
    batch_size: int
    check_crcs: bool = False
    poll_timeout_ms: int = 500
    instance_id: str | None = None
    dead_letter_max_bytes: int = 65536
    limits: Limits = DEFAULT_LIMITS
    kafka_security: dict[str, str] = field(default_factory=dict, repr=False)  # credentials.kafka_security

    @classmethod
    def from_settings(cls, settings: PlatformSettings, worker: int = 0) -> ConsumerConfig:
        """Worker I > 0 of CONSUMER_WORKERS is the static member ``<CONSUMER_INSTANCE_ID>-I``: ids stay unique."""
        instance_id = settings.consumer_instance_id
        if instance_id and worker:
            instance_id = f"{instance_id}-{worker}"
        return cls(settings.kafka_bootstrap_servers, settings.kafka_topic, settings.consumer_group,
                   role_database_url(settings, INGEST_WRITER), frozenset(settings.symbols), settings.consumer_batch_size,
                   settings.consumer_check_crcs, instance_id=instance_id or None,
                   dead_letter_max_bytes=settings.dead_letter_max_bytes,
                   limits=Limits(settings.consumer_max_id_distance, settings.consumer_max_lateness_s * 1000),
                   kafka_security=kafka_security(settings, KAFKA_CONSUMER))


class PricesConsumer:
    """Polls, validates, writes, then commits; retries PostgreSQL with backoff without losing a message."""

    def __init__(self, config: ConsumerConfig) -> None:
        self.config = config
        self.writer = TradeWriter(config.database_url, dead_letter_max_bytes=config.dead_letter_max_bytes,
                                  limits=config.limits)
        self.kafka = KafkaConsumer(
            bootstrap_servers=config.bootstrap_servers, group_id=config.group,
            enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=config.batch_size,
            fetch_max_bytes=64 * 1024 * 1024, max_partition_fetch_bytes=8 * 1024 * 1024,
            check_crcs=config.check_crcs, client_id="prices-consumer", metrics_enabled=False,
            # A static member that restarts takes its partitions back at once (no rebalance), instead of
            # the group waiting out the dead member's 45 s session first.
            group_instance_id=config.instance_id, **config.kafka_security,
        )
        install_fast_records(self.kafka)
        self._stop = threading.Event()
        self._subscribe_once_partitions_are_known()
        # One batch is written to PostgreSQL while the next is polled and validated; offsets are
        # committed on this thread (the Kafka client is not thread-safe) once its write has committed.
        self._writer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pg-writer")
        self._in_flight: tuple[Future, int, dict[TopicPartition, int], list[Accepted], list[Rejected]] | None = None

    def stop(self) -> None:
        self._stop.set()

    def _subscribe_once_partitions_are_known(self) -> None:
        """Joins the group only once this client's metadata has the topic's partitions.

        A leader that assigns before then assigns nothing ("No partition metadata for topic") and must
        rejoin when the metadata arrives: the rebalance that exposes the client bug below.
        """
        while not self.kafka.partitions_for_topic(self.config.topic):
            log.warning("topic has no partitions yet; waiting", extra={"topic": self.config.topic})
            if self._stop.wait(TOPIC_RETRY_S):
                return
        self.kafka.subscribe([self.config.topic])

    def _rejoin_if_join_was_dropped(self) -> None:
        """Works around a kafka-python 3.0.12 bug that left a consumer idle for good.

        When the leader rejoins because its topic metadata changed (partitions appeared or grew, a broker
        restarted), that is remembered only as "metadata differs from the last assignment", and the
        leader's next assignment makes them equal again. If ``poll`` times out while that join is in
        flight, the next ``poll`` no longer sees a reason to rejoin and never collects the join's result:
        the member stays "rebalancing" with no partitions and no heartbeats, is evicted after the session
        timeout, and the other members take every partition. A finished join nobody collected is the
        sign; asking for a rejoin starts a fresh one.
        """
        coordinator = self.kafka._coordinator
        join = getattr(coordinator, "_join_task", None)
        if join is not None and join.is_done and not coordinator.need_rejoin():
            log.warning("group join result was dropped by the Kafka client; rejoining",
                        extra={"group": self.config.group})
            coordinator.request_rejoin()

    def run(self) -> None:
        log.info("consumer started", extra={"topic": self.config.topic, "group": self.config.group})
        try:
            while not self._stop.is_set():
                try:
                    batches = self.kafka.poll(timeout_ms=self.config.poll_timeout_ms)
                except KafkaError as exc:
                    # The client reconnects by itself; a poll that failed while the broker is away is retried.
                    log.warning("poll failed; retrying", extra={"error": repr(exc)[:200]})
                    self._stop.wait(POLL_RETRY_S)
                    continue
                self._rejoin_if_join_was_dropped()
                records = [record for batch in batches.values() for record in batch]
                accepted, rejected = classify(records, self.config.symbols, time.time_ns() // 1_000_000)
                self._finish_in_flight()
                if records:
                    future = self._writer_thread.submit(self._write_with_retry, accepted, rejected)
                    reached = {tp: batch[-1].offset + 1 for tp, batch in batches.items() if batch}
                    self._in_flight = (future, len(records), reached, accepted, rejected)
                self._report_lag()
            self._finish_in_flight()
        finally:
            self._writer_thread.shutdown(wait=True)
            self.kafka.close(autocommit=False)
            self.writer.close()
            log.info("consumer stopped")

    def _finish_in_flight(self) -> None:
        if self._in_flight is None:
            return
        future, count, reached, accepted, rejected = self._in_flight
        self._in_flight = None
        outcome = future.result()
        if outcome is None:
            return
        committed_at = time.time()
        END_TO_END.observe_all([max(0.0, committed_at - item.trade.timestamp / 1000) for item in accepted
                                if isinstance(item.trade, TradeMessage)])
        BATCH_SIZE.observe(count)
        RESULTS.labels("written").inc(outcome.written)
        RESULTS.labels("duplicate").inc(outcome.duplicates)
        RESULTS.labels("rejected").inc(len(rejected) + len(outcome.refused))
        for item in [*rejected, *outcome.refused]:
            log.info("message dead-lettered", extra={"partition": item.partition, "offset": item.offset,
                                                     "reason": item.error[:200]})
        self._commit(reached)

    def _commit(self, reached: dict[TopicPartition, int]) -> None:
        """``reached``: per partition, the offset after the batch's last record (records come in offset order)."""
        try:
            self.kafka.commit({tp: OffsetAndMetadata(offset, "", -1) for tp, offset in reached.items()})
        except (CommitFailedError, KafkaError) as exc:
            # The group moved on (rebalance): the new owner re-reads this batch and the unique keys absorb it.
            log.warning("offset commit failed; batch will be re-read", extra={"error": repr(exc)[:200]})

    def _write_with_retry(self, accepted: list[Accepted], rejected: list[Rejected]) -> WriteOutcome | None:
        """The batch written, however long PostgreSQL is away; None when stopped meanwhile (nothing committed)."""

        def write() -> WriteOutcome:
            try:
                return self.writer.write(accepted, rejected)
            except CONNECTION_ERRORS:
                DB_RETRIES.inc()
                raise

        return retry_while_unavailable(write, CONNECTION_ERRORS, initial_s=RETRY_INITIAL_S, max_s=RETRY_MAX_S,
                                       log=log, message="PostgreSQL unavailable; retrying", stop=self._stop)

    def _report_lag(self) -> None:
        """Best effort and never blocking: with the broker away or a rebalance under way, ``position`` needs
        the network (and raises); that skips one report rather than stopping the consumer."""
        for tp in self.kafka.assignment():
            highwater = self.kafka.highwater(tp)
            if highwater is None:
                continue
            try:
                position = self.kafka.position(tp, timeout_ms=0)
            except KafkaError:
                continue
            if position is not None:
                LAG.labels(str(tp.partition)).set(max(0, highwater - position))


def main(argv: list[str] | None = None) -> int:
    """``--worker I`` (0 to CONSUMER_WORKERS - 1): one of the group's processes; Kafka shares the partitions."""
    worker = worker_argument("python -m streaming_services.consumer", argv)
    try:
        settings = PlatformSettings.from_env()
        if not 0 <= worker < settings.consumer_workers:
            raise SettingsError(f"--worker {worker} is outside CONSUMER_WORKERS={settings.consumer_workers}")
        config = ConsumerConfig.from_settings(settings, worker)
        configure_logging(settings.log_level)
        start_metrics("CONSUMER_METRICS_PORT", settings.bind_host,
                      settings.consumer_metrics_port + worker * WORKER_PORT_STRIDE)
    except (SettingsError, StartupError) as exc:
        print(f"consumer: {exc}", file=sys.stderr)
        return 2
    consumer = wait_for_kafka(lambda: PricesConsumer(config), config.bootstrap_servers)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: consumer.stop())
    consumer.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
