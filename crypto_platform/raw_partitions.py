"""The daily partitions of ``stock.real_time_prices`` (``sql/013``): made before rows arrive, dropped by retention.

A row can only be written into a day that has a partition: every writer makes sure of its days first
(``ensure_days``, in the transaction that writes them). ``maintain`` makes today and the week ahead and drops
the days past the administrator's ``RAW_RETENTION_DAYS`` (``stock.raw_storage``): at ``make up``
(``apply_retention``, as the administrator, which also writes the setting) and hourly by the consumer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import psycopg2

DAY_MS = 86_400_000
ENSURE = "SELECT stock.ensure_raw_partitions(%s::date[])"
MAINTAIN = "SELECT created, dropped, busy FROM stock.maintain_raw_partitions()"
DROPPED_AMONG = "SELECT day FROM stock.raw_partitions WHERE dropped_at IS NOT NULL AND day = ANY(%s::date[])"
DROPPED = ("SELECT day FROM stock.raw_partitions WHERE dropped_at IS NOT NULL AND day BETWEEN %s AND %s"
           " ORDER BY day")
SET_RETENTION = ("INSERT INTO stock.raw_storage (retention_days) VALUES (%s) ON CONFLICT (only_row)"
                 " DO UPDATE SET retention_days = EXCLUDED.retention_days, updated_at = now()")


@dataclass(frozen=True)
class Maintenance:
    """Partitions made ahead, days dropped, and steps left to the next run because a lock was busy."""

    created: int
    dropped: int
    busy: int


def utc_day(ms: int) -> date:
    return date(1970, 1, 1) + timedelta(days=ms // DAY_MS)


def utc_days(first_ms: int, last_ms: int) -> list[date]:
    """Every UTC day from the one of ``first_ms`` to the one of ``last_ms``, both included."""
    first, last = utc_day(first_ms), utc_day(last_ms)
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def ensure_days(cursor, days: list[date]) -> int:
    """The partitions of ``days`` made where missing (in the caller's transaction); returns how many."""
    cursor.execute(ENSURE, (days,))
    return int(cursor.fetchone()[0])


def dropped_among(cursor, days: list[date]) -> list[date]:
    """Those of ``days`` whose partition retention dropped."""
    cursor.execute(DROPPED_AMONG, (days,))
    return [row[0] for row in cursor.fetchall()]


def maintain(cursor) -> Maintenance:
    cursor.execute(MAINTAIN)
    return Maintenance(*cursor.fetchone())


def dropped_days(database_url: str, first_ms: int, last_ms: int) -> list[date]:
    """The days from ``first_ms`` to ``last_ms`` (both included) whose raw trades retention dropped."""
    connection = psycopg2.connect(database_url, connect_timeout=10)
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(DROPPED, (utc_day(first_ms), utc_day(last_ms)))
            return [row[0] for row in cursor.fetchall()]
    finally:
        connection.close()


def apply_retention(database_url: str, retention_days: int) -> Maintenance:
    """As the administrator: ``RAW_RETENTION_DAYS`` written where the partition functions read it, then applied."""
    connection = psycopg2.connect(database_url, connect_timeout=10)
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(SET_RETENTION, (retention_days,))
            return maintain(cursor)
    finally:
        connection.close()

