"""The consumer's PostgreSQL sink: one polled batch per transaction, idempotently.

Valid trades (COPY, merged through a staging table on conflict), market clocks, dead letters and the
batch's Kafka positions (``stock.consumer_offsets``) commit in one transaction or not at all; the unique
keys absorb a replayed batch. ``TRADE_COLUMNS`` is the one list of trade columns every statement uses.

The trades table has a partition per UTC day (``sql/013``): the batch's days are made sure of first, in a
transaction of their own (creating a partition locks the whole table: never while the batch holds its
symbols' locks), and the writer runs the partitions' maintenance (the week ahead, ``RAW_RETENTION_DAYS``) hourly.
Its trade key is (symbol, agg_trade_id, event_time): a trade delivered again has the same time, so the same
key; the same id at another time is a conflicting duplicate that ``admission.judge`` refuses first.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

import msgspec
import psycopg2
import psycopg2.errors
from psycopg2.extras import execute_values
from psycopg2.pool import ThreadedConnectionPool

from crypto_platform.raw_partitions import DAY_MS, dropped_among, ensure_days, maintain, utc_day
from streaming_services.admission import DEFAULT_LIMITS, Limits, StoredSymbol, judge
from streaming_services.messages import MarketClock, TradeMessage, utc_text

MAINTENANCE_EVERY_S = 3600.0

log = logging.getLogger(__name__)

CONNECTION_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError)
ROW_ERRORS = (psycopg2.DataError, psycopg2.IntegrityError)

STAGING_TABLE = """
CREATE TEMP TABLE IF NOT EXISTS incoming_trades (
    symbol TEXT, price NUMERIC, timestamp BIGINT, event_time TIMESTAMPTZ, volume NUMERIC,
    agg_trade_id BIGINT, first_trade_id BIGINT, last_trade_id BIGINT, trades INTEGER,
    is_buyer_maker BOOLEAN, source TEXT
) ON COMMIT DELETE ROWS
"""
COPY_INCOMING = "COPY incoming_trades FROM STDIN"
COPY_CHUNK_ROWS = 500  # about 60 KB of rows a read
TRADE_COLUMNS = ("symbol, price, timestamp, event_time, volume, agg_trade_id, first_trade_id, last_trade_id, trades,"
                 " is_buyer_maker, source")
# COPY's text format, which PostgreSQL parses faster than CSV.
COPY_TRADES = f"COPY stock.real_time_prices ({TRADE_COLUMNS}) FROM STDIN"
# The column list is a constant of this module, never input.
MERGE = (f"INSERT INTO stock.real_time_prices ({TRADE_COLUMNS}) SELECT {TRADE_COLUMNS} FROM incoming_trades"  # noqa: S608
         " ON CONFLICT (symbol, agg_trade_id, event_time) DO NOTHING")
INSERT_ONE = (f"INSERT INTO stock.real_time_prices ({TRADE_COLUMNS})"  # noqa: S608
              f" VALUES ({', '.join(['%s'] * len(TRADE_COLUMNS.split(',')))})"
              " ON CONFLICT (symbol, agg_trade_id, event_time) DO NOTHING")
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
                    " ON CONFLICT (topic, partition)"
                    " DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()")


class Accepted(msgspec.Struct, frozen=True, gc=False):
    """A valid message: a trade, or a market clock (``trade`` holds either)."""

    trade: TradeMessage | MarketClock
    topic: str
    partition: int
    offset: int


class Rejected(msgspec.Struct, frozen=True, gc=False):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    raw: bytes
    error: str


def next_offsets(accepted: list[Accepted], rejected: list[Rejected]) -> list[tuple[str, int, int]]:
    """(topic, partition, offset after the batch's last message) per partition: every record of a polled
    batch is either accepted or rejected, so together they cover it. Each list keeps the poll's order, in
    which a partition's messages come in offset order, so a list's last message of a partition is its
    greatest there (one dict entry a message, not a ``max`` call: a microsecond a row in the writer)."""
    reached = {(item.topic, item.partition): item.offset + 1 for item in accepted}
    for (topic, partition), offset in {(item.topic, item.partition): item.offset + 1 for item in rejected}.items():
        reached[topic, partition] = max(reached.get((topic, partition), 0), offset)
    return sorted((topic, partition, offset) for (topic, partition), offset in reached.items())


def dead_letter_row(rejected: Rejected, max_bytes: int) -> tuple:
    """What is stored of a dead letter: the payload's first ``max_bytes``, its full length and its SHA-256."""
    return (rejected.topic, rejected.partition, rejected.offset,
            psycopg2.Binary(rejected.key) if rejected.key is not None else None,
            psycopg2.Binary(rejected.raw[:max_bytes]), len(rejected.raw),
            psycopg2.Binary(hashlib.sha256(rejected.raw).digest()), rejected.error)


@functools.lru_cache(maxsize=4096)
def _copy_text(text: str) -> str:
    """A text field of COPY's text format; symbols and sources are few, so each is escaped once."""
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def encode_copy_rows(trades: Iterable[TradeMessage]) -> bytes:
    """The COPY buffer (text format, columns of ``TRADE_COLUMNS``) built in one pass of f-strings: a third of
    the cost of ``csv.writer`` with ``Decimal`` and ``datetime`` objects. Numbers, times and booleans need
    no escaping; texts are escaped (``_copy_text``)."""
    return "".join([
        f"{_copy_text(t.symbol)}\t{t.price}\t{t.timestamp}\t{utc_text(t.timestamp)}\t{t.volume}\t{t.agg_trade_id}\t"
        f"{t.first_trade_id}\t{t.last_trade_id}\t{t.last_trade_id - t.first_trade_id + 1}\t"
        f"{'t' if t.is_buyer_maker else 'f'}\t{_copy_text(t.source)}\n"
        for t in trades
    ]).encode()


class CopyStream:
    """The COPY input of ``trades``, encoded ``COPY_CHUNK_ROWS`` rows at a time as psycopg2 reads it:
    PostgreSQL parses and inserts one chunk while the next is encoded, where a whole buffer encoded first
    kept it waiting (encoding is about a fifth of a batch's write)."""

    def __init__(self, trades: list[TradeMessage]) -> None:
        self._trades = trades
        self._next = 0

    def read(self, size: int = -1) -> bytes:
        """The next chunk of rows, whatever ``size`` asks (psycopg2 sends each read as it comes); b"" at the end."""
        start, self._next = self._next, self._next + COPY_CHUNK_ROWS
        return encode_copy_rows(self._trades[start:self._next])


def refuse_dropped_days(trades: list[Accepted], dropped: set[date]) -> tuple[list[Accepted], list[Rejected]]:
    """Trades of days that retention dropped become dead letters. Written back, such a day's partition would
    hold a few trades of a day whose candles were computed from all of them, and a backfill of the day would
    shrink those candles; the day's Binance file can be imported instead (``make import``)."""
    kept, refused = [], []
    for item in trades:
        day = utc_day(item.trade.timestamp)
        if day in dropped:
            refused.append(Rejected(item.topic, item.partition, item.offset, item.trade.key, item.trade.to_json(),
                                    f"trade of {day}, a UTC day whose raw trades retention dropped"
                                    " (RAW_RETENTION_DAYS): not written back"))
        else:
            kept.append(item)
    return kept, refused


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
                 limits: Limits = DEFAULT_LIMITS, maintenance_every_s: float = MAINTENANCE_EVERY_S) -> None:
        self.database_url = database_url
        self.max_connections = max_connections
        self.dead_letter_max_bytes = dead_letter_max_bytes
        self.limits = limits
        self.maintenance_every_s = maintenance_every_s
        self._pool: ThreadedConnectionPool | None = None
        self._next_maintenance = 0.0
        self._days_made: set[int] = set()  # days (since the epoch) from today on whose partition was there

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
        trades = [item for item in accepted if isinstance(item.trade, TradeMessage)]
        try:
            if time.monotonic() >= self._next_maintenance:
                self._maintain(connection)
            dropped = self._make_days(connection, trades) if trades else set()
            trades, refused = refuse_dropped_days(trades, dropped) if dropped else (trades, [])
            return self._write_batch(connection, trades, accepted, rejected, refused, positions)
        except CONNECTION_ERRORS:
            broken = True
            raise
        finally:
            self._release(connection, broken)

    def _make_days(self, connection, trades: list[Accepted]) -> set[date]:
        """The partitions of the batch's days made where missing; returns those of its days that retention
        dropped, which are not made again. Per batch, not per row: the days from its earliest trade's to its
        latest's.

        Days from today on are remembered once made: retention never drops them (it keeps at least the day
        before today; this machine's clock would have to be a day behind the database's). An older day is
        asked about at every batch that has one: another worker's or ``make up``'s maintenance may drop it."""
        first = min(item.trade.timestamp for item in trades) // DAY_MS
        last = max(item.trade.timestamp for item in trades) // DAY_MS
        today = int(time.time() * 1000) // DAY_MS
        unknown = [day for day in range(first, last + 1) if day < today or day not in self._days_made]
        if not unknown:
            return set()
        days = [utc_day(day * DAY_MS) for day in unknown]
        with connection, connection.cursor() as cursor:
            dropped = set(dropped_among(cursor, days))
            ensure_days(cursor, [day for day in days if day not in dropped])
        self._days_made.update(day for day in unknown if day >= today)
        return dropped

    def _maintain(self, connection) -> None:
        """The partitions' hourly maintenance, in its own transaction. A failure leaves it to the next hour
        (logged; a lost connection is raised for the batch's retry): the week made ahead leaves time, and
        every batch makes its own days."""
        try:
            with connection, connection.cursor() as cursor:
                done = maintain(cursor)
        except CONNECTION_ERRORS:
            raise
        except psycopg2.Error as exc:
            log.warning("raw partition maintenance failed; next try in an hour",
                        extra={"error": str(exc).strip()[:200]})
            return
        finally:
            self._next_maintenance = time.monotonic() + self.maintenance_every_s
        if done.created or done.dropped or done.busy:
            log.info("raw partitions maintained", extra={"created": done.created, "dropped": done.dropped,
                                                         "busy": done.busy})

    def _write_batch(self, connection, trades: list[Accepted], accepted: list[Accepted], rejected: list[Rejected],
                     refused: list[Rejected], positions: list[tuple[str, int, int]]) -> WriteOutcome:
        with connection, connection.cursor() as cursor:
            written, duplicates = 0, 0
            if trades:
                new, duplicates, judged = self._admit(cursor, trades)
                refused = refused + judged
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
            written = self._copy(cursor, [item.trade for item in new])
            cursor.execute("RELEASE SAVEPOINT whole_batch")
            return written
        except ROW_ERRORS:
            cursor.execute("ROLLBACK TO SAVEPOINT whole_batch")
        return self._write_one_by_one(cursor, new, refused)

    @staticmethod
    def _copy(cursor, trades: list[TradeMessage]) -> int:
        """COPY straight into the table, twice as fast as a merge; a batch holding a row that is already
        there (read again after a crash or a rebalance) is merged instead, skipping those rows."""
        cursor.execute("SAVEPOINT direct_copy")
        try:
            cursor.copy_expert(COPY_TRADES, CopyStream(trades))
            copied = cursor.rowcount
            cursor.execute("RELEASE SAVEPOINT direct_copy")
            return copied
        except psycopg2.errors.UniqueViolation:
            cursor.execute("ROLLBACK TO SAVEPOINT direct_copy")
        cursor.execute(STAGING_TABLE)
        cursor.copy_expert(COPY_INCOMING, CopyStream(trades))
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
