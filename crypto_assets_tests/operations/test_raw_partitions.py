"""Bounded raw storage (sql/013) on the real PostgreSQL: stock.real_time_prices has a partition per UTC day,
made ahead and on demand, dropped whole by RAW_RETENTION_DAYS while the candles stay; the trade key still
ignores a trade delivered again, whichever day it falls in.

Failed on the old code: the table had no partitions (no ``stock.real_time_prices_pYYYYMMDD``, no
``stock.maintain_raw_partitions``), so raw trades were kept for ever."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg2
import pytest
from psycopg2 import sql

from crypto_assets import backfill
from crypto_platform.credentials import INGEST_WRITER, role_database_url
from crypto_platform.raw_partitions import DAY_MS, apply_retention, ensure_days
from local_stack.migrations import SQL_DIR, apply_migrations
from local_stack.stack import LocalStack
from streaming_services.messages import TradeMessage
from streaming_services.postgres_sink import INSERT_ONE, Accepted, TradeWriter, WriteOutcome

pytestmark = pytest.mark.integration

TRADE_SQL = ("INSERT INTO stock.real_time_prices (symbol, price, timestamp, event_time, volume, agg_trade_id,"
             " first_trade_id, last_trade_id, trades, is_buyer_maker, source)"
             " VALUES (%s, 1, %s, to_timestamp(%s / 1000.0), 1, %s, %s, %s, 1, true, 'test')")
CANDLE_SQL = ("INSERT INTO stock.aggregated_prices_1min (symbol, window_start, window_end, open_price, close_price,"
              " high_price, low_price, avg_price, total_volume, quote_volume, taker_buy_volume, trade_count)"
              " VALUES ('BTCUSDT', %s, %s + interval '1 minute', 1, 1, 1, 1, 1, 1, 1, 0, 1)")


def partition(day: date) -> str:
    return f"stock.real_time_prices_p{day:%Y%m%d}"


def exists(cursor, relation: str) -> bool:
    cursor.execute("SELECT to_regclass(%s) IS NOT NULL", (relation,))
    return cursor.fetchone()[0]


def midnight_ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)


def trade(agg_id: int, ms: int, price: str = "100.5") -> Accepted:
    return Accepted(TradeMessage("BTCUSDT", Decimal(price), Decimal("0.25"), ms, agg_id, agg_id, agg_id, False, "test"),
                    "trades", 0, agg_id)


def test_days_are_made_a_week_ahead_and_dropped_whole_past_retention_while_candles_stay(stack: LocalStack, db) -> None:
    url = stack.settings.database_url
    today = datetime.now(UTC).date()
    old = today - timedelta(days=10)
    apply_retention(url, 3)
    with db.cursor() as cursor:
        assert all(exists(cursor, partition(today + timedelta(days=n))) for n in range(8))
        ensure_days(cursor, [old])
        cursor.execute(TRADE_SQL, ("BTCUSDT", midnight_ms(old) + 5, midnight_ms(old) + 5, 1, 1, 1))
        cursor.execute(TRADE_SQL, ("BTCUSDT", midnight_ms(today), midnight_ms(today), 2, 2, 2))
        cursor.execute(CANDLE_SQL, (datetime.fromtimestamp(midnight_ms(old) / 1000, UTC),) * 2)
    # Written today (an import of an old day): kept RAW_RETENTION_DAYS from now, its candles computed first.
    assert apply_retention(url, 3).dropped == 0
    with db.cursor() as cursor:
        cursor.execute("UPDATE stock.raw_partitions SET created_at = now() - interval '10 days' WHERE day = %s", (old,))
    done = apply_retention(url, 3)
    assert (done.dropped, done.busy) == (1, 0)
    with db.cursor() as cursor:
        assert not exists(cursor, partition(old))  # dropped whole: the table is gone, no row was deleted
        cursor.execute("SELECT dropped_at IS NOT NULL FROM stock.raw_partitions WHERE day = %s", (old,))
        assert cursor.fetchone() == (True,)
        cursor.execute("SELECT agg_trade_id FROM stock.real_time_prices")
        assert cursor.fetchall() == [(2,)]
        cursor.execute("SELECT count(*) FROM stock.aggregated_prices_1min")
        assert cursor.fetchone() == (1,)
        cursor.execute("SELECT n_tup_del FROM pg_stat_user_tables WHERE relid = %s::regclass", (partition(today),))
        assert cursor.fetchone() == (0,)


def test_trades_either_side_of_midnight_land_in_their_days_and_a_redelivery_stays_ignored(stack: LocalStack,
                                                                                          db) -> None:
    """Through the consumer's writer, as its role: 23:59:59.999 and 00:00:00.000 UTC, then the same batch
    again (a Kafka re-read), then the first id again at another time (a conflicting duplicate)."""
    today = datetime.now(UTC).date()
    midnight = midnight_ms(today)
    writer = TradeWriter(role_database_url(stack.settings, INGEST_WRITER))
    try:
        batch = [trade(1, midnight - 1), trade(2, midnight)]
        assert writer.write(batch, []).written == 2
        assert writer.write(batch, []) == WriteOutcome(written=0, duplicates=2)
        moved = writer.write([trade(1, midnight + 1)], [])
        assert moved.written == 0
        assert moved.refused[0].error.startswith("conflicting duplicate of BTCUSDT agg_trade_id 1")
    finally:
        writer.close()
    with db.cursor() as cursor:
        cursor.execute("SELECT agg_trade_id, tableoid::regclass::text FROM stock.real_time_prices ORDER BY 1")
        assert cursor.fetchall() == [(1, partition(today - timedelta(days=1))), (2, partition(today))]
        # The key of the merge and one-by-one paths: the same trade again is skipped, not an error.
        cursor.execute(INSERT_ONE, ("BTCUSDT", Decimal("100.5"), midnight, datetime.fromtimestamp(midnight / 1000, UTC),
                                    Decimal("0.25"), 2, 2, 2, 1, False, "test"))
        assert cursor.rowcount == 0


def test_an_existing_table_moves_into_day_partitions_on_upgrade(stack: LocalStack, db, tmp_path: Path) -> None:
    """``make up`` on an older state folder: rows, ids and writer xids kept, each in its day."""
    database = f"upgrade_{uuid.uuid4().hex[:8]}"
    with db.cursor() as cursor:
        cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    url = stack.settings.database_url_for(database)
    try:
        for path in SQL_DIR.glob("*.sql"):
            if path.name < "013":
                (tmp_path / path.name).write_bytes(path.read_bytes())
        apply_migrations(url, tmp_path)
        first = midnight_ms(date(2024, 8, 8)) + DAY_MS - 1
        connection = psycopg2.connect(url)
        try:
            with connection, connection.cursor() as cursor:
                for agg_id, ms in ((1, first), (2, first + 1), (3, first + DAY_MS)):
                    cursor.execute(TRADE_SQL, ("BTCUSDT", ms, ms, agg_id, agg_id, agg_id))
                cursor.execute("SELECT id, agg_trade_id, ingest_xid::text FROM stock.real_time_prices ORDER BY 1")
                before = cursor.fetchall()
            assert apply_migrations(url) == ["013_raw_partitions"]
            with connection, connection.cursor() as cursor:
                cursor.execute("SELECT id, agg_trade_id, ingest_xid::text FROM stock.real_time_prices ORDER BY 1")
                assert cursor.fetchall() == before
                cursor.execute("SELECT tableoid::regclass::text, count(*) FROM stock.real_time_prices"
                               " GROUP BY 1 ORDER BY 1")
                assert cursor.fetchall() == [(partition(date(2024, 8, 8)), 1), (partition(date(2024, 8, 9)), 2)]
                cursor.execute(TRADE_SQL + " ON CONFLICT DO NOTHING RETURNING id", ("BTCUSDT", first, first, 1, 1, 1))
                assert cursor.fetchall() == []
                cursor.execute(TRADE_SQL + " RETURNING id", ("BTCUSDT", first, first, 4, 4, 4))
                assert cursor.fetchone()[0] > before[-1][0]  # the id sequence carried on
        finally:
            connection.close()
    finally:
        with db.cursor() as cursor:
            cursor.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(database)))


def test_a_backfill_over_dropped_days_is_refused(db, platform_env, capsys: pytest.CaptureFixture[str]) -> None:
    """Recomputed from no trades, the dropped days' candles would be replaced by empty ones."""
    settings = platform_env(SPARK_REMOTE="")
    old = date(2024, 3, 1)
    with db.cursor() as cursor:
        cursor.execute("INSERT INTO stock.raw_partitions (day, dropped_at) VALUES (%s, now())", (old,))
    assert backfill.main(["--start", "2024-02-29T23:00:00Z", "--end", "2024-03-01T01:00:00Z"]) == 2
    assert capsys.readouterr().err == (f"backfill: the raw trades of 2024-03-01 to 2024-03-01 were dropped"
                                       f" (RAW_RETENTION_DAYS={settings.raw_retention_days}); their candles stay as"
                                       " they are\n")


def test_a_late_trade_of_a_day_retention_dropped_is_dead_lettered_not_written_back(stack: LocalStack, db) -> None:
    """Retention drops a day the writer wrote and remembers (another worker's or `make up`'s maintenance): a
    late trade of that day is neither an error nor written back. Made again, its partition would hold a few
    trades of a day whose candles were computed from all of them, and a backfill would shrink those candles.
    A day the writer never saw and retention never dropped is made."""
    url = stack.settings.database_url
    today = datetime.now(UTC).date()
    old, unseen = today - timedelta(days=20), today - timedelta(days=2)
    reason = f"trade of {old}, a UTC day whose raw trades retention dropped (RAW_RETENTION_DAYS): not written back"
    writer = TradeWriter(role_database_url(stack.settings, INGEST_WRITER))
    fresh = TradeWriter(role_database_url(stack.settings, INGEST_WRITER))
    try:
        assert writer.write([trade(1, midnight_ms(old) + 5)], []).written == 1
        with db.cursor() as cursor:
            cursor.execute("UPDATE stock.raw_partitions SET created_at = now() - interval '30 days' WHERE day = %s",
                           (old,))
        assert apply_retention(url, 3).dropped == 1
        late = writer.write([trade(2, midnight_ms(old) + 6), trade(3, midnight_ms(old) + 7)], [])
        assert (late.written, [r.error for r in late.refused]) == (0, [reason] * 2)
        later = fresh.write([trade(4, midnight_ms(old) + 8), trade(5, midnight_ms(unseen))], [])
        assert (later.written, [r.error for r in later.refused]) == (1, [reason])
    finally:
        writer.close()
        fresh.close()
    with db.cursor() as cursor:
        assert not exists(cursor, partition(old))
        cursor.execute("SELECT dropped_at IS NOT NULL FROM stock.raw_partitions WHERE day = %s", (old,))
        assert cursor.fetchone() == (True,)
        cursor.execute("SELECT agg_trade_id, tableoid::regclass::text FROM stock.real_time_prices")
        assert cursor.fetchall() == [(5, partition(unseen))]
