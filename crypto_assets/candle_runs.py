"""One run of a candle asset or of latest_prices: plan in PostgreSQL, compute in Spark, merge in one transaction.

The assets and the backfill CLI call these; they hold no Dagster types so a benchmark can call them too.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import reduce

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from crypto_assets.candle_store import Changes, MarketStore, SymbolState
from crypto_assets.candles import (
    MINUTE_MS,
    ONE_MINUTE,
    Timeframe,
    from_ms,
    incremental_tail,
    plan_segments,
    watermarks,
)
from crypto_assets.spark_io import (
    JdbcTarget,
    read_candles,
    read_minutes,
    read_trades,
    read_trades_by_id,
    write_batches,
    write_staging,
)
from crypto_assets.transforms import (
    STAGING_COLUMNS,
    candles_from_minutes,
    candles_from_trades,
    complete_segments,
    latest_from_candles,
)

DAY_MINUTES = 1440


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _jdbc(store: MarketStore) -> JdbcTarget:
    """Spark's view of the store's database: the same server, database and login."""
    return JdbcTarget.from_database_url(store.database_url)


@dataclass(frozen=True)
class CandleRun:
    """What one candle run did, reported as the materialization's metadata."""

    changed_rows: int
    trades_read: int
    segments: int
    windows_computed: int
    windows_written: int
    span: tuple[int, int] | None
    watermarks: dict[str, int] | None
    spark_seconds: float
    lag_seconds: float | None
    left_out: list[tuple[str, int]] = field(default_factory=list)

    def metadata(self) -> dict[str, object]:
        """``watermark``: the lowest symbol watermark (the laggard's); ``watermarks``: each symbol's."""
        return {
            "rows_read": self.trades_read,
            "changed_rows": self.changed_rows,
            "segments": self.segments,
            "windows_computed": self.windows_computed,
            "windows_written": self.windows_written,
            "span_start": from_ms(self.span[0]).isoformat() if self.span else None,
            "span_end": from_ms(self.span[1]).isoformat() if self.span else None,
            "watermark": from_ms(min(self.watermarks.values())).isoformat() if self.watermarks else None,
            "watermarks": {s: from_ms(m).isoformat() for s, m in sorted(self.watermarks.items())}
            if self.watermarks else None,
            "spark_seconds": round(self.spark_seconds, 3),
            "lag_seconds": None if self.lag_seconds is None else round(self.lag_seconds, 3),
            "trades_left_out": len(self.left_out),
            "trades_left_out_sample": "; ".join(f"{symbol} {agg_id}" for symbol, agg_id in self.left_out[:5]),
        }


@dataclass(frozen=True)
class LatestRun:
    symbols: int
    candles_read: int
    span: tuple[int, int] | None
    spark_seconds: float
    lag_seconds: float | None

    def metadata(self) -> dict[str, object]:
        return {
            "symbols_published": self.symbols,
            "rows_read": self.candles_read,
            "windows_written": self.symbols,
            "span_start": from_ms(self.span[0]).isoformat() if self.span else None,
            "span_end": from_ms(self.span[1]).isoformat() if self.span else None,
            "spark_seconds": round(self.spark_seconds, 3),
            "lag_seconds": None if self.lag_seconds is None else round(self.lag_seconds, 3),
        }


def _backfill_forced(states: Mapping[str, SymbolState], dirty: Mapping[str, set[int]], lo: int, hi: int,
                     size_ms: int) -> dict[str, list[tuple[int, int]]]:
    """Every window of ``[lo, hi)`` from each symbol's first window (in the table or in the range) on."""
    forced: dict[str, list[tuple[int, int]]] = {}
    for symbol in set(states) | set(dirty):
        firsts = [f for f in (states[symbol].first_published if symbol in states else None,
                              min(dirty[symbol]) if dirty.get(symbol) else None) if f is not None]
        first = max(lo, min(firsts))
        if first < hi:
            forced[symbol] = [(first, hi - size_ms)]
    return forced


def refresh_candles(spark: SparkSession, store: MarketStore, timeframe: Timeframe,
                    backfill: tuple[int, int] | None = None, at_ms: int | None = None) -> CandleRun:
    """Recomputes the windows touched since the cursor (or every window of ``backfill = [lo, hi)``)."""
    size = timeframe.size_ms
    with store.exclusive(timeframe.table):
        changes: Changes = (store.changes_in_range(timeframe, *backfill) if backfill
                            else store.changes_since_cursor(timeframe))
        marks = watermarks(changes.closed_until, at_ms if at_ms is not None else now_ms())
        if not marks:
            return CandleRun(0, 0, 0, 0, 0, None, None, 0.0, None)
        states = store.symbol_states(timeframe)
        if backfill:
            next_with_trades = store.next_with_trades(timeframe, changes.dirty, not_before_ms=backfill[1])
            forced = _backfill_forced(states, changes.dirty, *backfill, size)
        else:
            next_with_trades = store.next_with_trades(timeframe, changes.dirty)
            tails = {symbol: incremental_tail(size, marks[symbol], state.last_final, state.first_published)
                     for symbol, state in states.items() if symbol in marks}
            forced = {symbol: [tail] for symbol, tail in tails.items() if tail is not None}
        segments = plan_segments(size, marks, changes.dirty, next_with_trades, forced)
        batch_id = uuid.uuid4().hex
        started = time.perf_counter()
        try:
            if segments:
                seeds = store.seeds(timeframe, segments)
                trades = read_trades(spark, _jdbc(store), segments, size, expected_rows=changes.rows)
                staged = complete_segments(spark, candles_from_trades(trades, size), segments, seeds, size, marks)
                write_staging(staged.select(*STAGING_COLUMNS), _jdbc(store), "candle_staging", batch_id)
            spark_seconds = time.perf_counter() - started
            stats = store.merge_candles(timeframe, batch_id, changes.next_cursor, min(marks.values()),
                                        delete_range=backfill)
        except Exception:
            store.drop_batch(batch_id)
            raise
    lag = None if stats.newest_final_end_ms is None else (now_ms() - stats.newest_final_end_ms) / 1000
    return CandleRun(changes.rows, stats.trades, len(segments), stats.windows, stats.written, stats.span, marks,
                     spark_seconds, lag, changes.left_out)


def refresh_latest(spark: SparkSession, store: MarketStore) -> LatestRun:
    """Latest trade and 24-hour statistics per symbol from the newest 1,440 one-minute candles, published at once."""
    newest = store.newest_window_start_ms(ONE_MINUTE)
    if newest is None:
        return LatestRun(0, 0, None, 0.0, None)
    lo, hi = newest - (DAY_MINUTES - 1) * MINUTE_MS, newest + MINUTE_MS
    batch_id = uuid.uuid4().hex
    started = time.perf_counter()
    candles = read_candles(spark, _jdbc(store), ONE_MINUTE.table, lo, hi).cache()
    try:
        per_symbol = candles.groupBy("symbol").agg(
            F.max(F.when(F.col("trade_count") > 0, F.col("last_agg_trade_id"))).alias("agg_id"),
            F.count(F.lit(1)).alias("candles")).collect()
        newest_ids = [(row.symbol, int(row.agg_id)) for row in per_symbol if row.agg_id is not None]
        candles_read = sum(row.candles for row in per_symbol)
        if newest_ids:
            latest = latest_from_candles(candles, read_trades_by_id(spark, _jdbc(store), newest_ids))
            write_staging(latest, _jdbc(store), "latest_prices_staging", batch_id)
        spark_seconds = time.perf_counter() - started
        published = store.publish_latest(batch_id)
    except Exception:
        store.drop_batch(batch_id)
        raise
    finally:
        candles.unpersist()
    newest_trade = store.newest_published_trade_ms()
    lag = None if newest_trade is None else (now_ms() - newest_trade) / 1000
    return LatestRun(published, candles_read, (lo, hi), spark_seconds, lag)


@dataclass(frozen=True)
class RollupRun:
    """What one run of a rolled-up interval did, reported as the materialization's metadata."""

    windows_dirty: int
    minutes_spanned: int
    windows_written: int
    span: tuple[int, int] | None
    spark_seconds: float

    def metadata(self) -> dict[str, object]:
        return {
            "windows_computed": self.windows_dirty,
            "rows_read": self.minutes_spanned,
            "windows_written": self.windows_written,
            "span_start": from_ms(self.span[0]).isoformat() if self.span else None,
            "span_end": from_ms(self.span[1]).isoformat() if self.span else None,
            "spark_seconds": round(self.spark_seconds, 3),
        }


def _window_ranges(dirty: Mapping[str, set[int]], size_ms: int) -> list[tuple[str, int, int]]:
    """Consecutive dirty windows of a symbol merged into one ``(symbol, lo, hi)`` range."""
    ranges: list[tuple[str, int, int]] = []
    for symbol in sorted(dirty):
        for start in sorted(dirty[symbol]):
            if ranges and ranges[-1][0] == symbol and ranges[-1][2] == start:
                ranges[-1] = (symbol, ranges[-1][1], start + size_ms)
            else:
                ranges.append((symbol, start, start + size_ms))
    return ranges


def refresh_rollups(spark: SparkSession, store: MarketStore, timeframes: Sequence[Timeframe],
                    backfills: Mapping[Timeframe, tuple[int, int]] | None = None) -> dict[Timeframe, RollupRun]:
    """Recomputes, from the one-minute candles, each rolled-up interval's windows whose minutes changed since
    its own cursor (or every window of its ``backfills[timeframe] = [lo, hi)``), in one Spark job for them all.

    Holds each interval's lock and the one-minute table's, so that no minute changes meanwhile and each cursor
    (the newest ``updated_at`` read) misses nothing. Each interval is merged, then its cursor moved, on its own:
    a failure leaves the intervals merged before it done and the others to the next run.
    """
    backfills = backfills or {}
    with ExitStack() as locks:
        for table in [*(timeframe.table for timeframe in timeframes), ONE_MINUTE.table]:
            locks.enter_context(store.exclusive(table))
        plans = []
        for timeframe in timeframes:
            backfill = backfills.get(timeframe)
            dirty, read_upto = ((store.minutes_in_range(timeframe, *backfill), None) if backfill
                                else store.minutes_changed(timeframe))
            plans.append((timeframe, backfill, dirty, read_upto, _window_ranges(dirty, timeframe.size_ms),
                          uuid.uuid4().hex))
        started = time.perf_counter()
        staged = [candles_from_minutes(read_minutes(spark, _jdbc(store), ONE_MINUTE.table, ranges), timeframe.size_ms)
                  .select(*STAGING_COLUMNS).withColumn("batch_id", F.lit(batch_id))
                  for timeframe, _, _, _, ranges, batch_id in plans if ranges]
        try:
            if staged:
                write_batches(reduce(DataFrame.unionByName, staged), _jdbc(store), "candle_staging")
        except Exception:
            for *_, batch_id in plans:
                store.drop_batch(batch_id)
            raise
        spark_seconds = time.perf_counter() - started
        runs = {}
        for index, (timeframe, backfill, dirty, read_upto, ranges, batch_id) in enumerate(plans):
            try:
                stats = (store.merge_candles(timeframe, batch_id, None, None, delete_range=backfill)
                         if ranges or backfill else None)
            except Exception:
                for *_, unmerged in plans[index:]:
                    store.drop_batch(unmerged)
                raise
            if read_upto is not None:
                store.advance_rollup_cursor(timeframe, read_upto)
            windows = sum(len(starts) for starts in dirty.values())
            runs[timeframe] = RollupRun(windows, windows * timeframe.minutes, stats.written if stats else 0,
                                        stats.span if stats else None, spark_seconds)
    return runs
