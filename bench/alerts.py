"""Superset's alerts: what the Celery worker and beat cost when idle, and condition true → webhook latency.

Runs a stack of its own (PostgreSQL, Kafka, Redis, Superset, its worker and beat; no producer, so the
*Dead letters* alert is the one measured): ``python -m bench.alerts [--samples N]``.

- memory: resident (RSS) and proportional (PSS, shared pages split) of the celery processes, after warm-up;
- CPU: their user+system seconds over ``--idle-s`` seconds (scheduler ticks included) as % of one core;
- latency: a dead letter is inserted at a random second of the minute; the time until the local webhook
  receiver gets the *Dead letters* POST is one sample. Between samples the rows are deleted and the alert
  goes back to "Not triggered" (grace period 1 s here).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from unittest import mock

import psutil
import psycopg2

from crypto_platform.settings import PlatformSettings
from local_stack.ephemeral import ephemeral_stack
from local_stack.processes import free_port
from local_stack.redis_server import redis_service
from local_stack.superset import celery_services, superset_service

SAMPLE_TIMEOUT_S = 300


def _receiver(posts: list[tuple[float, str]]) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            posts.append((time.time(), str(json.loads(body).get("name", ""))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _celery_processes(pid: int) -> list[psutil.Process]:
    return [p for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)] if "celery" in p.name()]


def _execute(settings: PlatformSettings, sql: str, params: tuple = ()) -> None:
    with psycopg2.connect(settings.database_url) as connection, connection.cursor() as cursor:
        cursor.execute(sql, params)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=5, help="latency samples (about 2 minutes each)")
    parser.add_argument("--idle-s", type=int, default=180, help="seconds of idle CPU measurement")
    args = parser.parse_args(argv)
    posts: list[tuple[float, str]] = []
    receiver = _receiver(posts)
    url = f"http://127.0.0.1:{receiver.server_address[1]}/bench"
    with mock.patch.dict(os.environ, {"SUPERSET_ALERT_WEBHOOK_URL": url, "SUPERSET_ALERT_GRACE_S": "1"}), \
            ephemeral_stack("crypto-bench-alerts-") as stack:
        settings = stack.settings
        # A healthy pipeline for the idle figure: a trade "from the future" keeps Feed stalled and Candles late quiet.
        _execute(settings, "INSERT INTO stock.real_time_prices (symbol, price, timestamp, event_time, volume,"
                 " agg_trade_id, first_trade_id, last_trade_id, trades, is_buyer_maker, source)"
                 " VALUES ('BTCUSDT', 1, 0, now() + interval '1 day', 1, 1, 1, 1, 1, false, 'bench')")
        services = [redis_service(settings), superset_service(settings, say=lambda _: None), *celery_services(settings)]
        try:
            for service in services:
                service.start()
            worker, beat = services[-2:]
            time.sleep(120)  # the worker's first tasks and imports
            processes = _celery_processes(worker.pid()) + _celery_processes(beat.pid())
            rss = sum(p.memory_info().rss for p in processes) / 2**20
            pss = sum(p.memory_full_info().pss for p in processes) / 2**20
            cpu_before = sum(sum(p.cpu_times()[:2]) for p in processes)
            time.sleep(args.idle_s)
            cpu = 100 * (sum(sum(p.cpu_times()[:2]) for p in processes) - cpu_before) / args.idle_s
            print(f"worker+beat idle: RSS {rss:.0f} MB, PSS {pss:.0f} MB, CPU {cpu:.2f} % of one core "
                  f"over {args.idle_s} s ({len(processes)} processes; load {os.getloadavg()[0]:.1f})", flush=True)
            latencies = []
            for sample in range(args.samples):
                time.sleep(random.uniform(0, 60))
                since = len(posts)
                _execute(settings, "INSERT INTO stock.rejected_messages (topic, partition, \"offset\", raw_payload,"
                         " error) VALUES ('bench', 0, %s, 'x', 'bench')", (sample,))
                started = time.time()
                deadline = started + SAMPLE_TIMEOUT_S
                while time.time() < deadline and not any(n.startswith("Dead letters:") for _, n in posts[since:]):
                    time.sleep(0.5)
                arrived = [t for t, n in posts[since:] if n.startswith("Dead letters:")]
                latencies.append(arrived[0] - started if arrived else float("inf"))
                print(f"sample {sample + 1}: {latencies[-1]:.1f} s", flush=True)
                _execute(settings, "DELETE FROM stock.rejected_messages")
                time.sleep(65)  # one tick that finds nothing: the alert is back to "Not triggered"
            ordered = sorted(latencies)
            p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
            print(f"condition true → webhook over {len(latencies)} samples: median {statistics.median(latencies):.1f} s,"
                  f" p95 {p95:.1f} s, max {ordered[-1]:.1f} s (load {os.getloadavg()[0]:.1f})", flush=True)
        finally:
            for service in reversed(services):
                service.stop()
            receiver.shutdown()


if __name__ == "__main__":
    main()
