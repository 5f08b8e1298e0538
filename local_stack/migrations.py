"""A small idempotent migration runner: ``sql/NNN_*.sql`` applied in order, each once, each in a transaction."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import psycopg2

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
LOCK_ID = 7_420_311  # advisory lock: two runners at once apply each file once

log = logging.getLogger(__name__)


class MigrationError(RuntimeError):
    """A migration failed or was edited after it was applied."""


@dataclass(frozen=True)
class Migration:
    version: str
    path: Path

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def discover(sql_dir: Path = SQL_DIR) -> list[Migration]:
    return [Migration(p.stem, p) for p in sorted(sql_dir.glob("[0-9][0-9][0-9]_*.sql"))]


def apply_migrations(database_url: str, sql_dir: Path = SQL_DIR) -> list[str]:
    """Applies the pending migrations; returns the versions it applied (empty when up to date)."""
    applied_now: list[str] = []
    connection = psycopg2.connect(database_url, connect_timeout=10)
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", (LOCK_ID,))
            cursor.execute(
                "CREATE TABLE IF NOT EXISTS public.schema_migrations ("
                " version TEXT PRIMARY KEY, checksum TEXT NOT NULL,"
                " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            cursor.execute("SELECT version, checksum FROM public.schema_migrations")
            applied = dict(cursor.fetchall())
        for migration in discover(sql_dir):
            if migration.version in applied:
                if applied[migration.version] != migration.checksum:
                    raise MigrationError(
                        f"{migration.path.name} changed after it was applied; add a new migration instead"
                    )
                continue
            try:
                with connection, connection.cursor() as cursor:
                    cursor.execute(migration.path.read_text())
                    cursor.execute(
                        "INSERT INTO public.schema_migrations (version, checksum) VALUES (%s, %s)",
                        (migration.version, migration.checksum),
                    )
            except psycopg2.Error as exc:
                raise MigrationError(f"{migration.path.name} failed: {str(exc).strip().splitlines()[0]}") from None
            log.info("migration applied", extra={"version": migration.version})
            applied_now.append(migration.version)
        with connection, connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", (LOCK_ID,))
    finally:
        connection.close()
    return applied_now
