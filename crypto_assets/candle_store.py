"""The PostgreSQL side of the candle assets (psycopg2, parameterized SQL): the ingestion cursor, what
changed since it, the table's state, seeds for empty windows, and the one-transaction merges.

Spark does the heavy reading and computing over JDBC (``spark_io``); this module only plans and commits.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from crypto_assets.candles import MAX_TRADE_QUOTE, Segment, Timeframe, to_ms

STOCK = "stock"
# Above the ingest_xid 0 of bulk-imported rows (streaming_services/importer.py), whose candles the import
# recomputes itself; below every real transaction id (3 and up), so no streamed row is skipped.
START_CURSOR = "1"


@dataclass(frozen=True)
class Changes:
    """Windows touched by rows read this run, and where the cursor moves once they are merged.

    ``closed_until``: per symbol, what its watermark is made of; ``left_out``: (symbol, agg id) of the rows
    read that the candles cannot aggregate and leave out (price × volume of ``candles.MAX_TRADE_QUOTE``
    or more).
    """

    dirty: dict[str, set[int]]
    rows: int
    closed_until: dict[str, int]
    next_cursor: str | None = None
    left_out: list[tuple[str, int]] = field(default_factory=list)


@dataclass(frozen=True)
class MergeStats:
    """What a merge did: windows staged, trades inside them, rows changed, their span, newest final end."""

    windows: int
    trades: int
    written: int
    span: tuple[int, int] | None
    newest_final_end_ms: int | None


@dataclass(frozen=True)
class SymbolState:
    last_final: int | None
    first_published: int | None


class MarketStore:
    """Plans and commits candle runs against one market-data database."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url

    def connect(self) -> psycopg2.extensions.connection:
        return psycopg2.connect(self.database_url, connect_timeout=10, application_name="crypto_assets")

    @contextmanager
    def transaction(self, snapshot: bool = False) -> Iterator[psycopg2.extensions.cursor]:
        """A cursor in one transaction, committed on success; ``snapshot``: one read-only snapshot."""
        connection = self.connect()
        try:
            if snapshot:
                connection.set_session(isolation_level="REPEATABLE READ", readonly=True)
            with connection, connection.cursor() as cursor:
                yield cursor
        finally:
            connection.close()

    @contextmanager
    def exclusive(self, name: str) -> Iterator[None]:
        """One writer per table at a time (sensor runs, a backfill, a UI click), whoever starts them."""
        connection = self.connect()
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_lock(%s)", (zlib.crc32(name.encode()),))
            yield
        finally:
            connection.close()

    def closed_until(self, cursor: psycopg2.extensions.cursor) -> dict[str, int]:
        """Per symbol, the time before which every trade of it is in the table, as this snapshot sees it.

        The greater of the symbol's newest trade time (its trades arrive in id order) and the exchange's
        market clock for it (``stock.market_clock``: a quiet symbol's minute closes without a next trade).
        Symbols are found by a skip scan of the (symbol, event_time) index, one probe per symbol.
        """
        cursor.execute(
            "WITH RECURSIVE symbols(symbol) AS ("
            "  (SELECT symbol FROM stock.real_time_prices ORDER BY symbol LIMIT 1)"
            "  UNION ALL"
            "  SELECT (SELECT r.symbol FROM stock.real_time_prices r WHERE r.symbol > s.symbol"
            "          ORDER BY r.symbol LIMIT 1)"
            "  FROM symbols s WHERE s.symbol IS NOT NULL)"
            " SELECT symbol, (SELECT r.timestamp FROM stock.real_time_prices r WHERE r.symbol = symbols.symbol"
            "  ORDER BY r.event_time DESC LIMIT 1) FROM symbols WHERE symbol IS NOT NULL"
        )
        marks = {symbol: int(newest) for symbol, newest in cursor.fetchall()}
        cursor.execute("SELECT symbol, max(closed_until_ms) FROM stock.market_clock GROUP BY symbol")
        for symbol, clock in cursor.fetchall():
            marks[symbol] = max(marks.get(symbol, clock), int(clock))
        return marks

    def changes_since_cursor(self, timeframe: Timeframe) -> Changes:
        """Rows at or past the cursor, seen in one snapshot together with that snapshot's xmin.

        Every row this snapshot cannot see belongs to a transaction with an id >= its xmin (in flight or
        later), so the next run, which reads from that xmin, sees it: no row is skipped, whatever order
        concurrent writers commit in. Rows seen twice only make a window be recomputed twice.
        """
        with self.transaction(snapshot=True) as cursor:
                cursor.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
                next_cursor = cursor.fetchone()[0]
                cursor.execute("SELECT ingest_xid::text FROM stock.candle_cursors WHERE name = %s",
                               (timeframe.asset_name,))
                row = cursor.fetchone()
                position = row[0] if row else START_CURSOR
                cursor.execute(
                    "SELECT symbol, timestamp - timestamp %% %s, count(*) FROM stock.real_time_prices"
                    " WHERE ingest_xid >= %s::xid8 GROUP BY 1, 2",
                    (timeframe.size_ms, position),
                )
                dirty, rows = _dirty(cursor.fetchall())
                closed_until = self.closed_until(cursor)
                cursor.execute(_LEFT_OUT.format(where=sql.SQL("ingest_xid >= %(position)s::xid8")),
                               {"position": position, "limit": MAX_TRADE_QUOTE})
                left_out = [(symbol, int(agg_id)) for symbol, agg_id in cursor.fetchall()]
        return Changes(dirty, rows, closed_until, next_cursor, left_out)

    def changes_in_range(self, timeframe: Timeframe, lo_ms: int, hi_ms: int) -> Changes:
        """Windows with trades in ``[lo, hi)`` (a backfill); the cursor does not move."""
        with self.transaction() as cursor:
                cursor.execute(
                    "SELECT symbol, timestamp - timestamp %% %s, count(*) FROM stock.real_time_prices"
                    " WHERE event_time >= timestamptz 'epoch' + %s * interval '1 millisecond'"
                    " AND event_time < timestamptz 'epoch' + %s * interval '1 millisecond'"
                    " AND timestamp >= %s AND timestamp < %s GROUP BY 1, 2",
                    (timeframe.size_ms, lo_ms, hi_ms, lo_ms, hi_ms),
                )
                dirty, rows = _dirty(cursor.fetchall())
                closed_until = self.closed_until(cursor)
                cursor.execute(_LEFT_OUT.format(where=sql.SQL(
                    "event_time >= timestamptz 'epoch' + %(lo)s * interval '1 millisecond'"
                    " AND event_time < timestamptz 'epoch' + %(hi)s * interval '1 millisecond'"
                    " AND timestamp >= %(lo)s AND timestamp < %(hi)s")),
                    {"lo": lo_ms, "hi": hi_ms, "limit": MAX_TRADE_QUOTE})
                left_out = [(symbol, int(agg_id)) for symbol, agg_id in cursor.fetchall()]
        return Changes(dirty, rows, closed_until, left_out=left_out)

    def pending_trades(self, timeframe: Timeframe) -> tuple[str, int, str | None]:
        """(cursor, rows at or past it, their newest writer xid): what the next run would read."""
        with self.transaction(snapshot=True) as cursor:
            cursor.execute("SELECT ingest_xid::text FROM stock.candle_cursors WHERE name = %s", (timeframe.asset_name,))
            row = cursor.fetchone()
            position = row[0] if row else START_CURSOR
            cursor.execute("SELECT count(*), max(ingest_xid)::text FROM stock.real_time_prices"
                           " WHERE ingest_xid >= %s::xid8", (position,))
            count, newest = cursor.fetchone()
        return position, int(count), newest

    def symbol_states(self, timeframe: Timeframe) -> dict[str, SymbolState]:
        """Per symbol: its last final window and its first window (index-only lookups per symbol)."""
        table = sql.Identifier(STOCK, timeframe.table)
        query = sql.SQL(
            "SELECT s.symbol,"
            " (SELECT max(window_start) FROM {t} WHERE symbol = s.symbol AND is_final),"
            " (SELECT min(window_start) FROM {t} WHERE symbol = s.symbol)"
            " FROM (SELECT DISTINCT symbol FROM {t}) s"
        ).format(t=table)
        with self.transaction() as cursor:
            cursor.execute(query)
            rows = cursor.fetchall()
        return {symbol: SymbolState(_ms(last_final), _ms(first)) for symbol, last_final, first in rows}

    def next_with_trades(self, timeframe: Timeframe, dirty: dict[str, set[int]], not_before_ms: int | None = None
                         ) -> dict[tuple[str, int], int | None]:
        """For each dirty window, the table's next window with trades after it (at or past ``not_before``)."""
        pairs = [(symbol, start) for symbol, starts in dirty.items() for start in starts]
        if not pairs:
            return {}
        query = sql.SQL(
            "SELECT d.symbol, d.start_ms, (SELECT (extract(epoch FROM min(a.window_start)) * 1000)::bigint FROM {t} a"
            "  WHERE a.symbol = d.symbol AND a.trade_count > 0"
            "  AND a.window_start > timestamptz 'epoch' + greatest(d.start_ms, %s) * interval '1 millisecond')"
            " FROM unnest(%s::text[], %s::bigint[]) AS d(symbol, start_ms)"
        ).format(t=sql.Identifier(STOCK, timeframe.table))
        floor = -1 if not_before_ms is None else not_before_ms - 1
        with self.transaction() as cursor:
            cursor.execute(query, (floor, [p[0] for p in pairs], [p[1] for p in pairs]))
            rows = cursor.fetchall()
        return {(symbol, int(start)): None if nxt is None else int(nxt) for symbol, start, nxt in rows}

    def seeds(self, timeframe: Timeframe, segments: Sequence[Segment]) -> list[tuple[str, int, Decimal]]:
        """The close of the window before each segment that starts without known trades."""
        wanted = [(s.symbol, s.first - timeframe.size_ms) for s in segments if s.needs_seed]
        if not wanted:
            return []
        query = sql.SQL(
            "SELECT d.symbol, d.start_ms, a.close_price FROM unnest(%s::text[], %s::bigint[]) AS d(symbol, start_ms)"
            " JOIN {t} a ON a.symbol = d.symbol"
            " AND a.window_start = timestamptz 'epoch' + d.start_ms * interval '1 millisecond'"
        ).format(t=sql.Identifier(STOCK, timeframe.table))
        with self.transaction() as cursor:
            cursor.execute(query, ([w[0] for w in wanted], [w[1] for w in wanted]))
            rows = cursor.fetchall()
        return [(symbol, int(start), close) for symbol, start, close in rows]

    def merge_candles(self, timeframe: Timeframe, batch_id: str, next_cursor: str | None, watermark_ms: int | None,
                      delete_range: tuple[int, int] | None = None) -> MergeStats:
        """Staged candles into the table, the cursor moved, the batch dropped: one transaction.

        ``delete_range``: a backfill first removes every candle of ``[lo, hi)`` so nothing stale survives.
        An identical recomputed candle is not rewritten, so ``written`` counts real changes.
        """
        table = sql.Identifier(STOCK, timeframe.table)
        with self.transaction() as cursor:
            cursor.execute("SELECT count(*), coalesce(sum(price_count), 0), min(window_start_ms), max(window_start_ms)"
                           " FROM stock.candle_staging WHERE batch_id = %s", (batch_id,))
            staged, trades, first, last = cursor.fetchone()
            if delete_range is not None:
                cursor.execute(
                    sql.SQL("DELETE FROM {t} WHERE window_start >= timestamptz 'epoch' + %s * interval '1 millisecond'"
                            " AND window_start < timestamptz 'epoch' + %s * interval '1 millisecond'").format(t=table),
                    delete_range,
                )
            cursor.execute(merge_candles_sql(table), {"size": timeframe.size_ms, "batch": batch_id})
            written = cursor.rowcount
            cursor.execute("DELETE FROM stock.candle_staging WHERE batch_id = %s", (batch_id,))
            if next_cursor is not None:
                cursor.execute(
                    "INSERT INTO stock.candle_cursors (name, ingest_xid, watermark_ms) VALUES (%s, %s::xid8, %s)"
                    " ON CONFLICT (name) DO UPDATE SET ingest_xid = EXCLUDED.ingest_xid,"
                    " watermark_ms = EXCLUDED.watermark_ms, updated_at = now()",
                    (timeframe.asset_name, next_cursor, watermark_ms),
                )
            cursor.execute(sql.SQL("SELECT window_end FROM {t} WHERE is_final ORDER BY window_start DESC LIMIT 1")
                           .format(t=table))
            row = cursor.fetchone()
        span = None if first is None else (int(first), int(last) + timeframe.size_ms)
        return MergeStats(int(staged), int(trades), written, span, None if row is None else to_ms(row[0]))

    def minutes_changed(self, timeframe: Timeframe) -> tuple[dict[str, set[int]], datetime | None]:
        """Windows of a rollup whose one-minute candles changed since its cursor, and the cursor's next value.

        Call while holding the one-minute table's lock: no merge is then in flight, every one committed is
        seen, and a later one stamps a later ``updated_at`` (its transaction starts after the lock is freed).
        """
        with self.transaction(snapshot=True) as cursor:
            cursor.execute("SELECT minutes_read_upto FROM stock.rollup_cursors WHERE name = %s",
                           (timeframe.asset_name,))
            row = cursor.fetchone()
            cursor.execute(
                "SELECT symbol, (extract(epoch FROM window_start) * 1000)::bigint / %s * %s, max(updated_at)"
                " FROM stock.aggregated_prices_1min WHERE updated_at > %s GROUP BY 1, 2",
                (timeframe.size_ms, timeframe.size_ms, row[0] if row else datetime(1970, 1, 1, tzinfo=UTC)),
            )
            rows = cursor.fetchall()
        dirty, _count = _dirty([(symbol, start, 1) for symbol, start, _at in rows])
        return dirty, max((at for _s, _w, at in rows), default=None)

    def minutes_in_range(self, timeframe: Timeframe, lo_ms: int, hi_ms: int) -> dict[str, set[int]]:
        """Windows of a rollup in ``[lo, hi)`` that have one-minute candles (a backfill)."""
        with self.transaction() as cursor:
            cursor.execute(
                "SELECT DISTINCT symbol, (extract(epoch FROM window_start) * 1000)::bigint / %s * %s"
                " FROM stock.aggregated_prices_1min"
                " WHERE window_start >= timestamptz 'epoch' + %s * interval '1 millisecond'"
                " AND window_start < timestamptz 'epoch' + %s * interval '1 millisecond'",
                (timeframe.size_ms, timeframe.size_ms, lo_ms, hi_ms),
            )
            return _dirty([(symbol, start, 1) for symbol, start in cursor.fetchall()])[0]

    def advance_rollup_cursor(self, timeframe: Timeframe, read_upto: datetime) -> None:
        with self.transaction() as cursor:
            cursor.execute(
                "INSERT INTO stock.rollup_cursors (name, minutes_read_upto) VALUES (%s, %s) ON CONFLICT (name)"
                " DO UPDATE SET"
                " minutes_read_upto = greatest(rollup_cursors.minutes_read_upto, EXCLUDED.minutes_read_upto),"
                " updated_at = now()",
                (timeframe.asset_name, read_upto),
            )

    def newest_window_start_ms(self, timeframe: Timeframe) -> int | None:
        with self.transaction() as cursor:
            table = sql.Identifier(STOCK, timeframe.table)
            cursor.execute(sql.SQL("SELECT max(window_start) FROM {t}").format(t=table))
            return _ms(cursor.fetchone()[0])

    def newest_published_trade_ms(self) -> int | None:
        with self.transaction() as cursor:
            cursor.execute("SELECT max(event_time) FROM stock.latest_prices")
            return _ms(cursor.fetchone()[0])

    def publish_latest(self, batch_id: str) -> int:
        """The staged latest-prices set replaces the published one in one transaction."""
        with self.transaction() as cursor:
            cursor.execute(MERGE_LATEST, {"batch": batch_id})
            written = cursor.rowcount
            cursor.execute("DELETE FROM stock.latest_prices_staging WHERE batch_id = %s", (batch_id,))
        return written

    def drop_batch(self, batch_id: str) -> None:
        """A failed run's staged rows, so the unlogged staging tables do not grow."""
        with self.transaction() as cursor:
            cursor.execute("DELETE FROM stock.candle_staging WHERE batch_id = %s", (batch_id,))
            cursor.execute("DELETE FROM stock.latest_prices_staging WHERE batch_id = %s", (batch_id,))


# Trades read by a run that the candles leave out: price × volume too large to aggregate (candles.MAX_TRADE_QUOTE).
_LEFT_OUT = sql.SQL("SELECT symbol, agg_trade_id FROM stock.real_time_prices WHERE {where}"
                    " AND price * volume >= %(limit)s ORDER BY 1, 2")


def _dirty(rows: list[tuple[str, int, int]]) -> tuple[dict[str, set[int]], int]:
    dirty: dict[str, set[int]] = {}
    for symbol, start, _count in rows:
        dirty.setdefault(symbol, set()).add(int(start))
    return dirty, sum(int(r[2]) for r in rows)


def _ms(moment: datetime | None) -> int | None:
    return None if moment is None else to_ms(moment)


_CANDLE_COLUMNS = ("open_price", "close_price", "high_price", "low_price", "avg_price", "vwap", "total_volume",
                   "quote_volume", "taker_buy_volume", "trade_count", "first_agg_trade_id", "last_agg_trade_id",
                   "is_final", "price_sum", "price_count")
_LATEST_COLUMNS = ("price", "event_time", "agg_trade_id", "price_24h_ago", "change_24h", "change_pct_24h", "high_24h",
                   "low_24h", "volume_24h", "quote_volume_24h", "trade_count_24h")


def _columns(names: Sequence[str], prefix: str | None = None) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(*(p for p in (prefix, name) if p)) for name in names)


def _assignments(names: Sequence[str]) -> sql.Composable:
    return sql.SQL(", ").join(sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(name)) for name in names)


# avg_price and vwap: the exact quotient rounded half up to 8 decimals by integer division, div(2a + b, 2b),
# which PostgreSQL computes exactly (see candles.py for why not in Spark). An unchanged candle is not rewritten.
def merge_candles_sql(table: sql.Identifier) -> sql.Composed:
    return _MERGE_CANDLES.format(t=table, columns=_columns(_CANDLE_COLUMNS), assignments=_assignments(_CANDLE_COLUMNS),
                                 old=_columns(_CANDLE_COLUMNS, "t"), new=_columns(_CANDLE_COLUMNS, "excluded"))


_MERGE_CANDLES = sql.SQL(
    "INSERT INTO {t} AS t (symbol, window_start, window_end, {columns}, updated_at)"
    " SELECT s.symbol,"
    " timestamptz 'epoch' + s.window_start_ms * interval '1 millisecond',"
    " timestamptz 'epoch' + (s.window_start_ms + %(size)s) * interval '1 millisecond',"
    " s.open_price, s.close_price, s.high_price, s.low_price,"
    " CASE WHEN s.price_count = 0 THEN s.close_price"
    "  ELSE div(s.price_sum * 200000000 + s.price_count, 2 * s.price_count) * 0.00000001 END,"
    " CASE WHEN s.total_volume = 0 THEN NULL"
    "  ELSE div(s.quote_volume * 200000000 + s.total_volume, 2 * s.total_volume) * 0.00000001 END,"
    " s.total_volume, s.quote_volume, s.taker_buy_volume, s.trade_count, s.first_agg_trade_id,"
    " s.last_agg_trade_id, s.is_final, s.price_sum, s.price_count, now()"
    " FROM stock.candle_staging s WHERE s.batch_id = %(batch)s"
    " ON CONFLICT (symbol, window_start) DO UPDATE SET {assignments}, updated_at = now()"
    " WHERE ({old}) IS DISTINCT FROM ({new})"
)

# change_pct_24h: 100 * change / price_24h_ago rounded half away from zero to 4 decimals, exactly; NULL when
# the column (NUMERIC(12, 4)) cannot hold it (a move of a million percent and more).
MERGE_LATEST = sql.SQL(
    "INSERT INTO stock.latest_prices AS t (symbol, {columns}, updated_at)"
    " SELECT s.symbol, s.price, timestamptz 'epoch' + s.event_time_ms * interval '1 millisecond', s.agg_trade_id,"
    " s.price_24h_ago, s.price - s.price_24h_ago,"
    " CASE WHEN s.price_24h_ago > 0 AND abs(s.price - s.price_24h_ago) * 100 < 99999999 * s.price_24h_ago"
    "  THEN sign(s.price - s.price_24h_ago)"
    "  * div(2000000 * abs(s.price - s.price_24h_ago) + s.price_24h_ago, 2 * s.price_24h_ago) * 0.0001 END,"
    " s.high_24h, s.low_24h, s.volume_24h, s.quote_volume_24h, s.trade_count_24h, now()"
    " FROM stock.latest_prices_staging s WHERE s.batch_id = %(batch)s"
    " ON CONFLICT (symbol) DO UPDATE SET {assignments}, updated_at = now()"
).format(columns=_columns(_LATEST_COLUMNS), assignments=_assignments(_LATEST_COLUMNS))
