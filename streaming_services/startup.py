"""Start-up of the streaming services' processes: one readable line and exit code 2 for a taken port,
and waiting (not crashing) while Kafka is not up yet."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import TypeVar

from kafka.errors import KafkaError
from prometheus_client import start_http_server

from crypto_platform.credentials import tls_files
from crypto_platform.retrying import retry_while_unavailable
from crypto_platform.settings import PlatformSettings

T = TypeVar("T")

KAFKA_RETRY_INITIAL_S = 1.0
KAFKA_RETRY_MAX_S = 15.0

log = logging.getLogger(__name__)


class StartupError(Exception):
    """The process cannot start as configured; the message is one line that names the setting to change."""


def port_taken(variable: str, host: str, port: int, error: OSError) -> StartupError:
    return StartupError(f"cannot listen on {host}:{port} ({error.strerror or error}); "
                        f"set {variable} to a free port")


def start_metrics(variable: str, settings: PlatformSettings, port: int) -> None:
    """The Prometheus endpoint on BIND_HOST, or a StartupError naming ``variable`` when the port is taken.
    With SECURE=1 HTTPS only, and a scraper must show a client certificate signed by the platform's CA."""
    tls = tls_files(settings)
    options = {"certfile": str(tls.server_cert), "keyfile": str(tls.server_key), "client_cafile": str(tls.ca_cert),
               "client_auth_required": True} if settings.secure else {}
    try:
        start_http_server(port, addr=settings.bind_host, **options)
    except OSError as exc:
        raise port_taken(variable, settings.bind_host, port, exc) from None


def worker_argument(prog: str, argv: list[str] | None) -> int:
    """``--worker I``: which of a scaled-out service's processes this is (default 0)."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--worker", type=int, default=0, help="this process's index, 0 to WORKERS - 1")
    return parser.parse_args(argv).worker


def _exit_now(signum: int, _frame: object) -> None:
    """Nothing to flush yet; ``os._exit`` also spares the half-built client's teardown noise."""
    log.info("stopped before Kafka answered", extra={"signal": signal.Signals(signum).name})
    sys.stderr.flush()
    os._exit(0)


def wait_for_kafka(build: Callable[[], T], bootstrap_servers: str) -> T:
    """Builds a Kafka client, retrying with backoff while no broker answers.

    A service started before the broker (or while it restarts) waits for it instead of dying with a
    traceback; nothing is in flight yet, so SIGTERM or SIGINT meanwhile ends the process at once.
    """
    previous = {sig: signal.signal(sig, _exit_now) for sig in (signal.SIGTERM, signal.SIGINT)}
    log.info("connecting to Kafka", extra={"bootstrap_servers": bootstrap_servers})
    try:
        return retry_while_unavailable(build, KafkaError, initial_s=KAFKA_RETRY_INITIAL_S, max_s=KAFKA_RETRY_MAX_S,
                                       log=log, message="Kafka not reachable; retrying",
                                       extra={"bootstrap_servers": bootstrap_servers})
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
