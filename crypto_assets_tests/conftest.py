"""Shared fixtures: a real, ephemeral Kafka broker and PostgreSQL 16 on free ports in a temporary folder.

Every integration test of the platform talks to these real servers; nothing here is mocked.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg2
import pytest
from psycopg2 import sql

from crypto_platform.settings import PlatformSettings
from local_stack.ephemeral import ephemeral_stack
from local_stack.stack import LocalStack

SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "binance"
# Every stack a test starts (and `make up` run by a test) assigns a new consumer group at once, as Kafka's
# development configuration does, instead of the platform's 3 s wait for more members: dozens of tests start a
# new group, and the rebalances this lets happen are the ones the worker tests are there to exercise.
os.environ.setdefault("KAFKA_GROUP_JOIN_DELAY_MS", "0")


@pytest.fixture(scope="session")
def stack() -> Iterator[LocalStack]:
    """A running Kafka + PostgreSQL with the schema and the trades topic, for the whole session."""
    with ephemeral_stack("crypto-test-stack-") as local_stack:
        yield local_stack


@pytest.fixture
def platform_env(stack: LocalStack, monkeypatch: pytest.MonkeyPatch) -> Callable[..., PlatformSettings]:
    """``platform_env(NAME=value, ...)``: settings of the test stack plus overrides, also put in os.environ."""

    def apply(**overrides: object) -> PlatformSettings:
        for name, value in overrides.items():
            monkeypatch.setenv(name, str(value))
        return PlatformSettings.from_env()

    apply()
    return apply


@pytest.fixture
def db(stack: LocalStack) -> Iterator[psycopg2.extensions.connection]:
    """An autocommit connection to the market-data database, every ``stock`` table emptied first."""
    connection = psycopg2.connect(stack.settings.database_url)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'stock' ORDER BY tablename")
        tables = [row[0] for row in cursor.fetchall()]
        if tables:
            names = sql.SQL(", ").join(sql.Identifier("stock", table) for table in tables)
            cursor.execute(sql.SQL("TRUNCATE {} RESTART IDENTITY").format(names))
    try:
        yield connection
    finally:
        connection.close()


@pytest.fixture
def kafka_topic(stack: LocalStack) -> str:
    """A fresh topic with 3 partitions, so tests never see each other's messages."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    stack.kafka.ensure_topic(name, 3)
    return name


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"the shared Binance samples are not at {SHARED_DATA}; clone the repo beside shared/")
    return SHARED_DATA


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that use a server fixture are integration tests, whatever their file says."""
    for item in items:
        if {"stack", "db", "kafka_topic", "platform_env"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
