"""Superset's alerts: what the Celery worker and beat cost when idle, and condition true → notification latency.

``python -m bench.alerts [--samples 5] [--idle-s 180]`` runs a stack of its own (PostgreSQL, Kafka, Redis,
Superset, its worker and beat on free ports in a temporary folder; no producer, so the *Dead letters* alert is
the one measured) with the webhook receiver and SMTP server of ``crypto_assets_tests.alert_inbox``:

- warm-up: until the worker has evaluated every alert twice (its imports and first queries done);
- memory: resident (RSS), proportional (PSS: pages shared with other processes, Superset's web server among
  them, split between them) and unique (USS) memory of the worker and the beat, and of their log wrappers
  apart (every service of the stack has one);
- CPU: their user+system seconds over ``--idle-s`` idle seconds (the minute ticks included) as % of one core;
- latency: a dead letter is inserted at a random second of the minute; the seconds until the webhook POST and
  the e-mail of *Dead letters* arrive are one sample. Then the row is deleted and the bench waits for the alert's
  "Not triggered" (grace period 1 s here) before the next sample; memory is read again after the last one.

Progress goes to stderr as one-line logs; the figures, with the machine's load average, to stdout at the end.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime

import psutil
import psycopg2

from bench.freshness import percentile
from crypto_assets_tests.alert_inbox import Inbox, Received, running_inbox
from crypto_platform.logs import configure_logging
from crypto_platform.settings import PlatformSettings
from local_stack.ephemeral import ephemeral_stack, process_environment
from local_stack.processes import StackError
from local_stack.redis_server import redis_service
from local_stack.service import ManagedService
from local_stack.superset import celery_services, superset_service

ALERT = "Dead letters"
ALERTS = ("Feed stalled", "Candles late", ALERT)
WARMUP_TICKS = 2
WARMUP_TIMEOUT_S = 600
SAMPLE_TIMEOUT_S = 300
QUIET_TIMEOUT_S = 240
PROGRESS_EVERY_S = 60

log = logging.getLogger("bench.alerts")


class BenchError(Exception):
    """A service died or a step did not happen in time: one line, the run stops."""


class Timeout(BenchError):
    """A step did not happen in time (a latency sample records it as missed and the run goes on)."""


def _load() -> str:
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


def _execute(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    with closing(psycopg2.connect(url, connect_timeout=10)) as connection, connection, connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def _holds(predicate: Callable[[], bool]) -> bool:
    """``predicate()``, False while the database does not answer (a loaded machine), logged."""
    try:
        return predicate()
    except psycopg2.OperationalError as exc:
        log.warning("database did not answer, trying again", extra={"error": str(exc).strip()})
        return False


def _wait(what: str, predicate: Callable[[], bool], timeout_s: float, alive: Callable[[], None]) -> float:
    """Seconds until ``predicate`` holds, checking every half second that the services still run."""
    started = time.monotonic()
    next_progress = started + PROGRESS_EVERY_S
    while not _holds(predicate):
        alive()
        now = time.monotonic()
        if now - started > timeout_s:
            raise Timeout(f"no {what} within {timeout_s:.0f} s")
        if now >= next_progress:
            log.info("waiting", extra={"what": what, "seconds": f"{now - started:.0f}", "load": _load()})
            next_progress += PROGRESS_EVERY_S
        time.sleep(0.5)
    return time.monotonic() - started


@dataclass
class Memory:
    rss_mb: float
    pss_mb: float
    uss_mb: float

    def __str__(self) -> str:
        return f"RSS {self.rss_mb:.0f} MB, PSS {self.pss_mb:.0f} MB, USS {self.uss_mb:.0f} MB"


def _memory(processes: list[psutil.Process]) -> Memory:
    infos = [p.memory_full_info() for p in processes]
    return Memory(*(sum(getattr(i, name) for i in infos) / 2**20 for name in ("rss", "pss", "uss")))


class Alerting:
    """The worker and beat under measurement, the metadata database where Superset logs each evaluation."""

    def __init__(self, settings: PlatformSettings, worker: ManagedService, beat: ManagedService) -> None:
        self.settings, self.services = settings, (worker, beat)
        self.metadata_url = settings.database_url_for(settings.superset_database)

    def alive(self) -> None:
        for service in self.services:
            if not service.is_running():
                log_text = service.log_path.read_text(errors="replace") if service.log_path.exists() else ""
                last = log_text.strip().splitlines()[-1:]
                raise BenchError(f"{service.name} exited; its last line: {last[0] if last else '(none)'}")

    def processes(self) -> tuple[dict[str, psutil.Process], list[psutil.Process]]:
        """The worker's and beat's own processes by service name, and their log wrappers (each one's parent)."""
        self.alive()
        own = {service.name: psutil.Process(service.pid()) for service in self.services}
        return own, [p.parent() for p in own.values() if p.parent() is not None]

    def evaluations(self, alert: str, state: str | None = None, since: datetime | None = None) -> int:
        rows = _execute(self.metadata_url, """
            SELECT count(*) FROM report_execution_log log JOIN report_schedule s ON s.id = log.report_schedule_id
            WHERE s.name = %s AND log.state <> 'Working' AND (%s IS NULL OR log.state = %s)
              AND (%s IS NULL OR log.end_dttm >= %s)""", (alert, state, state, since, since))
        return rows[0][0]


def _utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)  # Superset's log times are naive UTC


def _each_rss(processes: dict[str, psutil.Process]) -> str:
    return ", ".join(f"{name} {p.memory_info().rss / 2**20:.0f} MB" for name, p in processes.items())


def measure_idle(alerting: Alerting, idle_s: int) -> tuple[Memory, str, Memory, float]:
    """Memory of worker+beat (and each one's RSS) and of their wrappers, and their CPU % over ``idle_s``."""
    own, wrappers = alerting.processes()
    memory, each, wrapper_memory = _memory(list(own.values())), _each_rss(own), _memory(wrappers)
    log.info("memory after warm-up", extra={"celery": str(memory), "rss": each, "wrappers": str(wrapper_memory)})
    before = sum(sum(p.cpu_times()[:2]) for p in own.values())
    deadline = time.monotonic() + idle_s
    while time.monotonic() < deadline:
        time.sleep(min(PROGRESS_EVERY_S, max(0.0, deadline - time.monotonic())))
        alerting.alive()
        log.info("idle", extra={"remaining_s": f"{max(0.0, deadline - time.monotonic()):.0f}", "load": _load()})
    cpu = 100 * (sum(sum(p.cpu_times()[:2]) for p in own.values()) - before) / idle_s
    return memory, each, wrapper_memory, cpu


def _arrival(what: str, arrived: Callable[[], list[Received]], since: float, alerting: Alerting) -> float | None:
    """Seconds from ``since`` to the first notification ``arrived`` lists; None (logged) when none came in time."""
    try:
        _wait(what, lambda: bool(arrived()), SAMPLE_TIMEOUT_S, alerting.alive)
    except Timeout as missed:
        log.warning("sample missed", extra={"error": str(missed), "load": _load()})
        return None
    return arrived()[0].at - since


def measure_latency(alerting: Alerting, inbox: Inbox, sample: int) -> tuple[float | None, float | None]:
    """Seconds from a dead letter's insert to the *Dead letters* webhook POST and e-mail (None: not in time)."""
    time.sleep(random.uniform(0, 60))
    _execute(alerting.settings.database_url, "INSERT INTO stock.rejected_messages (topic, partition, \"offset\","
             " raw_payload, error) VALUES ('bench', 0, %s, 'x', 'bench')", (sample,))
    inserted = time.time()
    log.info("dead letter inserted", extra={"sample": sample + 1, "second_of_minute": f"{inserted % 60:.0f}"})
    webhook = _arrival("Dead letters webhook POST", lambda: inbox.posts_for(ALERT, since=inserted), inserted, alerting)
    mail = _arrival("Dead letters e-mail", lambda: inbox.mails_for(ALERT, since=inserted), inserted, alerting)
    _execute(alerting.settings.database_url, "DELETE FROM stock.rejected_messages")
    deleted = _utc_now()
    log.info("sample", extra={"sample": sample + 1, "webhook_s": _seconds(webhook), "mail_s": _seconds(mail),
                              "load": _load()})
    _wait("Dead letters back to 'Not triggered'",
          lambda: alerting.evaluations(ALERT, "Not triggered", deleted) > 0, QUIET_TIMEOUT_S, alerting.alive)
    return webhook, mail


def _seconds(value: float | None) -> str:
    return f"> {SAMPLE_TIMEOUT_S}" if value is None else f"{value:.1f}"


def spread(values: list[float | None]) -> str:
    """p50, p95 and max of the samples; a missed one counts as slower than every other."""
    ordered = [float("inf") if v is None else v for v in values]
    missed = sum(v is None for v in values)
    return (", ".join(f"{name} {_seconds(None if x == float('inf') else x)} s" for name, x in
                      (("p50", percentile(ordered, 50)), ("p95", percentile(ordered, 95)), ("max", max(ordered))))
            + (f" ({missed} missed)" if missed else ""))


def _start(service: ManagedService) -> None:
    """Starts the service, once more if it was not ready in time (a loaded machine; starting is idempotent)."""
    try:
        service.start()
    except StackError as exc:
        log.warning("service start failed, trying once more", extra={"service": service.name, "error": str(exc)})
        service.start()


def run(samples: int, idle_s: int) -> list[str]:
    with running_inbox() as inbox, process_environment({
        "SUPERSET_ALERT_WEBHOOK_URL": inbox.webhook_url, "SUPERSET_ALERT_GRACE_S": "1", "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(inbox.smtp_port), "SMTP_STARTTLS": "0", "SMTP_MAIL_TO": "bench@example.com",
    }):
        started = time.monotonic()
        log.info("starting PostgreSQL and Kafka", extra={"load": _load()})
        with ephemeral_stack("crypto-bench-alerts-") as stack:
            settings = stack.settings
            # A healthy pipeline for the idle figure: a trade "from the future" keeps Feed stalled and Candles late
            # quiet.
            _execute(settings.database_url, "INSERT INTO stock.real_time_prices (symbol, price, timestamp, event_time,"
                     " volume, agg_trade_id, first_trade_id, last_trade_id, trades, is_buyer_maker, source)"
                     " VALUES ('BTCUSDT', 1, 0, now() + interval '1 day', 1, 1, 1, 1, 1, false, 'bench')")
            worker, beat = celery_services(settings)
            for service in (redis_service(settings), superset_service(settings, say=lambda _: None), worker, beat):
                _start(service)
                log.info("service ready",
                         extra={"service": service.name, "seconds": f"{time.monotonic() - started:.0f}"})
            alerting = Alerting(settings, worker, beat)
            waited = _wait(f"{WARMUP_TICKS} evaluations of every alert",
                           lambda: all(alerting.evaluations(a) >= WARMUP_TICKS for a in ALERTS),
                           WARMUP_TIMEOUT_S, alerting.alive)
            log.info("warm", extra={"seconds": f"{waited:.0f}", "load": _load()})
            memory, each, wrapper_memory, cpu = measure_idle(alerting, idle_s)
            idle_load = _load()
            webhooks, mails = [], []
            for sample in range(samples):
                webhook, mail = measure_latency(alerting, inbox, sample)
                webhooks.append(webhook)
                mails.append(mail)
            own = alerting.processes()[0]
            after, each_after = _memory(list(own.values())), _each_rss(own)
            load = _load()

    return [
        f"worker+beat idle: {memory} ({each}); CPU {cpu:.2f} % of one core over {idle_s} s"
        f" (load average {idle_load})",
        f"their two log wrappers: {wrapper_memory}",
        f"worker+beat after {samples} alerts fired: {after} ({each_after})",
        f"condition true -> webhook POST, {samples} samples: {spread(webhooks)}",
        f"condition true -> e-mail, {samples} samples: {spread(mails)}",
        f"load average at the end {load}; whole run {time.monotonic() - started:.0f} s",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.alerts", description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=5, help="latency samples, about 2 minutes each (default 5)")
    parser.add_argument("--idle-s", type=int, default=180, help="seconds of idle CPU measurement (default 180)")
    args = parser.parse_args(argv)
    if args.samples < 1 or args.idle_s < 1:
        print("bench.alerts: --samples and --idle-s must be at least 1", file=sys.stderr)
        return 2
    configure_logging(os.environ.get("LOG_LEVEL", "INFO"))
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every SMTP command
    try:
        lines = run(args.samples, args.idle_s)
    except (BenchError, StackError, psycopg2.Error) as exc:
        log.error("bench failed", extra={"error": str(exc), "load": _load()})
        return 1
    print("\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
