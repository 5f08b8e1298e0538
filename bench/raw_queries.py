"""The raw trades table with a large history, unpartitioned (before sql/013) against partitioned by day (after),
side by side in one run: the candle tick, the sensor and the Superset queries must not get slower.

One throwaway PostgreSQL 16 holds two databases: ``crypto`` with every migration (the table partitioned by UTC
day) and ``crypto_unpartitioned`` with the migrations before 013 (the old single table). Both get the same rows:
``--rows`` trades of 5 symbols spread evenly over ``--days`` ending a few minutes ago (one transaction per
million rows, ``created_at`` a moment after the trade as the consumer would write it), the 1- and 5-minute
candles of its last ``--candle-hours`` (computed by the candle code), then a warm-up tick. Then ``--runs``
times, the shapes taking turns (which goes first alternating): ``--new`` trades of the next minute are written
(not timed), then timed:

- ``tick``: one incremental candle run as the minute-close job does it, in this process on one local Spark
  session shared by both shapes: 1-minute and 5-minute candles from the trades, the rolled-up intervals, the
  latest prices, then every check's query over one snapshot (``checks``, also shown alone);
- ``sensor``: the minute-close sensor's reads (rows past the cursor, the symbols' watermarks, the observation);
- Superset's SQL on the raw table: ``newest_trade_age`` (the pipeline_freshness dataset), the ``feed_stalled``
  and ``candles_late`` alerts, the ``trades_ingested_per_minute`` chart (last 6 h by minute and symbol, as
  Superset sends it). The other datasets read the candle and dead-letter tables, which 013 does not change.

Prints one JSON line per figure and shape, then a table of medians with new/old. Usage:
``python -m bench.raw_queries [--rows 10000000] [--days 30] [--new 3700] [--runs 5] [--query-runs 20]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import psycopg2
from psycopg2 import sql

from bench.candles import SYMBOLS, set_cursors_to_now, throwaway_postgres
from crypto_assets import check_queries
from crypto_assets.assets.aggregated_1min import aggregated_1min, trades_aggregable
from crypto_assets.assets.real_time_prices import SOURCE_FRESHNESS_LIMIT_S, observe
from crypto_assets.assets.sql_checks import consistent_with_one_minute, integrity_checks
from crypto_assets.candle_runs import now_ms, refresh_candles, refresh_latest, refresh_rollups
from crypto_assets.candle_store import MarketStore
from crypto_assets.candles import FIVE_MINUTES, MINUTE_MS, ONE_MINUTE, TIMEFRAMES, window_start
from crypto_assets.resources import spark_session
from crypto_platform.raw_partitions import DAY_MS, ensure_days, utc_days
from local_stack.migrations import SQL_DIR, apply_migrations

OLD, NEW = "old", "new"
OLD_DATABASE = "crypto_unpartitioned"
CHUNK = 1_000_000
ROLLED_UP = [timeframe for timeframe in TIMEFRAMES if timeframe.rolled_up]

# Trade g of [lo, hi) at t0 + (g - base) * span / n ms; agg ids contiguous per symbol (5 symbols round-robin).
GENERATE = (
    "INSERT INTO stock.real_time_prices (symbol, price, timestamp, event_time, volume, agg_trade_id,"
    " first_trade_id, last_trade_id, trades, is_buyer_maker, source, created_at)"
    " SELECT (%(symbols)s::text[])[1 + g %% 5], 60000 + ((g * 7919) %% 100000)::numeric / 100, t,"
    " timestamptz 'epoch' + t * interval '1 millisecond', (((g * 104729) %% 100000) + 1)::numeric / 100000,"
    " g / 5, g / 5, g / 5, 1, g %% 2 = 0, 'bench', timestamptz 'epoch' + (t + 40) * interval '1 millisecond'"
    " FROM generate_series(%(lo)s::bigint, %(hi)s::bigint - 1) AS g,"
    " LATERAL (SELECT %(t0)s::bigint + (g - %(base)s) * %(span)s::bigint / %(n)s AS t) AS x"
)

# Superset's and its alerts' SQL on the raw table (superset/bundle/datasets, superset/alerts.yaml, the chart
# trades_ingested_per_minute: Superset puts its time range in as literals; %(lo)s / %(hi)s here).
SUPERSET = {
    "newest_trade_age": "SELECT now() AS checked_at, EXTRACT(EPOCH FROM now() - stock.newest_trade_time())::float"
                        " AS newest_trade_age_s",
    "feed_stalled": "SELECT EXTRACT(EPOCH FROM now() - coalesce(stock.newest_trade_time(),"
                    " pg_postmaster_start_time()))::float",
    "candles_late": "SELECT EXTRACT(EPOCH FROM now() - coalesce((SELECT max(window_start) + interval '1 minute'"
                    " FROM stock.aggregated_prices_1min WHERE is_final),"
                    " stock.oldest_trade_time()))::float",
    "trades_per_minute_chart": "SELECT date_trunc('minute', created_at) AS created_at, symbol AS symbol,"
                               " COUNT(*) AS trades FROM stock.real_time_prices"
                               " WHERE created_at >= %(lo)s AND created_at < %(hi)s"
                               " AND (event_time > now() - interval '1 day')"
                               " GROUP BY date_trunc('minute', created_at), symbol ORDER BY trades DESC LIMIT 10000",
}
# The same SQL before 013, run on the unpartitioned table: the newest and oldest trade as aggregates.
SUPERSET_BEFORE = {
    **SUPERSET,
    "newest_trade_age": "SELECT now() AS checked_at, EXTRACT(EPOCH FROM now() - (SELECT max(event_time)"
                        " FROM stock.real_time_prices))::float AS newest_trade_age_s",
    "feed_stalled": "SELECT EXTRACT(EPOCH FROM now() - coalesce(max(event_time), pg_postmaster_start_time()))::float"
                    " FROM stock.real_time_prices",
    "candles_late": "SELECT EXTRACT(EPOCH FROM now() - coalesce((SELECT max(window_start) + interval '1 minute'"
                    " FROM stock.aggregated_prices_1min WHERE is_final),"
                    " (SELECT min(event_time) FROM stock.real_time_prices)))::float",
}
# The Python code (the freshness check, the sensor's observation) calls 013's two functions; on the old table
# they are the aggregates they replace, in SQL functions (a call costs some 0.03 ms more than the bare query).
BEFORE_FUNCTIONS = (
    "CREATE FUNCTION stock.newest_trade_time() RETURNS TIMESTAMPTZ LANGUAGE sql STABLE"
    " AS 'SELECT max(event_time) FROM stock.real_time_prices';"
    " CREATE FUNCTION stock.oldest_trade_time() RETURNS TIMESTAMPTZ LANGUAGE sql STABLE"
    " AS 'SELECT min(event_time) FROM stock.real_time_prices'"
)


def emit(figure: dict[str, object]) -> None:
    print(json.dumps({**figure, "load": round(os.getloadavg()[0], 1)}), flush=True)


def unpartitioned_database(settings) -> str:
    """``crypto_unpartitioned`` on the same server with the migrations before 013: the table as it was."""
    connection = psycopg2.connect(settings.database_url)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(OLD_DATABASE)))
    connection.close()
    url = settings.database_url_for(OLD_DATABASE)
    folder = Path(tempfile.mkdtemp(prefix="bench-raw-sql-"))
    try:
        for path in SQL_DIR.glob("*.sql"):
            if path.name < "013":
                shutil.copy(path, folder / path.name)
        apply_migrations(url, folder)
    finally:
        shutil.rmtree(folder)
    with psycopg2.connect(url) as connection, connection.cursor() as cursor:
        cursor.execute(BEFORE_FUNCTIONS)
    connection.close()
    return url


def write(url: str, lo: int, hi: int, base: int, t0_ms: int, span_ms: int, n: int) -> None:
    """Trades ``[lo, hi)`` in one transaction, their days made first where the table has day partitions."""
    first, last = t0_ms + (lo - base) * span_ms // n, t0_ms + (hi - 1 - base) * span_ms // n
    with psycopg2.connect(url) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT to_regprocedure('stock.ensure_raw_partitions(date[])') IS NOT NULL")
        if cursor.fetchone()[0]:
            ensure_days(cursor, utc_days(first, last))
        cursor.execute(GENERATE, {"symbols": SYMBOLS, "lo": lo, "hi": hi, "base": base, "t0": t0_ms,
                                  "span": span_ms, "n": n})
    connection.close()


def table_shape(url: str) -> dict[str, object]:
    with psycopg2.connect(url) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT count(*), count(DISTINCT tableoid) FROM stock.real_time_prices")
        rows, tables = cursor.fetchone()
        cursor.execute("SELECT count(*) FROM pg_inherits WHERE inhparent = 'stock.real_time_prices'::regclass")
        partitions = cursor.fetchone()[0]
        cursor.execute("SELECT coalesce(sum(pg_total_relation_size(relid)),"  # no tree: a plain table
                       " pg_total_relation_size('stock.real_time_prices')) FROM pg_partition_tree("
                       "'stock.real_time_prices')")
        size = cursor.fetchone()[0]
    connection.close()
    return {"rows": rows, "partitions": partitions, "tables_with_rows": tables, "table_mb": int(size) >> 20}


def vacuum_analyze(url: str) -> None:
    connection = psycopg2.connect(url)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
    connection.close()


def run_checks(store: MarketStore) -> int:
    """Every check query of a candle run (``crypto_assets.assets.catalog.CHECKS``) over one snapshot."""
    checks = [check for timeframe in TIMEFRAMES for check in integrity_checks(timeframe)]
    checks += [trades_aggregable, *(consistent_with_one_minute(tf, aggregated_1min) for tf in TIMEFRAMES[1:])]
    with store.transaction(snapshot=True) as cursor:
        for check in checks:
            check.query(cursor)
        check_queries.latest_prices_consistent(cursor)
        check_queries.source_freshness(cursor, now_ms(), SOURCE_FRESHNESS_LIMIT_S)
    return len(checks) + 2


def tick(spark, store: MarketStore) -> dict[str, float]:
    """One incremental candle run (seconds per step), as the minute-close job runs its assets in order."""
    steps: dict[str, float] = {}
    started = time.perf_counter()
    one = refresh_candles(spark, store, ONE_MINUTE)
    steps["1min"] = time.perf_counter() - started
    refresh_candles(spark, store, FIVE_MINUTES)
    steps["5min"] = time.perf_counter() - started - sum(steps.values())
    refresh_rollups(spark, store, ROLLED_UP)
    steps["rollups"] = time.perf_counter() - started - sum(steps.values())
    refresh_latest(spark, store)
    steps["latest"] = time.perf_counter() - started - sum(steps.values())
    run_checks(store)
    steps["checks"] = time.perf_counter() - started - sum(steps.values())
    steps["tick"] = time.perf_counter() - started
    steps["rows_read"] = one.trades_read
    return steps


def sensor(store: MarketStore) -> None:
    """The minute-close sensor's reads when it requests a run."""
    store.pending_trades(ONE_MINUTE)
    with store.transaction(snapshot=True) as cursor:
        store.closed_until(cursor)
    observe(store)


def median_ms(run: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def superset_queries(url: str, queries: dict[str, str], runs: int) -> dict[str, float]:
    hi = datetime.now(UTC).replace(microsecond=0)
    bounds = {"lo": datetime.fromtimestamp(hi.timestamp() - 6 * 3600, UTC), "hi": hi}
    figures = {}
    with psycopg2.connect(url) as connection, connection.cursor() as cursor:
        for name, query in queries.items():
            figures[name] = median_ms(lambda q=query: cursor.execute(q, bounds) or cursor.fetchall(), runs)
    connection.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="history rows in each shape")
    parser.add_argument("--days", type=float, default=30, help="days the history spans, ending minutes ago")
    parser.add_argument("--new", type=int, default=3700, help="trades of the minute each tick reads")
    parser.add_argument("--runs", type=int, default=5, help="ticks of each shape, taking turns")
    parser.add_argument("--query-runs", type=int, default=20, help="runs of each query per tick (median)")
    parser.add_argument("--candle-hours", type=float, default=3, help="history hours with candles before the ticks")
    args = parser.parse_args()
    started_at = datetime.now(UTC)
    emit({"figure": "start", "utc": started_at.isoformat(timespec="seconds"), **vars(args)})
    span = int(args.days * DAY_MS)
    # The history ends whole 5-minute windows before the minutes the ticks write (one each, and one warm-up).
    end = window_start(now_ms() - (args.runs + 2) * MINUTE_MS, FIVE_MINUTES.size_ms)
    candles_from = window_start(end - int(args.candle_hours * 3_600_000), FIVE_MINUTES.size_ms)
    with throwaway_postgres() as settings:
        spark = spark_session(settings)
        urls = {OLD: unpartitioned_database(settings), NEW: settings.database_url}
        stores = {shape: MarketStore(url) for shape, url in urls.items()}
        for shape, url in urls.items():
            began = time.perf_counter()
            for lo in range(0, args.rows, CHUNK):
                write(url, lo, min(args.rows, lo + CHUNK), 0, end - span, span, args.rows)
            write_s = time.perf_counter() - began
            vacuum_analyze(url)
            began = time.perf_counter()
            for timeframe in (ONE_MINUTE, FIVE_MINUTES):
                refresh_candles(spark, stores[shape], timeframe, backfill=(candles_from, end))
            set_cursors_to_now(url)
            emit({"figure": "setup", "shape": shape, **table_shape(url), "write_s": round(write_s, 1),
                  "candles_s": round(time.perf_counter() - began, 1)})
        samples: dict[str, dict[str, list[float]]] = {OLD: {}, NEW: {}}
        for run in range(args.runs + 1):  # run 0 warms up (Spark's JIT, the rollups' first read, caches)
            base = args.rows + run * args.new
            for shape in (OLD, NEW) if run % 2 else (NEW, OLD):
                write(urls[shape], base, base + args.new, base, end + run * MINUTE_MS, MINUTE_MS, args.new)
                figures = {k: v * 1000 for k, v in tick(spark, stores[shape]).items() if k != "rows_read"}
                figures["sensor"] = median_ms(lambda s=stores[shape]: sensor(s), args.query_runs)
                figures.update(superset_queries(urls[shape], SUPERSET_BEFORE if shape == OLD else SUPERSET,
                                                args.query_runs))
                emit({"figure": "run", "run": run, "shape": shape,
                      **{k: round(v, 2) for k, v in figures.items()}})
                if run:
                    for name, value in figures.items():
                        samples[shape].setdefault(name, []).append(value)
        spark.stop()
    finished_at = datetime.now(UTC)
    print(f"\n{args.rows:,} raw rows over {args.days:g} days, {args.new:,} new trades a tick; medians of {args.runs}"
          f" ticks, queries {args.query_runs}× a tick; {started_at:%Y-%m-%d %H:%M}–{finished_at:%H:%M} UTC,"
          f" load {os.getloadavg()[0]:.1f} at the end")
    print(f"{'figure (ms)':<26}{'old':>12}{'new':>12}{'new/old':>9}")
    for name in samples[OLD]:
        old, new = statistics.median(samples[OLD][name]), statistics.median(samples[NEW][name])
        print(f"{name:<26}{old:>12.1f}{new:>12.1f}{new / old:>9.2f}")


if __name__ == "__main__":
    main()
