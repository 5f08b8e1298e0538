"""History benchmarks on a throwaway PostgreSQL 16 and local Spark:

1. import: ``python -m streaming_services.importer`` of a generated aggTrades file (Binance's columns, no
   header, µs times, one symbol over ``--days``), as a process, against a plain COPY of the same rows (already
   in the table's CSV shape, so nothing but PostgreSQL's work) into the same, emptied table, in the same run;
2. candles: the importer's candle step (the backfill CLI, every interval, checks included) over those trades;
   with ``--lineage``, one hour's candles computed from the trades against rolled up from the minutes;
3. query: an hourly and a daily candle query over the whole span (the median of 20 runs).

Usage: ``python -m bench.history [--rows 10000000] [--days 365] [--lineage] [--import-only]``. Prints one JSON line per
figure and the machine's load average before and after.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import psycopg2
from psycopg2 import sql

from bench.candles import throwaway_postgres
from crypto_assets.candle_runs import refresh_candles, refresh_rollups
from crypto_assets.candle_store import MarketStore
from crypto_assets.candles import ONE_HOUR, align_range, from_ms
from crypto_assets.resources import spark_session
from crypto_platform.raw_partitions import DAY_MS, ensure_days, utc_days
from streaming_services.importer import ImportStore, recompute_candles

SYMBOL = "BTCUSDT"
# The same columns as the importer writes.
PLAIN_COPY = ("COPY stock.real_time_prices (symbol, price, timestamp, event_time, volume, agg_trade_id, first_trade_id,"
              " last_trade_id, trades, is_buyer_maker, source, ingest_xid) FROM STDIN WITH (FORMAT csv)")
START = datetime(2025, 1, 1, tzinfo=UTC)


def event_time_formatter() -> Callable[[int], str]:
    """ms → PostgreSQL timestamptz text; the date-time prefix is cached per second (the trades are in time order)."""
    cache: dict[int, str] = {}

    def format_ms(ms: int) -> str:
        second, milli = divmod(ms, 1000)
        prefix = cache.get(second)
        if prefix is None:
            if len(cache) > 4096:
                cache.clear()
            prefix = cache[second] = datetime.fromtimestamp(second, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
        return f"{prefix}.{milli:03d}+00"

    return format_ms


def generate(path: Path, table_csv: Path, rows: int, days: int) -> int:
    """Deterministic trades spread evenly over ``days``, as Binance's aggTrades file and, for the plain COPY,
    as stock.real_time_prices' CSV (converted here, before anything is timed); returns the first trade's ms."""
    t0 = int(START.timestamp() * 1000)
    step_us = days * 86_400_000_000 // rows
    event_time = event_time_formatter()
    with path.open("w") as source, table_csv.open("w") as table:
        for i in range(rows):
            price, qty = f"{60000 + (i * 7919) % 100000 / 100:.2f}", f"{((i * 104729) % 100000 + 1) / 100000:.5f}"
            micros, maker = t0 * 1000 + i * step_us, i % 2 == 1
            agg_id, first_id, last_id = 1_000_000 + i, 3_000_000 + 2 * i, 3_000_001 + 2 * i
            source.write(f"{agg_id},{price},{qty},{first_id},{last_id},{micros},{maker},True\n")
            ms = micros // 1000
            table.write(f"{SYMBOL},{price},{ms},{event_time(ms)},{qty},{agg_id},{first_id},{last_id},"
                        f"2,{maker},replay,0\n")
    return t0


def make_days(database_url: str, first_ms: int, last_ms: int) -> None:
    with psycopg2.connect(database_url) as connection, connection.cursor() as cursor:
        ensure_days(cursor, utc_days(first_ms, last_ms))
    connection.close()


def empty_trades(database_url: str) -> None:
    with psycopg2.connect(database_url) as connection, connection.cursor() as cursor:
        cursor.execute("TRUNCATE stock.real_time_prices, stock.imported_files")
    connection.close()


def plain_copy(database_url: str, path: Path) -> float:
    started = time.perf_counter()
    with psycopg2.connect(database_url) as connection, connection.cursor() as cursor, path.open() as handle:
        cursor.copy_expert(PLAIN_COPY, handle, size=1 << 20)
    connection.close()
    return time.perf_counter() - started


SECONDARY_INDEXES = ("real_time_prices_event_time_idx", "real_time_prices_symbol_event_time_idx",
                     "real_time_prices_ingest_xid_idx")


def server_profile(database_url: str, table_csv: Path) -> dict[str, float]:
    """PostgreSQL's side of an import, each variant on the emptied table with the same rows (seconds):
    COPY straight into the table (the importer's path), COPY into a temporary table + INSERT … ON CONFLICT
    (its path for a batch that meets existing rows), straight with ``synchronous_commit=off``, and straight
    without the three secondary indexes (what their upkeep costs; they are put back afterwards)."""
    figures = {}
    merge = [PLAIN_COPY.replace("stock.real_time_prices", "staged"),
             "INSERT INTO stock.real_time_prices SELECT * FROM staged"
             " ON CONFLICT (symbol, agg_trade_id, event_time) DO NOTHING"]
    with psycopg2.connect(database_url) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT indexname, indexdef FROM pg_indexes WHERE indexname = ANY(%s)",
                       (list(SECONDARY_INDEXES),))
        definitions = cursor.fetchall()
    connection.close()
    for name, setup, statements in (
            ("copy_direct_s", [], [PLAIN_COPY]),
            ("copy_staging_merge_s", ["CREATE TEMP TABLE staged (LIKE stock.real_time_prices INCLUDING DEFAULTS)"],
             merge),
            ("copy_direct_async_commit_s", ["SET synchronous_commit = off"], [PLAIN_COPY]),
            ("copy_direct_no_secondary_indexes_s", [f"DROP INDEX stock.{i}" for i in SECONDARY_INDEXES], [PLAIN_COPY])):
        empty_trades(database_url)
        with psycopg2.connect(database_url) as connection, connection.cursor() as cursor:
            for statement in setup:
                cursor.execute(statement)
            connection.commit()
            started = time.perf_counter()
            for statement in statements:
                if statement.startswith("COPY"):
                    with table_csv.open() as handle:
                        cursor.copy_expert(statement, handle, size=1 << 20)
                else:
                    cursor.execute(statement)
            connection.commit()
            figures[name] = round(time.perf_counter() - started, 1)
        connection.close()
    with psycopg2.connect(database_url) as connection, connection.cursor() as cursor:
        for _name, definition in definitions:
            cursor.execute(definition)
    connection.close()
    empty_trades(database_url)
    return figures


def run_importer(path: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "streaming_services.importer", str(path), "--no-candles", "--quiet"],
                   env=env, check=True)
    return time.perf_counter() - started


def query_ms(database_url: str, table: str, lo_ms: int, hi_ms: int) -> tuple[float, int]:
    """Median wall time of the candle query a chart sends, over ``[lo, hi)``, and the rows it returns."""
    times, count = [], 0
    with psycopg2.connect(database_url) as connection, connection.cursor() as cursor:
        for _ in range(20):
            started = time.perf_counter()
            cursor.execute(sql.SQL("SELECT window_start, open_price, high_price, low_price, close_price, total_volume"
                                   " FROM {t} WHERE symbol = %s AND window_start >= %s AND window_start < %s"
                                   " ORDER BY window_start").format(t=sql.Identifier("stock", table)),
                           (SYMBOL, from_ms(lo_ms), from_ms(hi_ms)))
            count = len(cursor.fetchall())
            times.append((time.perf_counter() - started) * 1000)
    connection.close()
    return statistics.median(times), count


def emit(figure: dict[str, object]) -> None:
    print(json.dumps(figure), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="trades in the generated file")
    parser.add_argument("--days", type=int, default=365, help="days the trades span")
    parser.add_argument("--lineage", action="store_true", help="also time 1-hour candles from trades vs rolled up")
    parser.add_argument("--server-profile", action="store_true",
                        help="after the import figure, PostgreSQL's side alone (direct COPY, staging + merge, async"
                             " commit, no secondary indexes) instead of candles and queries")
    parser.add_argument("--import-only", action="store_true", help="only the import figure (no candles, no queries)")
    args = parser.parse_args()
    emit({"load_average_before": os.getloadavg(), "cpus": os.cpu_count()})
    with throwaway_postgres() as settings, tempfile.TemporaryDirectory(prefix="crypto-bench-history-") as folder:
        env = {**os.environ, "DATABASE_URL": settings.database_url, "SYMBOLS": SYMBOL,
               "SPARK_MASTER": settings.spark_master, "SPARK_LOCAL_IP": "127.0.0.1"}
        source, converted = Path(folder) / f"{SYMBOL}-aggTrades-2025.csv", Path(folder) / "table.csv"
        t0 = generate(source, converted, args.rows, args.days)
        make_days(settings.database_url, t0, t0 + args.days * DAY_MS)  # the plain COPYs' partitions

        copy_s = plain_copy(settings.database_url, converted)
        empty_trades(settings.database_url)
        import_s = run_importer(source, env)
        emit({"figure": "import", "rows": args.rows, "importer_s": round(import_s, 1),
              "importer_rows_per_s": round(args.rows / import_s), "plain_copy_s": round(copy_s, 1),
              "plain_copy_rows_per_s": round(args.rows / copy_s), "ratio": round(copy_s / import_s, 2)})
        if args.server_profile:
            emit({"figure": "import_server_side", "rows": args.rows,
                  **server_profile(settings.database_url, converted)})
        converted.unlink()
        if args.import_only or args.server_profile:
            emit({"load_average_after": os.getloadavg()})
            return

        os.environ.update(env)
        store = ImportStore(settings.database_url)
        started = time.perf_counter()
        status = recompute_candles(store)
        candles_s = time.perf_counter() - started
        store.close()
        emit({"figure": "candles", "trades": args.rows, "every_interval_s": round(candles_s, 1), "exit": status})

        hi = t0 + args.days * 86_400_000
        for table in ("aggregated_prices_1hour", "aggregated_prices_1day"):
            median, rows = query_ms(settings.database_url, table, t0, hi)
            emit({"figure": "query", "table": table, "rows": rows, "median_ms": round(median, 2)})

        if args.lineage:
            spark = spark_session(settings)
            market = MarketStore(settings.database_url)
            window = align_range(from_ms(t0), from_ms(hi), ONE_HOUR.size_ms)
            started = time.perf_counter()
            refresh_rollups(spark, market, [ONE_HOUR], {ONE_HOUR: window})
            rolled_s = time.perf_counter() - started
            started = time.perf_counter()
            refresh_candles(spark, market, dataclasses.replace(ONE_HOUR, rolled_up=False), backfill=window)
            trades_s = time.perf_counter() - started
            emit({"figure": "lineage_1hour", "from_minutes_s": round(rolled_s, 1), "from_trades_s": round(trades_s, 1)})
    emit({"load_average_after": os.getloadavg()})


if __name__ == "__main__":
    main()
