"""Run-time PostgreSQL roles (created NOLOGIN by ``sql/008``): LOGIN with their passwords, and the
Dagster and Superset databases owned by their own roles. Run by the administrator after the migrations.

Passwords travel as SCRAM verifiers (``ALTER ROLE … PASSWORD 'SCRAM-SHA-256$…'``), so neither the
server's log nor ``pg_stat_activity`` ever holds one.
"""

from __future__ import annotations

import logging

import psycopg2
from psycopg2 import sql

from crypto_platform.credentials import (
    DAGSTER,
    RUNTIME_ROLES,
    SUPERSET_META,
    role_password,
    scram_verifier,
)
from crypto_platform.settings import PlatformSettings
from local_stack.processes import StackError

log = logging.getLogger(__name__)

# Objects an older platform created in Dagster's or Superset's database as the administrator:
# (kind for ALTER, schema, name); owned sequences and indexes follow their tables.
_OWNED_OBJECTS = """
SELECT CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                      ELSE 'TABLE' END, n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)
  AND c.relkind IN ('r', 'p', 'v', 'm', 'S') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND NOT (c.relkind = 'S' AND EXISTS (SELECT FROM pg_depend d WHERE d.objid = c.oid AND d.deptype IN ('a', 'i')))
UNION ALL
SELECT 'TYPE', n.nspname, t.typname
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE t.typowner = (SELECT oid FROM pg_roles WHERE rolname = current_user) AND t.typtype IN ('e', 'd')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
"""


def provision_roles(settings: PlatformSettings) -> None:
    """Every run-time role can log in with its password; Dagster's and Superset's databases are theirs."""
    connection = psycopg2.connect(settings.database_url, connect_timeout=10)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            for role in RUNTIME_ROLES:
                try:
                    cursor.execute(sql.SQL("ALTER ROLE {} WITH LOGIN PASSWORD %s").format(sql.Identifier(role)),
                                   (scram_verifier(role_password(settings, role)),))
                except psycopg2.errors.UndefinedObject:
                    raise StackError(f"role {role} is missing; apply the migrations first (make migrate)") from None
            for database, owner in ((settings.dagster_database, DAGSTER), (settings.superset_database, SUPERSET_META)):
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
                if cursor.fetchone() is None:
                    continue
                cursor.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                    sql.Identifier(database), sql.Identifier(owner)))
                cursor.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(database)))
                _hand_over_objects(settings, database, owner)
    finally:
        connection.close()
    log.info("database roles ready", extra={"roles": ",".join(RUNTIME_ROLES)})


def _hand_over_objects(settings: PlatformSettings, database: str, owner: str) -> None:
    """Tables the administrator created in ``database`` (a stack from before the roles) become ``owner``'s."""
    connection = psycopg2.connect(settings.database_url_for(database), connect_timeout=10)
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(owner)))
            cursor.execute(_OWNED_OBJECTS)
            for kind, schema, name in cursor.fetchall():
                cursor.execute(sql.SQL("ALTER {} {} OWNER TO {}").format(
                    sql.SQL(kind), sql.Identifier(schema, name), sql.Identifier(owner)))
    finally:
        connection.close()
