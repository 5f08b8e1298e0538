"""Least privilege in PostgreSQL (sql/008, local_stack/roles.py) on the real test server: each service's
role can do its job and nothing else; no run-time role reaches the operating system or another's data."""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Iterator
from decimal import Decimal

import psycopg2
import psycopg2.errors
import pytest
from kafka import KafkaProducer

from crypto_assets.candle_store import MarketStore
from crypto_assets.spark_io import JdbcTarget
from crypto_platform.credentials import (
    CANDLE_WRITER,
    DAGSTER,
    INGEST_WRITER,
    RUNTIME_ROLES,
    SUPERSET_META,
    SUPERSET_READER,
    role_database_url,
)
from crypto_platform.raw_partitions import ensure_days, utc_day
from local_stack.stack import LocalStack
from streaming_services.consumer import ConsumerConfig, PricesConsumer
from streaming_services.messages import TradeMessage

pytestmark = pytest.mark.integration

DENIED = (psycopg2.errors.InsufficientPrivilege, psycopg2.errors.ReadOnlySqlTransaction)
TRADE = ("BTCUSDT", "60000.5", 1_723_161_600_000, "2024-08-09T00:00:00Z", "0.5", 1, 1, 1, 1, True, "test")
INSERT_TRADE = ("INSERT INTO stock.real_time_prices (symbol, price, timestamp, event_time, volume, agg_trade_id,"
                " first_trade_id, last_trade_id, trades, is_buyer_maker, source)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)")
CANDLE_LOCK = zlib.crc32(b"aggregated_prices_1min")


def _insert_trade(cursor) -> None:
    """TRADE, its day's partition made first (``stock.ensure_raw_partitions``, which ingest_writer may call)."""
    ensure_days(cursor, [utc_day(TRADE[2])])
    cursor.execute(INSERT_TRADE, TRADE)


@pytest.fixture
def connect(stack: LocalStack) -> Iterator:
    """``connect(role, database=None)``: an autocommit connection as that run-time role."""
    opened = []

    def open_as(role: str, database: str | None = None):
        connection = psycopg2.connect(role_database_url(stack.settings, role, database), connect_timeout=10)
        connection.autocommit = True
        opened.append(connection)
        return connection

    yield open_as
    for connection in opened:
        connection.close()


def _denied(connection, statement: str, params: tuple = ()) -> bool:
    with connection.cursor() as cursor:
        try:
            cursor.execute(statement, params)
        except DENIED:
            return True
    return False


def test_no_runtime_role_is_superuser_or_owns_a_market_table(db) -> None:
    with db.cursor() as cursor:
        cursor.execute("SELECT rolname, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls, rolcanlogin"
                       " FROM pg_roles WHERE rolname = ANY(%s)", (list(RUNTIME_ROLES),))
        roles = {row[0]: row[1:] for row in cursor.fetchall()}
        cursor.execute("SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'stock'")
        owners = {row[0] for row in cursor.fetchall()}
    assert set(roles) == set(RUNTIME_ROLES)
    assert all(flags == (False, False, False, False, True) for flags in roles.values()), roles
    assert not owners & set(RUNTIME_ROLES), owners


def test_ingest_writer_appends_trades_and_nothing_else(db, connect) -> None:
    writer = connect(INGEST_WRITER)
    with writer.cursor() as cursor:
        _insert_trade(cursor)
        cursor.execute("INSERT INTO stock.rejected_messages (topic, partition, \"offset\", raw_payload, error)"
                       " VALUES ('t', 0, 1, 'x', 'bad') ON CONFLICT (topic, partition, \"offset\") DO NOTHING")
    for statement in ("UPDATE stock.real_time_prices SET price = 1", "DELETE FROM stock.real_time_prices",
                      "TRUNCATE stock.real_time_prices",
                      "SELECT raw_payload FROM stock.rejected_messages",
                      "DELETE FROM stock.rejected_messages", "SELECT count(*) FROM stock.aggregated_prices_1min",
                      "DELETE FROM stock.aggregated_prices_1min", "UPDATE stock.candle_cursors SET watermark_ms = 0",
                      "INSERT INTO stock.latest_prices (symbol, price, event_time, agg_trade_id)"
                      " VALUES ('X', 1, now(), 1)", "CREATE TABLE stock.intruder (id int)",
                      "DROP TABLE stock.real_time_prices_p20240809", "UPDATE stock.raw_storage SET retention_days = 1"):
        assert _denied(writer, statement), statement
    with db.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM stock.real_time_prices")
        assert cursor.fetchone() == (1,)


def test_consumer_writes_as_ingest_writer(stack: LocalStack, db, kafka_topic: str, platform_env) -> None:
    """The consumer's own connections (its pool) are ``ingest_writer``'s, and a batch that repeats a stored
    row (a re-read, compared with the stored content by the admission rules) works under that role."""
    settings = platform_env(KAFKA_TOPIC=kafka_topic, SYMBOLS="BTCUSDT", CONSUMER_GROUP=f"group-{kafka_topic}")
    with db.cursor() as cursor:
        _insert_trade(cursor)
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
    reread = TradeMessage("BTCUSDT", Decimal("60000.5"), Decimal("0.5"), 1_723_161_600_000, 1, 1, 1, True, "test")
    fresh = [TradeMessage("BTCUSDT", Decimal("61234.56"), Decimal("0.5"), int(time.time() * 1000), agg_id,
                          agg_id, agg_id, False, "test") for agg_id in (2, 3)]
    for trade in (reread, *fresh):
        producer.send(kafka_topic, key=trade.key, value=trade.to_json())
    producer.flush()
    producer.close()
    config = ConsumerConfig.from_settings(settings)
    consumer = PricesConsumer(config)
    thread = threading.Thread(target=consumer.run)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        users: set[str] = set()
        while time.monotonic() < deadline:
            with db.cursor() as cursor:
                cursor.execute("SELECT count(*) FROM stock.real_time_prices")
                stored = cursor.fetchone()[0]
                cursor.execute("SELECT count(*) FROM stock.rejected_messages")
                rejected = cursor.fetchone()[0]
                cursor.execute("SELECT DISTINCT usename FROM pg_stat_activity WHERE datname = current_database()"
                               " AND pid <> pg_backend_pid() AND backend_type = 'client backend'")
                users |= {row[0] for row in cursor.fetchall()}
            if stored + rejected >= 3 and stored > 1:
                break
            time.sleep(0.5)
    finally:
        consumer.stop()
        thread.join(60)
    assert rejected == 0, "the consumer's rows were refused"
    assert stored == 3
    assert users == {INGEST_WRITER}, users


def test_candle_writer_reads_trades_writes_candles_and_takes_the_candle_lock(stack: LocalStack, db, connect) -> None:
    candles = connect(CANDLE_WRITER)
    with db.cursor() as cursor:
        _insert_trade(cursor)
    with candles.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM stock.real_time_prices")
        assert cursor.fetchone() == (1,)
        cursor.execute("INSERT INTO stock.candle_cursors (name, ingest_xid) VALUES ('t', '1'::xid8)"
                       " ON CONFLICT (name) DO UPDATE SET ingest_xid = EXCLUDED.ingest_xid")
        cursor.execute("SELECT pg_try_advisory_lock(%s)", (CANDLE_LOCK,))
        assert cursor.fetchone() == (True,)
        cursor.execute("SELECT pg_advisory_unlock(%s)", (CANDLE_LOCK,))
    for statement in ("DELETE FROM stock.real_time_prices", "UPDATE stock.real_time_prices SET price = 1",
                      "SELECT count(*) FROM stock.rejected_messages", "SELECT count(*) FROM public.schema_migrations"):
        assert _denied(candles, statement), statement
    with MarketStore(role_database_url(stack.settings, CANDLE_WRITER)).exclusive("aggregated_prices_1min"):
        pass


def test_superset_reader_cannot_take_the_candle_lock_or_run_forever(connect) -> None:
    """Today (before 008) any role could hold the lock the candle runs wait for and stall them."""
    reader = connect(SUPERSET_READER)
    for function in ("pg_advisory_lock", "pg_try_advisory_lock", "pg_advisory_lock_shared",
                     "pg_try_advisory_xact_lock"):
        assert _denied(reader, f"SELECT {function}(%s)", (CANDLE_LOCK,)), function
    with reader.cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        assert cursor.fetchone() == ("1min",)
        cursor.execute("SELECT count(*) FROM stock.real_time_prices")
    assert _denied(reader, "INSERT INTO stock.candle_cursors (name, ingest_xid) VALUES ('x', '1'::xid8)")
    assert _denied(reader, "SELECT * FROM stock.maintain_raw_partitions()")


@pytest.mark.parametrize("role", RUNTIME_ROLES)
def test_no_runtime_role_reaches_the_server_os_or_creates_roles(stack: LocalStack, connect, role: str) -> None:
    database = {DAGSTER: stack.settings.dagster_database, SUPERSET_META: stack.settings.superset_database}.get(role)
    connection = connect(role, database)
    for statement in ("COPY stock.real_time_prices FROM PROGRAM 'id'",
                      "SELECT pg_read_file('postgresql.conf')", "SELECT pg_ls_dir('.')",
                      "CREATE ROLE intruder LOGIN SUPERUSER", "ALTER ROLE CURRENT_USER SUPERUSER",
                      "COPY (SELECT 1) TO '/tmp/intruder'"):
        with connection.cursor() as cursor:
            with pytest.raises((*DENIED, psycopg2.errors.UndefinedObject)):
                cursor.execute(statement)


@pytest.mark.parametrize(("role", "own", "foreign"), [
    (DAGSTER, "dagster_database", "superset_database"),
    (SUPERSET_META, "superset_database", "dagster_database"),
])
def test_dagster_and_superset_roles_own_their_database_only(stack: LocalStack, connect, role, own, foreign) -> None:
    connection = connect(role, getattr(stack.settings, own))
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS own_table (id int)")
        cursor.execute("DROP TABLE own_table")
    for database in (getattr(stack.settings, foreign), stack.settings.pg_database):
        with pytest.raises(psycopg2.OperationalError, match="permission denied"):
            connect(role, database)


def test_every_client_factory_logs_in_as_its_own_role(stack: LocalStack) -> None:
    from urllib.parse import urlsplit

    from crypto_assets.resources import MarketDatabase
    from local_stack.stack import dagster_environment
    from local_stack.superset import server_environment

    settings = stack.settings
    assert urlsplit(ConsumerConfig.from_settings(settings).database_url).username == INGEST_WRITER
    market_url = MarketDatabase.from_settings(settings).store().database_url
    assert urlsplit(market_url).username == CANDLE_WRITER
    assert JdbcTarget.from_database_url(market_url).user == CANDLE_WRITER
    assert dagster_environment(settings)["DAGSTER_PG_USER"] == DAGSTER
    assert urlsplit(server_environment(settings)["SUPERSET_METADATA_URI"]).username == SUPERSET_META
    assert settings.pg_user not in {INGEST_WRITER, CANDLE_WRITER, DAGSTER, SUPERSET_META, SUPERSET_READER}
