"""Base backup and point-in-time restore of the platform's PostgreSQL with N raw trades: the time and size
of `make backup`'s base backup, and the time of `make restore TIME=…` (stop, unpack, WAL replay to the
target, promotion, consumer group and producer rewound). A throwaway stack on free ports.

Usage: ``python -m bench.backup [--trades N] [--after N]`` (``--after``: trades written after the backup,
whose WAL the restore replays).
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import UTC, datetime

import psycopg2

from crypto_platform.raw_partitions import ensure_days, utc_days
from local_stack.backup_plan import human_bytes
from local_stack.backups import BackupStore
from local_stack.ephemeral import ephemeral_stack
from local_stack.postgres import ServerAccount
from local_stack.restore import restore_platform

SYMBOLS = ("BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT")
CHUNK = 1_000_000
INSERT = """
INSERT INTO stock.real_time_prices (symbol, price, timestamp, event_time, volume, agg_trade_id, first_trade_id,
                                    last_trade_id, trades, is_buyer_maker, source)
SELECT (%(symbols)s::text[])[1 + n %% 5], 60000 + (n %% 1000) / 100.0, %(start_ms)s + n * 10,
       to_timestamp((%(start_ms)s + n * 10) / 1000.0), 0.001 + (n %% 7) / 1000.0, n, n, n, 1, n %% 2 = 0, 'bench'
FROM generate_series(%(first)s, %(last)s) AS n
"""


def write_trades(database_url: str, first: int, count: int) -> float:
    started = time.monotonic()
    start_ms = 1_700_000_000_000
    with psycopg2.connect(database_url) as connection:
        connection.autocommit = True
        with connection.cursor() as cursor:
            ensure_days(cursor, utc_days(start_ms + first * 10, start_ms + (first + count) * 10))
            for begin in range(first, first + count, CHUNK):
                cursor.execute(INSERT, {"symbols": list(SYMBOLS), "start_ms": start_ms, "first": begin,
                                        "last": min(first + count, begin + CHUNK) - 1})
    return time.monotonic() - started


def count(database_url: str) -> int:
    with psycopg2.connect(database_url) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM stock.real_time_prices")
        return cursor.fetchone()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trades", type=int, default=1_000_000)
    parser.add_argument("--after", type=int, default=100_000)
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.1f}", flush=True)
    with ephemeral_stack("crypto-bench-backup-") as stack:
        url = stack.settings.database_url
        took = write_trades(url, 0, args.trades)
        print(f"wrote {args.trades:,} trades in {took:.1f} s", flush=True)
        store = BackupStore(stack.settings)
        backup = store.take(ServerAccount.for_current_user())
        backup_s = (backup.finished_at - backup.started_at).total_seconds()
        with psycopg2.connect(url) as connection, connection.cursor() as cursor:
            cursor.execute("SELECT pg_database_size(%s), pg_total_relation_size('stock.real_time_prices')",
                           (stack.settings.pg_database,))
            database_bytes, table_bytes = cursor.fetchone()
        print(f"base backup of {args.trades:,} trades: {backup_s:.1f} s, {human_bytes(backup.size_bytes)} "
              f"(database {human_bytes(database_bytes)}, trades table with indexes {human_bytes(table_bytes)}; "
              f"load {os.getloadavg()[0]:.1f})", flush=True)
        time.sleep(1)
        target = datetime.now(UTC)
        time.sleep(1)
        write_trades(url, args.trades, args.after)
        wal = store.wal_files()
        print(f"then {args.after:,} more trades; WAL archive {len(wal)} files, "
              f"{human_bytes(sum(p.stat().st_size for p in wal))}", flush=True)
        report = restore_platform(stack, target)
        restored = count(url)
        assert restored == args.trades, f"restored {restored} trades, expected {args.trades}"
        print(f"restore to a point (TIME between the two writes): {report.seconds:.1f} s, {restored:,} trades back "
              f"(load {os.getloadavg()[0]:.1f})", flush=True)


if __name__ == "__main__":
    main()
