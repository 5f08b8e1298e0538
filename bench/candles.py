"""Candle benchmarks on a throwaway PostgreSQL 16 and local Spark:

1. backfill throughput: every 1- and 5-minute candle of the history recomputed from its trades;
2. one sensor tick at a steady 1,000 trades/s (the last 60 s of trades), run as a fresh process so that
   Spark's start is included, with a history of each given size; the ratio shows whether the tick's
   cost grows with history (goal: 10 M vs 100 k rows <= 1.3).

History is generated inside PostgreSQL (generate_series, 5 symbols round-robin, 1 trade/ms overall).
After the backfill the cursors are set to "now", as after any run, so the tick reads only new rows.

Usage: ``python -m bench.candles [--history 100000,10000000] [--rate 1000] [--seconds 60]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2

from crypto_assets.candle_runs import now_ms, refresh_candles, refresh_latest
from crypto_assets.candle_store import MarketStore
from crypto_assets.candles import FIVE_MINUTES, ONE_MINUTE, window_start
from crypto_assets.resources import spark_session
from crypto_platform.raw_partitions import ensure_days, utc_days
from crypto_platform.settings import PlatformSettings
from local_stack.ephemeral import make_state_dir, process_environment
from local_stack.processes import free_port
from local_stack.stack import LocalStack

SYMBOLS = ["BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT"]

# Deterministic pseudo-random prices and quantities; agg ids contiguous per symbol; n trades per ms.
GENERATE = (
    "INSERT INTO stock.real_time_prices (symbol, price, timestamp, event_time, volume, agg_trade_id,"
    " first_trade_id, last_trade_id, trades, is_buyer_maker, source)"
    " SELECT (%(symbols)s::text[])[1 + g %% 5], 60000 + ((g * 7919) %% 100000)::numeric / 100,"
    " %(t0)s + g * 1000 / %(rate)s, timestamptz 'epoch' + (%(t0)s + g * 1000 / %(rate)s) * interval '1 millisecond',"
    " (((g * 104729) %% 100000) + 1)::numeric / 100000, g / 5, g / 5, g / 5, 1, g %% 2 = 0, 'bench'"
    " FROM generate_series(%(lo)s::bigint, %(hi)s::bigint - 1) AS g"
)


@contextmanager
def throwaway_postgres() -> Iterator[PlatformSettings]:
    state_dir = make_state_dir("crypto-bench-candles-")
    # In-process Spark (SPARK_REMOTE empty): these benches start no Spark Connect server.
    with process_environment({"STATE_DIR": str(state_dir), "PG_PORT": str(free_port()), "DATABASE_URL": "",
                              "SPARK_REMOTE": "", "SPARK_MASTER": os.environ.get("SPARK_MASTER", "local[*]")}):
        settings = PlatformSettings.from_env()
        stack = LocalStack(settings)
        stack.start_database()  # the schema and the run-time roles the candle job connects as
        try:
            yield settings
        finally:
            stack.postgres.stop()
            subprocess.run(["rm", "-rf", str(state_dir)], check=False)


def generate(database_url: str, lo: int, hi: int, t0_ms: int, rate: int) -> float:
    started = time.perf_counter()
    with psycopg2.connect(database_url) as connection, connection.cursor() as cursor:
        ensure_days(cursor, utc_days(t0_ms + lo * 1000 // rate, t0_ms + hi * 1000 // rate))
        cursor.execute(GENERATE, {"symbols": SYMBOLS, "t0": t0_ms, "rate": rate, "lo": lo, "hi": hi})
        cursor.execute("ANALYZE stock.real_time_prices")
    connection.close()
    return time.perf_counter() - started


def set_cursors_to_now(database_url: str) -> None:
    """What a completed incremental run leaves behind: every row so far has been read."""
    with psycopg2.connect(database_url) as connection, connection.cursor() as cursor:
        for name in (ONE_MINUTE.asset_name, FIVE_MINUTES.asset_name):
            cursor.execute("INSERT INTO stock.candle_cursors (name, ingest_xid)"
                           " VALUES (%s, pg_snapshot_xmin(pg_current_snapshot()))"
                           " ON CONFLICT (name) DO UPDATE SET ingest_xid = EXCLUDED.ingest_xid", (name,))
    connection.close()


def tick_in_this_process() -> dict[str, float]:
    """One sensor-driven run as the run worker does it: start Spark, 1-min, 5-min, latest prices."""
    started = time.perf_counter()
    settings = PlatformSettings.from_env()
    spark = spark_session(settings)
    spark_up = time.perf_counter() - started
    store = MarketStore(settings.database_url)
    one = refresh_candles(spark, store, ONE_MINUTE)
    five = refresh_candles(spark, store, FIVE_MINUTES)
    latest = refresh_latest(spark, store)
    return {"total_s": time.perf_counter() - started, "spark_start_s": spark_up, "rows_read_1m": one.trades_read,
            "spark_1m_s": one.spark_seconds, "spark_5m_s": five.spark_seconds, "spark_latest_s": latest.spark_seconds,
            "windows_written_1m": one.windows_written}


def tick(settings: PlatformSettings) -> dict[str, float]:
    env = {**os.environ, "DATABASE_URL": settings.database_url, "SPARK_MASTER": settings.spark_master,
           "SPARK_LOCAL_IP": "127.0.0.1"}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "bench.candles", "--tick-only"], env=env, capture_output=True,
                            text=True, check=True)
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    figures["process_s"] = time.perf_counter() - started
    return figures


def scenario(history: int, rate: int, seconds: int) -> dict[str, object]:
    with throwaway_postgres() as settings:
        end_ms = window_start(now_ms(), 60_000) - 60_000
        t0 = end_ms - history * 1000 // rate
        generate_s = generate(settings.database_url, 0, history, t0, rate)
        spark = spark_session(settings)
        store = MarketStore(settings.database_url)
        lo, hi = window_start(t0, FIVE_MINUTES.size_ms), end_ms + FIVE_MINUTES.size_ms
        started = time.perf_counter()
        one = refresh_candles(spark, store, ONE_MINUTE, backfill=(lo, hi))
        five = refresh_candles(spark, store, FIVE_MINUTES, backfill=(lo, hi))
        backfill_s = time.perf_counter() - started
        set_cursors_to_now(settings.database_url)
        new_rows = rate * seconds
        generate(settings.database_url, history, history + new_rows, t0, rate)
        figures = tick(settings)
    return {"history_rows": history, "generate_s": round(generate_s, 1), "backfill_s": round(backfill_s, 1),
            "backfill_trades_per_s": round(history / backfill_s), "backfill_windows": one.windows_computed
            + five.windows_computed, "tick_new_rows": new_rows,
            **{f"tick_{k}": round(v, 2) if isinstance(v, float) else v for k, v in figures.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history", default="100000,10000000", help="comma list of history sizes (rows)")
    parser.add_argument("--rate", type=int, default=1000, help="trades per second")
    parser.add_argument("--seconds", type=int, default=60, help="seconds of new trades per tick")
    parser.add_argument("--tick-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tick_only:
        print(json.dumps(tick_in_this_process()))
        return
    results = []
    for history in (int(h) for h in args.history.split(",")):
        result = scenario(history, args.rate, args.seconds)
        results.append(result)
        print(json.dumps(result), flush=True)
    if len(results) > 1:
        ratio = results[-1]["tick_total_s"] / results[0]["tick_total_s"]
        print(f"tick with {results[-1]['history_rows']:,} vs {results[0]['history_rows']:,} rows of history:"
              f" {results[-1]['tick_total_s']:.1f} s vs {results[0]['tick_total_s']:.1f} s, ratio {ratio:.2f}")


if __name__ == "__main__":
    main()
