"""The platform's configuration: every environment variable, its default and its meaning, in one place.

Each role (local stack, producer, consumer, replay server, Dagster resources) reads its settings from
``PlatformSettings.from_env()`` so that a variable has exactly one name and one default. The password
defaults are for the local development stack only; docker-compose and any real deployment pass them in.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import quote, urlsplit

LOCAL_DEV_PASSWORD = "crypto-local-dev"
SEED_SYMBOLS = ("BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT")
BINANCE_WS_URL = "wss://stream.binance.com:9443"
BINANCE_REST_URL = "https://api.binance.com"
# Worker I of PRODUCER_WORKERS / CONSUMER_WORKERS serves its metrics on the service's port + I * WORKER_PORT_STRIDE,
# so the producer's (9101, 9201, …) and the consumer's (9102, 9202, …) never meet.
WORKER_PORT_STRIDE = 100
BINANCE_DATA_URL = "https://data.binance.vision"


class SettingsError(ValueError):
    """A setting has a value the platform cannot use; the message names the variable."""


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def _env_int(name: str, default: int, minimum: int | None = None) -> int:
    raw = _env(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None
    if minimum is not None and value < minimum:
        raise SettingsError(f"{name}={value} must be at least {minimum}")
    return value


def _env_float(name: str, default: float, minimum: float = 0.0) -> float:
    raw = _env(name, str(default))
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise SettingsError(f"{name}={value} must be at least {minimum}")
    return value


def _env_port(name: str, default: int) -> int:
    port = _env_int(name, default, minimum=1)
    if port > 65535:
        raise SettingsError(f"{name}={port} is not a TCP port (1-65535)")
    return port


def _env_bool(name: str, default: bool) -> bool:
    raw = _env(name, "1" if default else "0").lower()
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name}={raw!r} is not a boolean (use 1 or 0)")


def _parse_symbols(raw: str) -> tuple[str, ...]:
    symbols = tuple(dict.fromkeys(s.strip().upper() for s in raw.split(",") if s.strip()))
    if not symbols:
        raise SettingsError("SYMBOLS is empty; give a comma list such as BTCUSDT,ETHUSDT")
    for symbol in symbols:
        if not symbol.isalnum() or len(symbol) > 20:
            raise SettingsError(f"SYMBOLS has {symbol!r}, which is not a Binance symbol")
    return symbols


def _webhook_url(raw: str) -> str:
    """An https:// URL, or http:// to a loopback address (the local stack's receivers); empty = none."""
    if not raw:
        return raw
    parts = urlsplit(raw)
    if parts.scheme == "https" and parts.hostname:
        return raw
    if parts.scheme == "http" and parts.hostname in {"127.0.0.1", "localhost", "::1"}:
        return raw
    raise SettingsError(f"SUPERSET_ALERT_WEBHOOK_URL={raw!r} must be https://, or http:// to 127.0.0.1 or localhost")


@dataclass(frozen=True)
class PlatformSettings:
    """All settings of the platform. ``docs()`` lists them for the README and ``crypto-platform config``."""

    state_dir: Path = field(metadata={"env": "STATE_DIR", "doc": "Folder for data, logs and pids of the local stack", "default": ".platform"})
    bind_host: str = field(metadata={"env": "BIND_HOST", "doc": "Address every local server listens on", "default": "127.0.0.1"})
    kafka_port: int = field(metadata={"env": "KAFKA_PORT", "doc": "Kafka broker listener port", "default": "9092"})
    kafka_controller_port: int = field(metadata={"env": "KAFKA_CONTROLLER_PORT", "doc": "Kafka KRaft controller port", "default": "9093"})
    kafka_bootstrap_servers: str = field(metadata={"env": "KAFKA_BOOTSTRAP_SERVERS", "doc": "Kafka bootstrap servers", "default": "BIND_HOST:KAFKA_PORT"})
    kafka_topic: str = field(metadata={"env": "KAFKA_TOPIC", "doc": "Topic the producer writes and the consumer reads", "default": "binance-prices"})
    kafka_partitions: int = field(metadata={"env": "KAFKA_PARTITIONS", "doc": "Partitions of the trades topic", "default": "3"})
    kafka_retention_hours: int = field(metadata={"env": "KAFKA_RETENTION_HOURS", "doc": "How long Kafka keeps messages", "default": "168"})
    kafka_heap: str = field(metadata={"env": "KAFKA_HEAP", "doc": "JVM heap of the local Kafka broker", "default": "512m"})
    pg_port: int = field(metadata={"env": "PG_PORT", "doc": "Port of the embedded PostgreSQL 16", "default": "5432"})
    pg_user: str = field(metadata={"env": "PG_USER", "doc": "PostgreSQL administrator: runs migrations and creates the run-time roles, never used by a service", "default": "crypto"})
    pg_password: str = field(repr=False, metadata={"env": "PG_PASSWORD", "doc": "Its password (local-stack default only)", "default": LOCAL_DEV_PASSWORD})
    pg_database: str = field(metadata={"env": "PG_DATABASE", "doc": "Database of the market data (schema stock)", "default": "crypto"})
    database_url: str = field(repr=False, metadata={"env": "DATABASE_URL", "doc": "Market-data database; when set, the embedded PostgreSQL is not started", "default": "built from PG_*"})
    embedded_postgres: bool = field(metadata={"env": "DATABASE_URL", "doc": "(derived) the local stack runs PostgreSQL itself unless DATABASE_URL is set", "default": "true"})
    dagster_database: str = field(metadata={"env": "DAGSTER_PG_DB", "doc": "Database of Dagster's run, event and schedule storage", "default": "dagster"})
    superset_database: str = field(metadata={"env": "SUPERSET_PG_DB", "doc": "Database of Superset's metadata", "default": "superset"})
    ingest_writer_password: str = field(repr=False, metadata={"env": "INGEST_WRITER_PASSWORD", "doc": "Password of ingest_writer, the consumer's PostgreSQL role (appends trades and dead letters)", "default": "generated into STATE_DIR/secrets/"})
    candle_writer_password: str = field(repr=False, metadata={"env": "CANDLE_WRITER_PASSWORD", "doc": "Password of candle_writer, the candle assets' PostgreSQL role (reads trades, writes candles)", "default": "generated into STATE_DIR/secrets/"})
    dagster_pg_password: str = field(repr=False, metadata={"env": "DAGSTER_PG_PASSWORD", "doc": "Password of dagster, the PostgreSQL role owning Dagster's database only", "default": "generated into STATE_DIR/secrets/"})
    superset_meta_password: str = field(repr=False, metadata={"env": "SUPERSET_META_PASSWORD", "doc": "Password of superset_meta, the PostgreSQL role owning Superset's metadata database only", "default": "generated into STATE_DIR/secrets/"})
    backup_dir: Path = field(metadata={"env": "BACKUP_DIR", "doc": "Base backups (make backup) and the continuous WAL archive of the embedded PostgreSQL; put it on another disk to survive the loss of STATE_DIR's", "default": "STATE_DIR/backups"})
    backup_keep: int = field(metadata={"env": "BACKUP_KEEP", "doc": "Base backups kept by make backup; older ones and the WAL only they needed are deleted", "default": "7"})
    symbols: tuple[str, ...] = field(metadata={"env": "SYMBOLS", "doc": "Symbols to stream (comma list)", "default": ",".join(SEED_SYMBOLS)})
    source: str = field(metadata={"env": "SOURCE", "doc": "replay (built-in Binance-compatible server) or binance (live)", "default": "replay"})
    binance_ws_url: str = field(metadata={"env": "BINANCE_WS_URL", "doc": "Market-stream base URL (overrides SOURCE)", "default": "per SOURCE"})
    binance_rest_url: str = field(metadata={"env": "BINANCE_REST_URL", "doc": "REST base URL for gap backfill (overrides SOURCE)", "default": "per SOURCE"})
    binance_data_url: str = field(metadata={"env": "BINANCE_DATA_URL", "doc": "Binance's public data files, for make import --download", "default": BINANCE_DATA_URL})
    replay_port: int = field(metadata={"env": "REPLAY_PORT", "doc": "Port of the replay server (WebSocket and REST)", "default": "9443"})
    replay_files: tuple[str, ...] = field(metadata={"env": "REPLAY_FILES", "doc": "Binance trade/aggTrade CSV or ZIP files to replay; empty = synthetic market", "default": ""})
    replay_speed: float = field(metadata={"env": "REPLAY_SPEED", "doc": "Speed of a file replay: 1 = real time, 0 = as fast as possible (the synthetic market always runs in real time)", "default": "1"})
    replay_retime: bool = field(metadata={"env": "REPLAY_RETIME", "doc": "1 = shift file timestamps to now, 0 = keep them (files only)", "default": "1"})
    consumer_group: str = field(metadata={"env": "CONSUMER_GROUP", "doc": "Kafka consumer group of the PostgreSQL writer", "default": "real-time-prices-writer"})
    consumer_batch_size: int = field(metadata={"env": "CONSUMER_BATCH_SIZE", "doc": "Most messages written in one transaction", "default": "5000"})
    consumer_check_crcs: bool = field(metadata={"env": "CONSUMER_CHECK_CRCS", "doc": "1 = kafka-python re-checks record CRCs (4x slower; the broker checks them on produce)", "default": "0"})
    dead_letter_max_bytes: int = field(metadata={"env": "DEAD_LETTER_MAX_BYTES", "doc": "Bytes of a rejected payload stored in stock.rejected_messages; its full length and SHA-256 are kept beside", "default": "65536"})
    consumer_instance_id: str = field(metadata={"env": "CONSUMER_INSTANCE_ID", "doc": "Static group membership id (Kafka group.instance.id), unique per consumer process: a restarted consumer takes its partitions back at once; empty = dynamic membership (a restart waits out the 45 s session)", "default": "make up: consumer-1; else empty"})
    consumer_workers: int = field(metadata={"env": "CONSUMER_WORKERS", "doc": "Consumer processes in the group (at most KAFKA_PARTITIONS); worker I serves metrics on CONSUMER_METRICS_PORT + 100·I", "default": "1"})
    consumer_max_lateness_s: int = field(metadata={"env": "CONSUMER_MAX_LATENESS_S", "doc": "A trade older than its symbol's newest stored trade by more is dead-lettered as late", "default": "300"})
    consumer_max_id_distance: int = field(metadata={"env": "CONSUMER_MAX_ID_DISTANCE", "doc": "A trade id farther from its symbol's newest stored id is dead-lettered", "default": "100000000"})
    producer_stall_timeout_s: float = field(metadata={"env": "PRODUCER_STALL_TIMEOUT_S", "doc": "Reconnect when no frame (data or ping) came for this long", "default": "60"})
    producer_workers: int = field(metadata={"env": "PRODUCER_WORKERS", "doc": "Producer processes, SYMBOLS shared out among them (at most one per symbol); worker I serves metrics on PRODUCER_METRICS_PORT + 100·I", "default": "1"})
    producer_metrics_port: int = field(metadata={"env": "PRODUCER_METRICS_PORT", "doc": "Prometheus endpoint of the producer", "default": "9101"})
    consumer_metrics_port: int = field(metadata={"env": "CONSUMER_METRICS_PORT", "doc": "Prometheus endpoint of the consumer", "default": "9102"})
    dagster_port: int = field(metadata={"env": "DAGSTER_PORT", "doc": "Dagster UI port", "default": "3000"})
    dagster_allowed_hosts: tuple[str, ...] = field(metadata={"env": "DAGSTER_ALLOWED_HOSTS", "doc": "Extra host:port names the Dagster UI answers (it refuses other Host headers and foreign Origins)", "default": "BIND_HOST, localhost, 127.0.0.1 at DAGSTER_PORT"})
    superset_port: int = field(metadata={"env": "SUPERSET_PORT", "doc": "Superset port", "default": "8088"})
    spark_master: str = field(metadata={"env": "SPARK_MASTER", "doc": "Spark master: local[*] or spark://host:7077", "default": "local[*], or the local cluster's with SPARK_CLUSTER=1"})
    spark_cluster: bool = field(metadata={"env": "SPARK_CLUSTER", "doc": "1 = make up starts a standalone Spark master and worker", "default": "0"})
    spark_master_port: int = field(metadata={"env": "SPARK_MASTER_PORT", "doc": "Standalone master port (SPARK_CLUSTER=1)", "default": "7077"})
    spark_master_webui_port: int = field(metadata={"env": "SPARK_MASTER_WEBUI_PORT", "doc": "Standalone master UI port (SPARK_CLUSTER=1)", "default": "8080"})
    spark_worker_cores: int = field(metadata={"env": "SPARK_WORKER_CORES", "doc": "Cores of the standalone worker", "default": "2"})
    spark_worker_memory: str = field(metadata={"env": "SPARK_WORKER_MEMORY", "doc": "Memory of the standalone worker", "default": "2g"})
    spark_remote: str = field(metadata={"env": "SPARK_REMOTE", "doc": "Spark Connect URL the candle runs attach to; empty = an in-process SparkSession on SPARK_MASTER (a JVM per run)", "default": "sc://BIND_HOST:SPARK_CONNECT_PORT (the local Spark Connect server)"})
    spark_connect_server: bool = field(metadata={"env": "SPARK_REMOTE", "doc": "(derived) the local stack runs the Spark Connect server when SPARK_REMOTE is its URL", "default": "true"})
    spark_connect_port: int = field(metadata={"env": "SPARK_CONNECT_PORT", "doc": "Port of the local Spark Connect server (gRPC)", "default": "15002"})
    spark_connect_memory: str = field(metadata={"env": "SPARK_CONNECT_MEMORY", "doc": "Driver memory of the local Spark Connect server", "default": "1g"})
    spark_connect_cores: int = field(metadata={"env": "SPARK_CONNECT_CORES", "doc": "Cores the Spark Connect server uses (local[N], or spark.cores.max on the cluster)", "default": "2"})
    superset: bool = field(metadata={"env": "SUPERSET", "doc": "1 = make up runs Superset (own venv, installed on first use, cached in ~/.cache/crypto-platform)", "default": "1"})
    superset_admin_user: str = field(metadata={"env": "SUPERSET_ADMIN_USER", "doc": "Superset administrator's user name", "default": "admin"})
    superset_admin_password: str = field(repr=False, metadata={"env": "SUPERSET_ADMIN_PASSWORD", "doc": "Its password; the local stack generates one into STATE_DIR/superset/admin_password when unset", "default": "generated"})
    superset_reader_password: str = field(repr=False, metadata={"env": "SUPERSET_READER_PASSWORD", "doc": "Password of superset_reader, the read-only PostgreSQL role Superset queries with", "default": "generated"})
    superset_secret_key: str = field(repr=False, metadata={"env": "SUPERSET_SECRET_KEY", "doc": "Superset's SECRET_KEY (signs sessions, encrypts stored passwords)", "default": "generated"})
    superset_alerts: bool = field(metadata={"env": "SUPERSET_ALERTS", "doc": "1 = make up runs Superset's alerts & reports: Redis, a Celery worker and beat", "default": "1"})
    redis_port: int = field(metadata={"env": "REDIS_PORT", "doc": "Port of the local Redis (Celery broker and results of Superset's alerts)", "default": "6379"})
    redis_url: str = field(repr=False, metadata={"env": "REDIS_URL", "doc": "Celery broker of Superset's alerts; when set, the local Redis is not started", "default": "built from REDIS_PORT"})
    embedded_redis: bool = field(metadata={"env": "REDIS_URL", "doc": "(derived) the local stack runs Redis itself unless REDIS_URL is set", "default": "true"})
    superset_public_url: str = field(metadata={"env": "SUPERSET_PUBLIC_URL", "doc": "Superset's address in alert links; the alerts' worker fetches chart data there too", "default": "http://BIND_HOST:SUPERSET_PORT"})
    superset_alert_webhook_url: str = field(repr=False, metadata={"env": "SUPERSET_ALERT_WEBHOOK_URL", "doc": "Alerts and reports POST here (https://, or http:// to a loopback address)", "default": "none"})
    superset_alert_grace_s: int = field(metadata={"env": "SUPERSET_ALERT_GRACE_S", "doc": "An alert that fired stays quiet this long (its grace period)", "default": "600"})
    smtp_host: str = field(metadata={"env": "SMTP_HOST", "doc": "SMTP server for alert and report e-mails (with SMTP_MAIL_TO)", "default": "none"})
    smtp_port: int = field(metadata={"env": "SMTP_PORT", "doc": "Its port", "default": "25"})
    smtp_starttls: bool = field(metadata={"env": "SMTP_STARTTLS", "doc": "1 = STARTTLS before sending", "default": "1"})
    smtp_ssl: bool = field(metadata={"env": "SMTP_SSL", "doc": "1 = SMTP over TLS from the first byte", "default": "0"})
    smtp_user: str = field(metadata={"env": "SMTP_USER", "doc": "SMTP login (none = no login)", "default": "none"})
    smtp_password: str = field(repr=False, metadata={"env": "SMTP_PASSWORD", "doc": "SMTP password", "default": "none"})
    smtp_mail_from: str = field(metadata={"env": "SMTP_MAIL_FROM", "doc": "Sender address of alert e-mails", "default": "superset@localhost"})
    smtp_mail_to: str = field(metadata={"env": "SMTP_MAIL_TO", "doc": "Recipient(s) of alert and report e-mails (comma list)", "default": "none"})
    log_level: str = field(metadata={"env": "LOG_LEVEL", "doc": "Log level of the platform's services", "default": "INFO"})

    @classmethod
    def from_env(cls) -> PlatformSettings:
        bind_host = _env("BIND_HOST", "127.0.0.1")
        kafka_port = _env_port("KAFKA_PORT", 9092)
        pg_port = _env_port("PG_PORT", 5432)
        pg_user = _env("PG_USER", "crypto")
        pg_password = _env("PG_PASSWORD", LOCAL_DEV_PASSWORD)
        pg_database = _env("PG_DATABASE", "crypto")
        embedded_postgres = not _env("DATABASE_URL", "")
        state_dir = Path(_env("STATE_DIR", ".platform")).expanduser().resolve()
        database_url = _env(
            "DATABASE_URL",
            f"postgresql://{quote(pg_user, safe='')}:{quote(pg_password, safe='')}@{bind_host}:{pg_port}/{pg_database}",
        )
        if urlsplit(database_url).scheme not in {"postgresql", "postgres"}:
            raise SettingsError("DATABASE_URL must start with postgresql://")
        source = _env("SOURCE", "replay").lower()
        if source not in {"replay", "binance"}:
            raise SettingsError(f"SOURCE={source!r} must be replay or binance")
        replay_port = _env_port("REPLAY_PORT", 9443)
        if source == "replay":
            ws_default, rest_default = f"ws://{bind_host}:{replay_port}", f"http://{bind_host}:{replay_port}"
        else:
            ws_default, rest_default = BINANCE_WS_URL, BINANCE_REST_URL
        # Set but empty is a mistake (``SYMBOLS= make up``), not a request for the defaults.
        symbols = _parse_symbols(os.environ.get("SYMBOLS", ",".join(SEED_SYMBOLS)))
        kafka_partitions = _env_int("KAFKA_PARTITIONS", 3, minimum=1)
        producer_workers = _env_int("PRODUCER_WORKERS", 1, minimum=1)
        if producer_workers > len(symbols):
            raise SettingsError(f"PRODUCER_WORKERS={producer_workers} exceeds the {len(symbols)} SYMBOLS (a symbol is "
                                "never in two workers)")
        consumer_workers = _env_int("CONSUMER_WORKERS", 1, minimum=1)
        if consumer_workers > kafka_partitions:
            raise SettingsError(f"CONSUMER_WORKERS={consumer_workers} exceeds KAFKA_PARTITIONS={kafka_partitions} "
                                "(a partition is read by one consumer of the group)")
        redis_port = _env_port("REDIS_PORT", 6379)
        superset_port = _env_port("SUPERSET_PORT", 8088)
        spark_cluster = _env_bool("SPARK_CLUSTER", False)
        spark_master_port = _env_port("SPARK_MASTER_PORT", 7077)
        spark_master = _env("SPARK_MASTER", f"spark://{bind_host}:{spark_master_port}" if spark_cluster else "local[*]")
        if not (spark_master.startswith("local") or spark_master.startswith("spark://")):
            raise SettingsError(f"SPARK_MASTER={spark_master!r} must be local[...] or spark://host:port")
        spark_connect_port = _env_port("SPARK_CONNECT_PORT", 15002)
        local_connect_url = f"sc://{bind_host}:{spark_connect_port}"
        # Unset = the local server; set but empty = no Connect at all (the in-process path).
        spark_remote = os.environ.get("SPARK_REMOTE", local_connect_url).strip()
        if spark_remote and not spark_remote.startswith("sc://"):
            raise SettingsError(f"SPARK_REMOTE={spark_remote!r} must be sc://host:port or empty")
        return cls(
            state_dir=state_dir,
            bind_host=bind_host,
            kafka_port=kafka_port,
            kafka_controller_port=_env_port("KAFKA_CONTROLLER_PORT", 9093),
            kafka_bootstrap_servers=_env("KAFKA_BOOTSTRAP_SERVERS", f"{bind_host}:{kafka_port}"),
            kafka_topic=_env("KAFKA_TOPIC", "binance-prices"),
            kafka_partitions=kafka_partitions,
            kafka_retention_hours=_env_int("KAFKA_RETENTION_HOURS", 168, minimum=1),
            kafka_heap=_env("KAFKA_HEAP", "512m"),
            pg_port=pg_port,
            pg_user=pg_user,
            pg_password=pg_password,
            pg_database=pg_database,
            database_url=database_url,
            embedded_postgres=embedded_postgres,
            dagster_database=_env("DAGSTER_PG_DB", "dagster"),
            superset_database=_env("SUPERSET_PG_DB", "superset"),
            ingest_writer_password=_env("INGEST_WRITER_PASSWORD", ""),
            candle_writer_password=_env("CANDLE_WRITER_PASSWORD", ""),
            dagster_pg_password=_env("DAGSTER_PG_PASSWORD", ""),
            superset_meta_password=_env("SUPERSET_META_PASSWORD", ""),
            backup_dir=Path(_env("BACKUP_DIR", str(state_dir / "backups"))).expanduser().resolve(),
            backup_keep=_env_int("BACKUP_KEEP", 7, minimum=1),
            symbols=symbols,
            source=source,
            binance_ws_url=_env("BINANCE_WS_URL", ws_default).rstrip("/"),
            binance_rest_url=_env("BINANCE_REST_URL", rest_default).rstrip("/"),
            binance_data_url=_env("BINANCE_DATA_URL", BINANCE_DATA_URL).rstrip("/"),
            replay_port=replay_port,
            replay_files=tuple(f.strip() for f in _env("REPLAY_FILES", "").split(",") if f.strip()),
            replay_speed=_env_float("REPLAY_SPEED", 1.0),
            replay_retime=_env_bool("REPLAY_RETIME", True),
            consumer_group=_env("CONSUMER_GROUP", "real-time-prices-writer"),
            consumer_batch_size=_env_int("CONSUMER_BATCH_SIZE", 5000, minimum=1),
            consumer_check_crcs=_env_bool("CONSUMER_CHECK_CRCS", False),
            dead_letter_max_bytes=_env_int("DEAD_LETTER_MAX_BYTES", 65536, minimum=0),
            consumer_instance_id=_env("CONSUMER_INSTANCE_ID", ""),
            consumer_workers=consumer_workers,
            consumer_max_lateness_s=_env_int("CONSUMER_MAX_LATENESS_S", 300, minimum=0),
            consumer_max_id_distance=_env_int("CONSUMER_MAX_ID_DISTANCE", 100_000_000, minimum=1),
            producer_stall_timeout_s=_env_float("PRODUCER_STALL_TIMEOUT_S", 60.0, minimum=0.1),
            producer_workers=producer_workers,
            producer_metrics_port=_env_port("PRODUCER_METRICS_PORT", 9101),
            consumer_metrics_port=_env_port("CONSUMER_METRICS_PORT", 9102),
            dagster_port=_env_port("DAGSTER_PORT", 3000),
            dagster_allowed_hosts=tuple(h.strip() for h in _env("DAGSTER_ALLOWED_HOSTS", "").split(",") if h.strip()),
            superset_port=superset_port,
            spark_master=spark_master,
            spark_cluster=spark_cluster,
            spark_master_port=spark_master_port,
            spark_master_webui_port=_env_port("SPARK_MASTER_WEBUI_PORT", 8080),
            spark_worker_cores=_env_int("SPARK_WORKER_CORES", 2, minimum=1),
            spark_worker_memory=_env("SPARK_WORKER_MEMORY", "2g"),
            spark_remote=spark_remote,
            spark_connect_server=spark_remote == local_connect_url,
            spark_connect_port=spark_connect_port,
            spark_connect_memory=_env("SPARK_CONNECT_MEMORY", "1g"),
            spark_connect_cores=_env_int("SPARK_CONNECT_CORES", 2, minimum=1),
            superset=_env_bool("SUPERSET", True),
            superset_admin_user=_env("SUPERSET_ADMIN_USER", "admin"),
            superset_admin_password=_env("SUPERSET_ADMIN_PASSWORD", ""),
            superset_reader_password=_env("SUPERSET_READER_PASSWORD", ""),
            superset_secret_key=_env("SUPERSET_SECRET_KEY", ""),
            superset_alerts=_env_bool("SUPERSET_ALERTS", True),
            redis_port=redis_port,
            redis_url=_env("REDIS_URL", ""),
            embedded_redis=not _env("REDIS_URL", ""),
            superset_public_url=_env("SUPERSET_PUBLIC_URL", f"http://{bind_host}:{superset_port}").rstrip("/"),
            superset_alert_webhook_url=_webhook_url(_env("SUPERSET_ALERT_WEBHOOK_URL", "")),
            superset_alert_grace_s=_env_int("SUPERSET_ALERT_GRACE_S", 600, minimum=1),
            smtp_host=_env("SMTP_HOST", ""),
            smtp_port=_env_port("SMTP_PORT", 25),
            smtp_starttls=_env_bool("SMTP_STARTTLS", True),
            smtp_ssl=_env_bool("SMTP_SSL", False),
            smtp_user=_env("SMTP_USER", ""),
            smtp_password=_env("SMTP_PASSWORD", ""),
            smtp_mail_from=_env("SMTP_MAIL_FROM", "superset@localhost"),
            smtp_mail_to=_env("SMTP_MAIL_TO", ""),
            log_level=_env("LOG_LEVEL", "INFO").upper(),
        )

    def database_url_for(self, database: str) -> str:
        """The same server and credentials as DATABASE_URL, another database on it."""
        parts = urlsplit(self.database_url)
        return parts._replace(path=f"/{database}").geturl()

    def inactive(self) -> dict[str, str]:
        """Settings that do nothing with the others as they are, and why (``make config`` shows it)."""
        notes: dict[str, str] = {}
        if self.source != "replay":
            notes.update(dict.fromkeys(("REPLAY_PORT", "REPLAY_FILES", "REPLAY_SPEED", "REPLAY_RETIME"),
                                       "SOURCE=binance streams live"))
        elif not self.replay_files:
            notes.update(dict.fromkeys(("REPLAY_SPEED", "REPLAY_RETIME"),
                                       "REPLAY_FILES is empty: the synthetic market always runs in real time"))
        if not self.embedded_postgres:
            notes.update(dict.fromkeys(("PG_PORT", "PG_USER", "PG_PASSWORD", "PG_DATABASE"),
                                       "DATABASE_URL is set: no embedded PostgreSQL"))
        if not self.spark_cluster:
            notes.update(dict.fromkeys(("SPARK_MASTER_PORT", "SPARK_MASTER_WEBUI_PORT", "SPARK_WORKER_CORES",
                                        "SPARK_WORKER_MEMORY"), "SPARK_CLUSTER=0: no standalone cluster"))
        if not self.superset:
            notes.update(dict.fromkeys(("SUPERSET_PORT", "SUPERSET_PG_DB", "SUPERSET_ADMIN_USER",
                                        "SUPERSET_ADMIN_PASSWORD", "SUPERSET_READER_PASSWORD", "SUPERSET_SECRET_KEY"),
                                       "SUPERSET=0: make up leaves Superset out"))
        return notes

    def database_url_as(self, role: str, password: str, database: str | None = None) -> str:
        """The same server (and TLS options) as DATABASE_URL, logged in as ``role``; its database or another."""
        parts = urlsplit(self.database_url)
        host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else (parts.hostname or "")
        netloc = f"{quote(role, safe='')}:{quote(password, safe='')}@{host}" + (f":{parts.port}" if parts.port else "")
        return parts._replace(netloc=netloc, path=f"/{database}" if database else parts.path).geturl()

    @staticmethod
    def docs() -> list[tuple[str, str, str]]:
        """(variable, default, meaning) for every setting, in declaration order."""
        return [(f.metadata["env"], f.metadata["default"], f.metadata["doc"])
                for f in fields(PlatformSettings) if not f.metadata["doc"].startswith("(derived)")]
