"""The platform's configuration: every environment variable, its default and its meaning, declared once.

Each field of ``PlatformSettings`` is one declaration: its variable, its meaning, its default (a value, or
a function of the other settings), how its text becomes a value and what values it may take.
``from_env()`` reads them all; ``docs()`` gives the table that ``make config`` prints and the README
carries. A bad value raises ``SettingsError`` with one line naming the variable. The password defaults are
for the local development stack only; docker-compose and any real deployment pass them in.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

LOCAL_DEV_PASSWORD = "crypto-local-dev"
SEED_SYMBOLS = ("BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT")
BINANCE_WS_URL = "wss://stream.binance.com:9443"
BINANCE_REST_URL = "https://api.binance.com"
# Worker I of PRODUCER_WORKERS / CONSUMER_WORKERS serves its metrics on the service's port + I * WORKER_PORT_STRIDE,
# so the producer's (9101, 9201, …) and the consumer's (9102, 9202, …) never meet.
WORKER_PORT_STRIDE = 100
BINANCE_DATA_URL = "https://data.binance.vision"
# The PostgreSQL JDBC driver Spark reads and writes the market data with; its version is pinned here only.
POSTGRESQL_JDBC = "org.postgresql:postgresql:42.7.4"


class SettingsError(ValueError):
    """A setting has a value the platform cannot use; the message names the variable."""


# A parser turns a variable's text into its value: (variable, text) -> value, or SettingsError.
Parser = Callable[[str, str], Any]
Settings = Mapping[str, Any]  # the other settings, by field name, as a default or a derivation sees them


def text(_: str, raw: str) -> str:
    return raw


def upper(_: str, raw: str) -> str:
    return raw.upper()


def url(_: str, raw: str) -> str:
    return raw.rstrip("/")


def folder(_: str, raw: str) -> Path:
    return Path(raw).expanduser().resolve()


def comma_list(_: str, raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def integer(minimum: int | None = None, maximum: int | None = None, what: str = "") -> Parser:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{name}={raw!r} is not an integer") from None
        if maximum is not None and value > maximum:
            raise SettingsError(f"{name}={value} is not {what}")
        if minimum is not None and value < minimum:
            raise SettingsError(f"{name}={value} must be at least {minimum}")
        return value

    return parse


port = integer(minimum=1, maximum=65535, what="a TCP port (1-65535)")


def number(minimum: float = 0.0) -> Parser:
    def parse(name: str, raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(f"{name}={raw!r} is not a number") from None
        if value < minimum:
            raise SettingsError(f"{name}={value} must be at least {minimum}")
        return value

    return parse


def boolean(name: str, raw: str) -> bool:
    value = raw.lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name}={value!r} is not a boolean (use 1 or 0)")


def one_of(*choices: str) -> Parser:
    def parse(name: str, raw: str) -> str:
        value = raw.lower()
        if value not in choices:
            raise SettingsError(f"{name}={value!r} must be {' or '.join(choices)}")
        return value

    return parse


def kafka_node_count(name: str, raw: str) -> int:
    value = integer()(name, raw)
    if value not in (1, 3):
        raise SettingsError(f"{name}={value} must be 1 or 3 (a KRaft quorum of 2 survives no loss)")
    return value


def symbol_list(_: str, raw: str) -> tuple[str, ...]:
    parsed = tuple(dict.fromkeys(s.strip().upper() for s in raw.split(",") if s.strip()))
    if not parsed:
        raise SettingsError("SYMBOLS is empty; give a comma list such as BTCUSDT,ETHUSDT")
    for symbol in parsed:
        if not symbol.isalnum() or len(symbol) > 20:
            raise SettingsError(f"SYMBOLS has {symbol!r}, which is not a Binance symbol")
    return parsed


def postgres_url(name: str, raw: str) -> str:
    if urlsplit(raw).scheme not in {"postgresql", "postgres"}:
        raise SettingsError(f"{name} must start with postgresql://")
    return raw


def spark_master_url(name: str, raw: str) -> str:
    if not (raw.startswith("local") or raw.startswith("spark://")):
        raise SettingsError(f"{name}={raw!r} must be local[...] or spark://host:port")
    return raw


def spark_connect_url(name: str, raw: str) -> str:
    if raw and not raw.startswith("sc://"):
        raise SettingsError(f"{name}={raw!r} must be sc://host:port or empty")
    return raw


def webhook_url(name: str, raw: str) -> str:
    """An https:// URL, or http:// to a loopback address (the local stack's receivers); empty = none."""
    parts = urlsplit(raw)
    if not raw or (parts.scheme == "https" and parts.hostname):
        return raw
    if parts.scheme == "http" and parts.hostname in {"127.0.0.1", "localhost", "::1"}:
        return raw
    raise SettingsError(f"{name}={raw!r} must be https://, or http:// to 127.0.0.1 or localhost")


@dataclass(frozen=True)
class Setting:
    """One environment variable. ``default`` is its text when unset or empty (or a function of the other
    settings); ``shown`` is how the docs give a default that is not a literal; ``empty_is_value`` keeps a
    variable that is set but empty as the empty text instead of the default."""

    env: str
    doc: str
    default: str | Callable[[Settings], str] = ""
    parse: Parser = text
    shown: str = ""
    empty_is_value: bool = False

    def read(self, environ: Mapping[str, str], settings: Settings) -> Any:
        raw = environ.get(self.env)
        raw = raw.strip() if raw is not None else None
        if raw is None or (not raw and not self.empty_is_value):
            raw = self.default(settings) if callable(self.default) else self.default
        return self.parse(self.env, raw)

    def shown_default(self) -> str:
        return self.shown or f"`{self.default}`"


@dataclass(frozen=True)
class Derived:
    """A value the platform works out from the variables (no variable of its own, not in the docs)."""

    derive: Callable[[Mapping[str, str], Settings], Any]

    def read(self, environ: Mapping[str, str], settings: Settings) -> Any:
        return self.derive(environ, settings)


def setting(env: str, doc: str, default: str | Callable[[Settings], str] = "", parse: Parser = text, *,
            shown: str = "", secret: bool = False, empty_is_value: bool = False) -> Any:
    """A field of ``PlatformSettings`` read from ``env``; a secret is left out of ``repr`` and run records."""
    return field(repr=not secret,
                 metadata={"setting": Setting(env, doc, default, parse, shown, empty_is_value)})


def derived(derive: Callable[[Mapping[str, str], Settings], Any]) -> Any:
    return field(metadata={"setting": Derived(derive)})


class _Resolver(dict):
    """The settings by field name, each read on first use, so a default may name any other setting."""

    def __init__(self, specs: dict[str, Setting | Derived], environ: Mapping[str, str]) -> None:
        super().__init__()
        self.specs, self.environ = specs, environ

    def __missing__(self, name: str) -> Any:
        value = self[name] = self.specs[name].read(self.environ, self)
        return value


def _unset(variable: str) -> Callable[[Mapping[str, str], Settings], bool]:
    return lambda environ, _: not environ.get(variable, "").strip()


def _local_connect_url(s: Settings) -> str:
    """PySpark sends SECURE=1's token without TLS to ``localhost`` only (gRPC's local credentials)."""
    host = "localhost" if s["secure"] and s["bind_host"] in ("127.0.0.1", "localhost", "::1") else s["bind_host"]
    return f"sc://{host}:{s['spark_connect_port']}"


def _database_url(s: Settings) -> str:
    """The embedded server as ``PG_USER``; with SECURE=1 over TLS only, its certificate checked against the CA."""
    tls = f"?sslmode=verify-full&sslrootcert={quote(str(s['tls_ca_cert']))}" if s["secure"] else ""
    return (f"postgresql://{quote(s['pg_user'], safe='')}:{quote(s['pg_password'], safe='')}"
            f"@{s['bind_host']}:{s['pg_port']}/{s['pg_database']}{tls}")


def _stream_url(s: Settings) -> str:
    return f"ws://{s['bind_host']}:{s['replay_port']}" if s["source"] == "replay" else BINANCE_WS_URL


def _rest_url(s: Settings) -> str:
    return f"http://{s['bind_host']}:{s['replay_port']}" if s["source"] == "replay" else BINANCE_REST_URL


def _spark_master(s: Settings) -> str:
    return f"spark://{s['bind_host']}:{s['spark_master_port']}" if s["spark_cluster"] else "local[*]"


GENERATED = "generated into `STATE_DIR/secrets/`"


@dataclass(frozen=True)
class PlatformSettings:
    """All settings of the platform, in the order ``make config`` and the README list them."""

    state_dir: Path = setting("STATE_DIR", "data, logs and pids of the local stack", ".platform", folder)
    bind_host: str = setting("BIND_HOST", "address every local server listens on", "127.0.0.1")
    secure: bool = setting(
        "SECURE", "1 = TLS from the platform's own CA (`STATE_DIR/tls/ca.crt`, made on first start): the embedded "
        "PostgreSQL takes `hostssl` connections only (clients: `sslmode=verify-full`), Kafka SASL_SSL with SCRAM "
        "users and ACLs, Superset and the Dagster UI HTTPS only (Dagster's with a login), Spark Connect a token",
        "0", boolean)
    tls_ca_cert: Path = derived(lambda _, s: s["state_dir"] / "tls" / "ca.crt")
    # The platform's own web servers (Superset, the Dagster UI) speak HTTPS only with SECURE=1.
    web_scheme: str = derived(lambda _, s: "https" if s["secure"] else "http")
    kafka_brokers: int = setting(
        "KAFKA_BROKERS", "KRaft nodes (broker and controller each) the local stack runs: 1, or 3 to survive losing "
        "one; node I listens on `KAFKA_PORT + I - 1` and `KAFKA_CONTROLLER_PORT + I - 1`", "1", kafka_node_count)
    kafka_port: int = setting("KAFKA_PORT", "Kafka listener (of the first node)", "9092", port)
    kafka_controller_port: int = setting("KAFKA_CONTROLLER_PORT", "KRaft controller listener (of the first node)",
                                         lambda s: str(s["kafka_port"] + s["kafka_brokers"]), port,
                                         shown="`KAFKA_PORT + KAFKA_BROKERS` (9093)")
    kafka_bootstrap_servers: str = setting(
        "KAFKA_BOOTSTRAP_SERVERS", "where clients find Kafka; with `KAFKA_BROKERS=3`, one address per node, "
        "in node order (each node advertises its own)",
        lambda s: ",".join(f"{s['bind_host']}:{s['kafka_port'] + node}" for node in range(s["kafka_brokers"])),
        shown="`BIND_HOST:KAFKA_PORT`, one per node")
    kafka_replication_factor: int = setting(
        "KAFKA_REPLICATION_FACTOR", "copies of every partition of the trades topic (and Kafka's own topics)",
        lambda s: str(s["kafka_brokers"]), integer(minimum=1), shown="`KAFKA_BROKERS`")
    kafka_min_insync_replicas: int = setting(
        "KAFKA_MIN_INSYNC_REPLICAS", "copies a write must reach before the broker acknowledges it (the producer "
        "sends with `acks=all`)", lambda s: str(max(1, s["kafka_replication_factor"] - 1)), integer(minimum=1),
        shown="`KAFKA_REPLICATION_FACTOR - 1`, at least 1")
    kafka_topic: str = setting("KAFKA_TOPIC", "the trades topic", "binance-prices")
    kafka_partitions: int = setting("KAFKA_PARTITIONS", "its partitions", "3", integer(minimum=1))
    kafka_retention_hours: int = setting("KAFKA_RETENTION_HOURS", "how long Kafka keeps messages", "168",
                                         integer(minimum=1))
    kafka_group_join_delay_ms: int = setting(
        "KAFKA_GROUP_JOIN_DELAY_MS", "how long a consumer group without members waits for more before its first "
        "assignment (Kafka's `group.initial.rebalance.delay.ms`), so that consumer workers started together are "
        "assigned once instead of rebalancing after the first has begun reading", "3000", integer(minimum=0))
    kafka_heap: str = setting("KAFKA_HEAP", "JVM heap of the local broker", "512m")
    pg_port: int = setting("PG_PORT", "embedded PostgreSQL's port", "5432", port)
    pg_user: str = setting("PG_USER", "administrator: runs migrations and creates the run-time roles; no service "
                           "uses it", "crypto")
    pg_password: str = setting("PG_PASSWORD", "its password", LOCAL_DEV_PASSWORD, shown="local-only default",
                               secret=True)
    pg_database: str = setting("PG_DATABASE", "market-data database (schema `stock`)", "crypto")
    database_url: str = setting("DATABASE_URL", "a PostgreSQL of yours; then the embedded one is not started",
                                _database_url, postgres_url, shown="built from `PG_*`", secret=True)
    embedded_postgres: bool = derived(_unset("DATABASE_URL"))
    dagster_database: str = setting("DAGSTER_PG_DB", "database of Dagster's runs, events and sensor ticks", "dagster")
    superset_database: str = setting("SUPERSET_PG_DB", "database of Superset's metadata", "superset")
    ingest_writer_password: str = setting(
        "INGEST_WRITER_PASSWORD", "password of `ingest_writer`, the consumer's role (appends trades and dead "
        "letters)", shown=GENERATED, secret=True)
    candle_writer_password: str = setting(
        "CANDLE_WRITER_PASSWORD", "password of `candle_writer`, the candle runs' role (reads trades, writes "
        "candles)", shown=GENERATED, secret=True)
    dagster_pg_password: str = setting(
        "DAGSTER_PG_PASSWORD", "password of `dagster`, owner of Dagster's database only", shown=GENERATED,
        secret=True)
    superset_meta_password: str = setting(
        "SUPERSET_META_PASSWORD", "password of `superset_meta`, owner of Superset's metadata database only",
        shown=GENERATED, secret=True)
    backup_dir: Path = setting(
        "BACKUP_DIR", "base backups (`make backup`) and the continuous WAL archive of the embedded PostgreSQL; "
        "put it on another disk to survive the loss of `STATE_DIR`'s", lambda s: str(s["state_dir"] / "backups"),
        folder, shown="`STATE_DIR/backups`")
    backup_keep: int = setting("BACKUP_KEEP", "base backups `make backup` keeps; older ones and the WAL only they "
                               "needed are deleted", "7", integer(minimum=1))
    raw_retention_days: int = setting(
        "RAW_RETENTION_DAYS", "days of raw trades `stock.real_time_prices` keeps (one partition per UTC day): "
        "older days are dropped whole at `make up` and hourly by the consumer, each at the earliest this many "
        "days after its partition was made (imported history too); the candles stay", "30", integer(minimum=1))
    # Set but empty is a mistake (``SYMBOLS= make up``), not a request for the defaults.
    symbols: tuple[str, ...] = setting("SYMBOLS", "symbols to stream", ",".join(SEED_SYMBOLS), symbol_list,
                                       empty_is_value=True)
    source: str = setting("SOURCE", "`replay` (built-in server) or `binance` (live)", "replay",
                          one_of("replay", "binance"))
    binance_ws_url: str = setting("BINANCE_WS_URL", "market-stream base URL", _stream_url, url,
                                  shown="per `SOURCE`")
    binance_rest_url: str = setting("BINANCE_REST_URL", "REST base URL for gap backfill", _rest_url, url,
                                    shown="per `SOURCE`")
    binance_data_url: str = setting("BINANCE_DATA_URL", "Binance's public data files, for `make import` with "
                                    "`--download`", BINANCE_DATA_URL, url)
    replay_port: int = setting("REPLAY_PORT", "replay server's port (WebSocket and REST)", "9443", port)
    replay_files: tuple[str, ...] = setting("REPLAY_FILES", "Binance files to replay", "", comma_list,
                                            shown="empty (synthetic market)")
    replay_speed: float = setting("REPLAY_SPEED", "speed of a file replay: 1 = real time, 0 = as fast as possible "
                                  "(the synthetic market always runs in real time)", "1", number())
    replay_retime: bool = setting("REPLAY_RETIME", "1 = shift file times to now, 0 = keep them (files only)", "1",
                                  boolean)
    consumer_group: str = setting("CONSUMER_GROUP", "consumer group of the PostgreSQL writer",
                                  "real-time-prices-writer")
    consumer_batch_size: int = setting("CONSUMER_BATCH_SIZE", "most messages written in one transaction", "5000",
                                       integer(minimum=1))
    consumer_check_crcs: bool = setting(
        "CONSUMER_CHECK_CRCS", "1 = kafka-python re-checks record CRCs in Python (4× slower; the broker checks them "
        "on produce, TCP on the wire, and every message is validated field by field)", "0", boolean)
    dead_letter_max_bytes: int = setting(
        "DEAD_LETTER_MAX_BYTES", "bytes of a rejected payload stored in `stock.rejected_messages`; its full length "
        "(`payload_bytes`) and SHA-256 (`payload_sha256`) are kept beside", "65536", integer(minimum=0))
    consumer_instance_id: str = setting(
        "CONSUMER_INSTANCE_ID", "static group membership (`group.instance.id`), unique per consumer process: a "
        "restarted consumer takes its partitions back at once; empty = dynamic membership (a restart waits out the "
        "dead member's 45 s session)", shown="`consumer-1` under `make up`, else empty")
    consumer_workers: int = setting(
        "CONSUMER_WORKERS", "consumer processes in the group (at most `KAFKA_PARTITIONS`); worker I serves metrics "
        "on `CONSUMER_METRICS_PORT` + 100·I", "1", integer(minimum=1))
    consumer_max_lateness_s: int = setting(
        "CONSUMER_MAX_LATENESS_S", "A trade older than its symbol's newest stored trade by more is dead-lettered as "
        "late", "300", integer(minimum=0))
    consumer_max_id_distance: int = setting(
        "CONSUMER_MAX_ID_DISTANCE", "A trade id farther from its symbol's newest stored id is dead-lettered",
        "100000000", integer(minimum=1))
    producer_stall_timeout_s: float = setting(
        "PRODUCER_STALL_TIMEOUT_S", "reconnect when no frame (data or ping) came for this long", "60",
        number(minimum=0.1))
    producer_workers: int = setting(
        "PRODUCER_WORKERS", "producer processes, `SYMBOLS` shared out among them (at most one per symbol); worker I "
        "serves metrics on `PRODUCER_METRICS_PORT` + 100·I", "1", integer(minimum=1))
    producer_metrics_port: int = setting("PRODUCER_METRICS_PORT", "producer's Prometheus endpoint", "9101", port)
    consumer_metrics_port: int = setting("CONSUMER_METRICS_PORT", "consumer's Prometheus endpoint", "9102", port)
    dagster_port: int = setting("DAGSTER_PORT", "Dagster UI", "3000", port)
    dagster_allowed_hosts: tuple[str, ...] = setting(
        "DAGSTER_ALLOWED_HOSTS", "extra `host:port` names the Dagster UI answers (other `Host` headers and foreign "
        "`Origin`s are refused)", "", comma_list, shown="`BIND_HOST`, `localhost`, `127.0.0.1` at `DAGSTER_PORT`")
    spark_master: str = setting("SPARK_MASTER", "`local[*]` or `spark://host:7077`", _spark_master, spark_master_url,
                                shown="`local[*]` (the local cluster's with `SPARK_CLUSTER=1`)")
    spark_cluster: bool = setting("SPARK_CLUSTER", "1 = `make up` starts a standalone Spark master and worker", "0",
                                  boolean)
    spark_jdbc_driver: str = setting(
        "SPARK_JDBC_DRIVER", "PostgreSQL's JDBC driver for an in-process SparkSession: a `.jar` path, or a Maven "
        "coordinate that Spark fetches once into `~/.ivy2` (`spark.jars.packages`)", POSTGRESQL_JDBC,
        shown=f"`{POSTGRESQL_JDBC}` (the local stack gives its cached jar)")
    spark_master_port: int = setting("SPARK_MASTER_PORT", "standalone master", "7077", port)
    spark_master_webui_port: int = setting("SPARK_MASTER_WEBUI_PORT", "standalone master's UI", "8080", port)
    spark_worker_cores: int = setting("SPARK_WORKER_CORES", "standalone worker's cores", "2", integer(minimum=1))
    spark_worker_memory: str = setting("SPARK_WORKER_MEMORY", "standalone worker's memory", "2g")
    # Unset = the local server; set but empty = no Connect at all (the in-process path).
    spark_remote: str = setting(
        "SPARK_REMOTE", "where candle runs get their SparkSession; empty (`SPARK_REMOTE=`) = an in-process "
        "SparkSession on `SPARK_MASTER`, a JVM started per run", _local_connect_url, spark_connect_url,
        shown="`sc://BIND_HOST:SPARK_CONNECT_PORT` (the local Spark Connect server)", empty_is_value=True)
    spark_connect_server: bool = derived(lambda _, s: s["spark_remote"] == _local_connect_url(s))
    spark_connect_port: int = setting("SPARK_CONNECT_PORT", "the local Spark Connect server's gRPC port", "15002",
                                      port)
    spark_connect_memory: str = setting("SPARK_CONNECT_MEMORY", "its driver memory", "1g")
    spark_connect_cores: int = setting(
        "SPARK_CONNECT_CORES", "its cores: `local[N]`, or `spark.cores.max` on the standalone cluster "
        "(`SPARK_CLUSTER=1`)", "2", integer(minimum=1))
    superset: bool = setting("SUPERSET", "0 = `make up` leaves Superset out", "1", boolean)
    superset_port: int = setting("SUPERSET_PORT", "Superset", "8088", port)
    superset_admin_user: str = setting("SUPERSET_ADMIN_USER", "Superset administrator", "admin")
    superset_admin_password: str = setting("SUPERSET_ADMIN_PASSWORD", "its password",
                                           shown="generated into `STATE_DIR/superset/`", secret=True)
    superset_reader_password: str = setting(
        "SUPERSET_READER_PASSWORD", "password of `superset_reader`, the read-only role Superset queries with",
        shown=GENERATED, secret=True)
    superset_secret_key: str = setting("SUPERSET_SECRET_KEY", "Superset's `SECRET_KEY`", shown="generated",
                                       secret=True)
    superset_alerts: bool = setting(
        "SUPERSET_ALERTS", "1 = `make up` runs Superset's alerts & reports: Redis, a Celery worker and beat", "1",
        boolean)
    redis_port: int = setting("REDIS_PORT", "local Redis (Celery broker of the alerts)", "6379", port)
    redis_host: str = setting("REDIS_HOST", "where the alerts' clients reach the platform's Redis",
                              lambda s: s["bind_host"], shown="`BIND_HOST`")
    redis_url: str = setting("REDIS_URL", "a Redis of yours; then the local one is not started",
                             shown="built from `REDIS_PORT`", secret=True)
    embedded_redis: bool = derived(_unset("REDIS_URL"))
    superset_public_url: str = setting(
        "SUPERSET_PUBLIC_URL", "Superset's address in alert links; the alerts' worker fetches chart data there",
        lambda s: f"{s['web_scheme']}://{s['bind_host']}:{s['superset_port']}", url,
        shown="`http://BIND_HOST:SUPERSET_PORT` (`https://` with `SECURE=1`)")
    superset_alert_webhook_url: str = setting(
        "SUPERSET_ALERT_WEBHOOK_URL", "alerts and reports POST here (`https://`, or `http://` to "
        "127.0.0.1/localhost)", "", webhook_url, shown="none", secret=True)
    superset_alert_grace_s: int = setting("SUPERSET_ALERT_GRACE_S", "an alert that fired stays quiet this long",
                                          "600", integer(minimum=1))
    smtp_host: str = setting("SMTP_HOST", "SMTP server for alert and report e-mails (with `SMTP_MAIL_TO`)",
                             shown="none")
    smtp_port: int = setting("SMTP_PORT", "its port", "25", port)
    smtp_starttls: bool = setting("SMTP_STARTTLS", "1 = STARTTLS before sending", "1", boolean)
    smtp_ssl: bool = setting("SMTP_SSL", "1 = SMTP over TLS from the first byte", "0", boolean)
    smtp_user: str = setting("SMTP_USER", "SMTP login (none = no login)", shown="none")
    smtp_password: str = setting("SMTP_PASSWORD", "its password", shown="none", secret=True)
    smtp_mail_from: str = setting("SMTP_MAIL_FROM", "sender of alert e-mails", "superset@localhost")
    smtp_mail_to: str = setting("SMTP_MAIL_TO", "recipients of alert and report e-mails (comma list)", shown="none")
    log_level: str = setting("LOG_LEVEL", "log level of the services", "INFO", upper)

    def __post_init__(self) -> None:
        self._check_kafka_cluster()
        if self.producer_workers > len(self.symbols):
            raise SettingsError(f"PRODUCER_WORKERS={self.producer_workers} exceeds the {len(self.symbols)} SYMBOLS "
                                "(a symbol is never in two workers)")
        if self.consumer_workers > self.kafka_partitions:
            raise SettingsError(f"CONSUMER_WORKERS={self.consumer_workers} exceeds KAFKA_PARTITIONS="
                                f"{self.kafka_partitions} (a partition is read by one consumer of the group)")

    def _check_kafka_cluster(self) -> None:
        nodes = self.kafka_brokers
        if self.kafka_replication_factor > nodes:
            raise SettingsError(f"KAFKA_REPLICATION_FACTOR={self.kafka_replication_factor} exceeds KAFKA_BROKERS="
                                f"{nodes} (a broker holds one copy of a partition)")
        if self.kafka_min_insync_replicas > self.kafka_replication_factor:
            raise SettingsError(f"KAFKA_MIN_INSYNC_REPLICAS={self.kafka_min_insync_replicas} exceeds KAFKA_"
                                f"REPLICATION_FACTOR={self.kafka_replication_factor} (no write would be acknowledged)")
        clients = range(self.kafka_port, self.kafka_port + nodes)
        controllers = range(self.kafka_controller_port, self.kafka_controller_port + nodes)
        if set(clients) & set(controllers):
            raise SettingsError(f"KAFKA_CONTROLLER_PORT={self.kafka_controller_port} overlaps the {nodes} client "
                                f"ports from KAFKA_PORT={self.kafka_port} (node I uses each port + I - 1)")
        if max(clients[-1], controllers[-1]) > 65535:
            raise SettingsError("KAFKA_PORT or KAFKA_CONTROLLER_PORT + KAFKA_BROKERS - 1 is past 65535")
        if nodes > 1 and len(self.kafka_bootstrap_servers.split(",")) != nodes:
            raise SettingsError(f"KAFKA_BOOTSTRAP_SERVERS={self.kafka_bootstrap_servers!r} must name one address per "
                                f"node with KAFKA_BROKERS={nodes}, in node order")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PlatformSettings:
        """Every setting from ``environ`` (default: the process's environment)."""
        specs = {item.name: item.metadata["setting"] for item in fields(cls)}
        resolved = _Resolver(specs, os.environ if environ is None else environ)
        return cls(**{name: resolved[name] for name in specs})

    @staticmethod
    def variables() -> list[tuple[str, Setting, bool]]:
        """(field name, its declaration, whether it is a secret) of every variable, in declaration order."""
        return [(item.name, item.metadata["setting"], not item.repr) for item in fields(PlatformSettings)
                if isinstance(item.metadata["setting"], Setting)]

    @staticmethod
    def docs() -> list[tuple[str, str, str]]:
        """(variable, default, meaning) of every variable, in declaration order, as Markdown."""
        return [(spec.env, spec.shown_default(), spec.doc) for _, spec, _ in PlatformSettings.variables()]

    @staticmethod
    def docs_table() -> str:
        """The README's settings table (``make config MARKDOWN=1`` prints it)."""
        rows = [f"| `{variable}` | {default} | {meaning} |" for variable, default, meaning in PlatformSettings.docs()]
        return "\n".join(["| variable | default | meaning |", "|---|---|---|", *rows])

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
        return url_as(self.database_url, role, password, database)


def url_as(database_url: str, role: str = "", password: str = "", database: str | None = None) -> str:
    """``database_url``'s server and options, logged in as ``role`` (no login at all when empty), to its
    database or ``database``."""
    parts = urlsplit(database_url)
    host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else (parts.hostname or "")
    login = f"{quote(role, safe='')}:{quote(password, safe='')}@" if role else ""
    netloc = login + host + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc, path=f"/{database}" if database else parts.path).geturl()
