"""What ``make status`` shows on one screen: services, ingestion, consumer lag, candles, Dagster, URLs."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg2
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from crypto_platform.credentials import DAGSTER_UI_SECRET, DAGSTER_UI_USER, KAFKA_ADMIN, kafka_security
from crypto_platform.settings import PlatformSettings
from local_stack.backup_plan import describe_backups
from local_stack.backups import BackupStore, archiver_state
from local_stack.dagster_instance import dagster_instance
from local_stack.dagster_web import dagster_url
from local_stack.processes import StackError, describe_processes
from local_stack.spark_cluster import master_ui_url
from local_stack.stack import LocalStack
from local_stack.superset import superset_url

PROBE_TIMEOUT_S = 3


@dataclass
class ServiceLine:
    name: str
    state: str
    port: str
    pid: str


@dataclass
class PlatformStatus:
    services: list[ServiceLine]
    leftovers: dict[str, str] = field(default_factory=dict)
    ingestion: dict[str, str] = field(default_factory=dict)
    lag: dict[int, int] | None = None
    last_run: str | None = None
    backups: str | None = None
    urls: dict[str, str] = field(default_factory=dict)


def service_lines(stack: LocalStack) -> list[ServiceLine]:
    s = stack.settings
    lines = [ServiceLine("postgres", "up" if not s.embedded_postgres or stack.postgres.is_running() else "down",
                         str(s.pg_port) if s.embedded_postgres else "external", str(stack.postgres.pid() or "-")),
             *(ServiceLine(node.name, "up" if node.is_running() else "down", str(node.port), str(node.pid() or "-"))
               for node in stack.kafka.nodes)]
    for service in stack.services():
        pid = service.pid()
        lines.append(ServiceLine(service.name, "up" if pid else "down", str(service.port or "-"), str(pid or "-")))
    return lines


def leftover_processes(stack: LocalStack) -> dict[str, str]:
    """Services that are down while processes of their earlier run still live (``make up`` stops those)."""
    return {service.name: describe_processes(leftovers)
            for service in stack.services() if (leftovers := service.leftovers())}


def ingestion_figures(settings: PlatformSettings) -> dict[str, str]:
    """Row counts, newest trade age, the last minute's ingest rate and dead letters, from PostgreSQL."""
    try:
        connection = psycopg2.connect(settings.database_url, connect_timeout=PROBE_TIMEOUT_S)
    except psycopg2.Error:
        return {"database": "not reachable"}
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT (SELECT count(*) FROM stock.real_time_prices),"
                " (SELECT count(*) FROM stock.real_time_prices WHERE created_at > now() - interval '60 seconds'),"
                " extract(epoch FROM now() - stock.newest_trade_time()),"
                " (SELECT count(*) FROM stock.aggregated_prices_1min),"
                " (SELECT count(*) FROM stock.aggregated_prices_5min),"
                " (SELECT max(window_end) FILTER (WHERE is_final) FROM stock.aggregated_prices_1min),"
                " (SELECT extract(epoch FROM now() - max(window_end) FILTER (WHERE is_final))"
                "  FROM stock.aggregated_prices_1min),"
                " (SELECT count(*) FROM stock.latest_prices),"
                " (SELECT count(*) FROM stock.rejected_messages),"
                " (SELECT count(*) FROM stock.rejected_messages WHERE received_at > now() - interval '1 hour')"
            )
            (trades, last_minute, newest_age, c1, c5, newest_final, final_age, latest, dead,
             dead_hour) = cursor.fetchone()
            close_to_final = finality_delays(cursor)
    except psycopg2.Error as exc:
        return {"database": f"error: {str(exc).strip().splitlines()[0]}"}
    finally:
        connection.close()
    return {
        "trades": f"{trades} rows, {last_minute / 60:.1f}/s over the last minute",
        "newest trade": "none yet" if newest_age is None else f"{float(newest_age):.1f} s old",
        "newest candle": ("no final 1-min candle yet" if final_age is None
                          else f"final 1-min candle ending {float(final_age):.1f} s ago"),
        "candles": f"1min={c1} 5min={c5}, newest final 1-min window ends {newest_final or '-'}",
        "close → final": close_to_final,
        "latest_prices": f"{latest} symbols",
        "dead letters": f"{dead} in all, {dead_hour} in the last hour",
    }


FINALITY_WINDOWS = 5


def finality_delays(cursor) -> str:
    """Window close → final, the newest one-minute windows: the delay until every symbol's candle of the
    window was final (``finalized_at``, stamped by sql/006), newest first."""
    cursor.execute(
        "SELECT to_char(window_end AT TIME ZONE 'UTC', 'HH24:MI'),"
        " extract(epoch FROM max(finalized_at) - window_end)::float"
        " FROM stock.aggregated_prices_1min WHERE window_start > now() - interval '1 hour'"
        " GROUP BY window_end HAVING bool_and(is_final) ORDER BY window_end DESC LIMIT %s", (FINALITY_WINDOWS,))
    rows = cursor.fetchall()
    if not rows:
        return "no final window in the last hour"
    return ", ".join(f"{delay:.1f} s ({end})" for end, delay in rows) + " (window end, UTC)"


def consumer_lag(settings: PlatformSettings) -> dict[int, int] | None:
    """Messages not yet committed by the consumer group, per partition of the trades topic.

    The committed offsets are read first: the end offsets read after them can only be further on, so
    the difference is never negative however fast the consumer commits meanwhile."""
    try:
        consumer = KafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap_servers, group_id=settings.consumer_group,
            enable_auto_commit=False, **kafka_security(settings, KAFKA_ADMIN),
        )
    except KafkaError:
        return None
    try:
        partitions = consumer.partitions_for_topic(settings.kafka_topic) or set()
        tps = [TopicPartition(settings.kafka_topic, p) for p in sorted(partitions)]
        committed = {tp: consumer.committed(tp) or 0 for tp in tps}
        ends = consumer.end_offsets(tps)
        return {tp.partition: ends[tp] - committed[tp] for tp in tps}
    except KafkaError:
        return None
    finally:
        consumer.close()


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    status: str
    checks: tuple[tuple[str, bool], ...]

    def describe(self) -> str:
        failed = [name for name, passed in self.checks if not passed]
        checks = f"{len(self.checks) - len(failed)}/{len(self.checks)} checks passed"
        failures = f"; failed: {', '.join(failed)}" if failed else ""
        return f"{self.status.lower()} (run {self.run_id[:8]}), {checks}{failures}"


def dagster_runs(settings: PlatformSettings, limit: int | None = 1, sensor: str | None = None) -> list[RunSummary]:
    """The newest runs with their asset-check results, read from Dagster's storage in PostgreSQL."""
    from dagster import DagsterEventType, RunsFilter

    with dagster_instance(settings) as instance:
        filters = RunsFilter(tags={"dagster/sensor_name": sensor}) if sensor else None
        summaries = []
        for run in instance.get_runs(filters=filters, limit=limit):
            records = instance.get_records_for_run(run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION).records
            checks = tuple((r.event_log_entry.dagster_event.event_specific_data.check_name,
                            r.event_log_entry.dagster_event.event_specific_data.passed) for r in records)
            summaries.append(RunSummary(run.run_id, run.status.value, checks))
        return summaries


def last_dagster_run(settings: PlatformSettings) -> str | None:
    try:
        runs = dagster_runs(settings)
    except Exception as exc:  # noqa: BLE001 - status must show the other figures whatever Dagster says
        return f"unknown ({type(exc).__name__})"
    return runs[0].describe() if runs else "no run yet"


def backups_line(settings: PlatformSettings, postgres_up: bool) -> str:
    try:
        backups = BackupStore(settings).backups()
    except StackError as exc:
        return str(exc)
    return describe_backups(backups, archiver_state(settings) if postgres_up else None, datetime.now(UTC))


def collect(stack: LocalStack) -> PlatformStatus:
    s = stack.settings
    lines = service_lines(stack)
    running = {line.name for line in lines if line.state == "up"}
    status = PlatformStatus(services=lines, leftovers=leftover_processes(stack), ingestion=ingestion_figures(s))
    if "kafka" in running:
        status.lag = consumer_lag(s)
    if "dagster" in running:
        status.last_run = last_dagster_run(s)
    status.backups = backups_line(s, "postgres" in running)
    status.urls = {name: url for name, url in (
        ("dagster", dagster_url(s) + (f" (user {DAGSTER_UI_USER}, password in "
                                      f"{s.state_dir / 'secrets' / DAGSTER_UI_SECRET})" if s.secure else "")),
        ("superset", superset_url(s)),
        ("spark", master_ui_url(s) + (" (with the platform's client certificate)" if s.secure else "")),
    ) if name in running or f"{name}-master" in running}
    return status


def render(status: PlatformStatus) -> str:
    out = [f"{'SERVICE':<16}{'STATE':<8}{'PORT':<10}PID"]
    out += [f"{line.name:<16}{line.state:<8}{line.port:<10}{line.pid}" for line in status.services]
    out += [f"{'left over:':<16}{name}: {processes} (make up or make down stops them)"
            for name, processes in status.leftovers.items()]
    out += [f"{name + ':':<16}{value}" for name, value in status.ingestion.items()]
    if status.lag is not None:
        total = sum(status.lag.values())
        out.append(f"{'consumer lag:':<16}{total} ({', '.join(f'p{p}={n}' for p, n in status.lag.items())})")
    if status.last_run is not None:
        out.append(f"{'last run:':<16}{status.last_run}")
    if status.backups is not None:
        out.append(f"{'backups:':<16}{status.backups}")
    out += [f"{name + ':':<16}{url}" for name, url in status.urls.items()]
    return "\n".join(out)
