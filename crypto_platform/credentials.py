"""Who each service is when it connects, and where its password comes from: one place for every client.

Every run-time service logs in to PostgreSQL as a role of its own (least privilege, ``sql/008``); the
administrator ``PG_USER`` only runs migrations and provisions the roles. A role's password is its
setting (``INGEST_WRITER_PASSWORD``, …) when given, else a random one generated once into
``STATE_DIR/secrets/<role>`` (mode 0600, in a 0700 folder). Passwords never appear in logs or on a
command line; PostgreSQL receives only a SCRAM verifier (``scram_verifier``), never the password itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from crypto_platform.settings import PlatformSettings

INGEST_WRITER = "ingest_writer"
CANDLE_WRITER = "candle_writer"
DAGSTER = "dagster"
SUPERSET_META = "superset_meta"
SUPERSET_READER = "superset_reader"
SCRAM_ITERATIONS = 4096
SECRETS_FOLDER = "secrets"  # in STATE_DIR

# role -> the setting that may give its password (else generated)
_CONFIGURED = {
    INGEST_WRITER: lambda s: s.ingest_writer_password,
    CANDLE_WRITER: lambda s: s.candle_writer_password,
    DAGSTER: lambda s: s.dagster_pg_password,
    SUPERSET_META: lambda s: s.superset_meta_password,
    SUPERSET_READER: lambda s: s.superset_reader_password,
}
RUNTIME_ROLES = tuple(_CONFIGURED)

# Kafka's principals with SECURE=1 (SCRAM-SHA-512), each password generated into STATE_DIR/secrets/kafka-<name>.
KAFKA_ADMIN = "platform-admin"  # the local stack's topic, ACL and status work; a super user
KAFKA_PRODUCER = "binance-producer"  # writes the trades topic
KAFKA_CONSUMER = "prices-consumer"  # reads it, in the consumer group
KAFKA_PRINCIPALS = (KAFKA_ADMIN, KAFKA_PRODUCER, KAFKA_CONSUMER)
DAGSTER_UI_USER = "dagster"  # SECURE=1's login of the Dagster UI, its password in STATE_DIR/secrets/<DAGSTER_UI_SECRET>
DAGSTER_UI_SECRET = "dagster-ui"


def private_folder(path: Path) -> Path:
    """``path`` as a 0700 folder: created when missing, its mode set only when it differs (so a read-only
    mount of one, as docker-compose's services have, is read as it is)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) != 0o700:
        path.chmod(0o700)
    return path


def secrets_dir(settings: PlatformSettings) -> Path:
    """``STATE_DIR/secrets``, created 0700."""
    return private_folder(settings.state_dir / SECRETS_FOLDER)


def secret_path(settings: PlatformSettings, name: str) -> Path:
    """``STATE_DIR/secrets/<name>``, where the secret ``name`` is generated (nothing is created here)."""
    return settings.state_dir / SECRETS_FOLDER / name


def generated_secret(settings: PlatformSettings, name: str, nbytes: int = 24) -> str:
    """``STATE_DIR/secrets/<name>``, generated once."""
    return private_secret(secret_path(settings, name), nbytes)


def private_secret(path: Path, nbytes: int = 24) -> str:
    """The secret in ``path``, in a 0700 folder, generated once."""
    return secret_file(private_folder(path.parent) / path.name, nbytes)


def secret_file(path: Path, nbytes: int = 24) -> str:
    """The secret in ``path``: generated once (0600, created exclusively so two starters agree)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    value = secrets.token_urlsafe(nbytes)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(value + "\n")
    return value


def role_password(settings: PlatformSettings, role: str) -> str:
    """The role's configured password, else the generated one."""
    return _CONFIGURED[role](settings) or generated_secret(settings, role)


def role_database_url(settings: PlatformSettings, role: str, database: str | None = None) -> str:
    """DATABASE_URL's server and TLS options, logged in as ``role`` (to its database, or ``database``)."""
    return settings.database_url_as(role, role_password(settings, role), database)


def scram_verifier(password: str, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores (RFC 5802/7677): ``ALTER ROLE … PASSWORD '<verifier>'``
    sets the password without sending it. SASLprep is the identity for the ASCII passwords generated here."""
    salt = salt or os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    salt_b64, stored_b64, server_b64 = (base64.b64encode(raw).decode() for raw in (salt, stored_key, server_key))
    return f"SCRAM-SHA-256${iterations}:{salt_b64}${stored_b64}:{server_b64}"


def spark_connect_token(settings: PlatformSettings) -> str:
    """SECURE=1's pre-shared token of the local Spark Connect server; server and clients read it from
    ``SPARK_CONNECT_AUTHENTICATE_TOKEN`` (PySpark's own variable), never from a command line."""
    return generated_secret(settings, "spark-connect-token", 32)


def spark_connect_environment(settings: PlatformSettings) -> dict[str, str]:
    """What a process that serves or uses the local Spark Connect server needs in its environment."""
    if not (settings.secure and settings.spark_remote):
        return {}
    return {"SPARK_CONNECT_AUTHENTICATE_TOKEN": spark_connect_token(settings)}


def dagster_ui_password(settings: PlatformSettings) -> str:
    """SECURE=1's login of the Dagster UI (HTTP basic, user ``dagster``), generated once."""
    return generated_secret(settings, DAGSTER_UI_SECRET)


def kafka_password(settings: PlatformSettings, principal: str) -> str:
    return generated_secret(settings, f"kafka-{principal}")


def kafka_security(settings: PlatformSettings, principal: str) -> dict[str, str]:
    """kafka-python's connection options for ``principal``: none in plaintext; with SECURE=1 SASL_SSL,
    SCRAM-SHA-512 with its password, the broker's certificate checked against the platform CA."""
    if not settings.secure:
        return {}
    return {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": principal,
            "sasl_plain_password": kafka_password(settings, principal), "ssl_cafile": str(settings.tls_ca_cert)}


@dataclass(frozen=True)
class TlsFiles:
    """Where the CA and the server certificate live; ``ca_cert`` is what clients verify servers against."""

    folder: Path

    @property
    def ca_cert(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.folder / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.folder / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.folder / "server.key"

    @property
    def trust_bundle(self) -> Path:
        """The public CAs (certifi's) and ours in one file: for clients that also reach outside services."""
        return self.folder / "trust.pem"


def tls_files(settings: PlatformSettings) -> TlsFiles:
    """The platform's CA and server certificate in ``STATE_DIR/tls/`` (made by ``local_stack.certificates``)."""
    return TlsFiles(settings.tls_ca_cert.parent)
