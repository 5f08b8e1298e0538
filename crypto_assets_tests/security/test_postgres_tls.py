"""SECURE=1's PostgreSQL: TLS connections only, its certificate verified against the platform's CA."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from urllib.parse import quote

import psycopg2
import pytest

from crypto_platform.credentials import CANDLE_WRITER, INGEST_WRITER, role_database_url
from crypto_platform.settings import PlatformSettings
from local_stack.backups import BackupStore
from local_stack.certificates import ensure_certificates
from local_stack.ephemeral import make_state_dir, stack_environment
from local_stack.postgres import PostgresServer, ServerAccount
from local_stack.stack import LocalStack

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def secure_postgres() -> Iterator[PostgresServer]:
    state_dir = make_state_dir("crypto-test-pg-tls-")
    settings = PlatformSettings.from_env({**os.environ, **stack_environment(state_dir), "SECURE": "1"})
    stack = LocalStack(settings)
    try:
        stack.start_database()  # as make up does it: STATE_DIR made private first, then the roles
        yield stack.postgres
    finally:
        stack.down()
        shutil.rmtree(state_dir, ignore_errors=True)


def with_options(url: str, options: str) -> str:
    return url.split("?", 1)[0] + "?" + options


def test_the_default_url_verifies_the_server_and_the_session_is_encrypted(secure_postgres):
    url = secure_postgres.settings.database_url
    assert "sslmode=verify-full" in url
    with psycopg2.connect(url) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        encrypted, version = cursor.fetchone()
    connection.close()
    assert encrypted and version in {"TLSv1.2", "TLSv1.3"}


def test_a_plaintext_connection_is_refused(secure_postgres):
    with pytest.raises(psycopg2.OperationalError, match="no encryption"):
        psycopg2.connect(with_options(secure_postgres.settings.database_url, "sslmode=disable"))


def test_a_client_trusting_another_ca_refuses_the_server(secure_postgres, tmp_path):
    stranger = ensure_certificates(tmp_path / "other-ca")
    options = f"sslmode=verify-full&sslrootcert={quote(str(stranger.ca_cert))}"
    with pytest.raises(psycopg2.OperationalError, match="certificate verify failed"):
        psycopg2.connect(with_options(secure_postgres.settings.database_url, options))


def test_the_server_key_is_the_server_accounts_alone(secure_postgres):
    key = secure_postgres.root / "tls" / "server.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(secure_postgres.settings.tls_ca_cert.parent.stat().st_mode) == 0o700


def test_a_base_backup_goes_through_the_server_accounts_socket(secure_postgres):
    store = BackupStore(secure_postgres.settings)
    backup = store.take(ServerAccount.for_current_user())
    assert backup.size_bytes > 0 and [b.path for b in store.backups()] == [backup.path]


def test_every_run_time_role_connects_over_tls(secure_postgres):
    settings = secure_postgres.settings
    for role in (INGEST_WRITER, CANDLE_WRITER):
        with psycopg2.connect(role_database_url(settings, role)) as connection, connection.cursor() as cursor:
            cursor.execute("SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            assert cursor.fetchone() == (role, True)
        connection.close()
