"""How long the market stays stale after the consumer dies: SIGKILL the consumer process while trades keep
arriving, start it again, and time its start → the first row it writes. Static group membership
(``CONSUMER_INSTANCE_ID``, what ``make up`` uses) against dynamic membership, on a throwaway stack.

Usage: ``python -m bench.consumer_restart [--restarts N] [--membership static dynamic]``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import threading
import time
from decimal import Decimal

import psutil
import psycopg2
from kafka import KafkaProducer

from local_stack.ephemeral import ephemeral_stack
from local_stack.processes import free_port
from local_stack.stack import LocalStack
from streaming_services.messages import TradeMessage

RATE_PER_S = 50
RUNNING_S = 4
ROW_TIMEOUT_S = 120


def feed(stack: LocalStack, stop: threading.Event) -> None:
    """Valid trades at RATE_PER_S on every partition until ``stop``."""
    producer = KafkaProducer(bootstrap_servers=stack.settings.kafka_bootstrap_servers, acks="all", linger_ms=5)
    ids = itertools.count(1)
    while not stop.wait(1 / RATE_PER_S):
        agg_id = next(ids)
        trade = TradeMessage(symbol=("BTCUSDT", "ETHUSDT", "BNBUSDT")[agg_id % 3], price=Decimal("60000.5"),
                             volume=Decimal("0.001"), timestamp=time.time_ns() // 1_000_000, agg_trade_id=agg_id,
                             first_trade_id=agg_id, last_trade_id=agg_id, is_buyer_maker=False, source="bench")
        producer.send(stack.settings.kafka_topic, key=trade.key, value=trade.to_json())
    producer.close()


def newest_row_after(database_url: str, after: float) -> float | None:
    with psycopg2.connect(database_url) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT extract(epoch FROM min(created_at)) FROM stock.real_time_prices"
                       " WHERE created_at > to_timestamp(%s)", (after,))
        value = cursor.fetchone()[0]
        return None if value is None else float(value)


def start_consumer(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "streaming_services.consumer"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def measure(stack: LocalStack, membership: str, restarts: int) -> list[float]:
    """Seconds from each restarted consumer's process start to its first row."""
    env = {**os.environ, "CONSUMER_METRICS_PORT": str(free_port()), "CONSUMER_GROUP": f"bench-{membership}",
           "SYMBOLS": "BTCUSDT,ETHUSDT,BNBUSDT",
           "CONSUMER_INSTANCE_ID": "bench-consumer-1" if membership == "static" else ""}
    consumer = start_consumer(env)
    delays = []
    try:
        for _ in range(restarts):
            time.sleep(RUNNING_S)
            consumer.kill()
            consumer.wait(30)
            time.sleep(1)
            consumer = start_consumer(env)
            started = psutil.Process(consumer.pid).create_time()
            deadline = time.monotonic() + ROW_TIMEOUT_S
            while (first := newest_row_after(stack.settings.database_url, started)) is None:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{membership}: no row {ROW_TIMEOUT_S} s after the restart")
                time.sleep(0.1)
            delays.append(first - started)
            print(f"  {membership}: first row {delays[-1]:.1f} s after the restarted consumer started", flush=True)
    finally:
        consumer.terminate()
        consumer.wait(30)
    return delays


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.consumer_restart", description=__doc__.splitlines()[0])
    parser.add_argument("--restarts", type=int, default=5)
    parser.add_argument("--membership", nargs="+", choices=["static", "dynamic"], default=["static", "dynamic"])
    args = parser.parse_args(argv)
    if args.restarts < 1:
        parser.error("--restarts must be at least 1")
    print(f"load average at start: {os.getloadavg()[0]:.1f}", flush=True)
    with ephemeral_stack("crypto-bench-restart-") as stack:
        stop = threading.Event()
        feeder = threading.Thread(target=feed, args=(stack, stop), daemon=True)
        feeder.start()
        try:
            results = {membership: measure(stack, membership, args.restarts) for membership in args.membership}
        finally:
            stop.set()
            feeder.join(30)
    for membership, delays in results.items():
        print(f"{membership} membership: restart → first row median {statistics.median(delays):.1f} s, "
              f"max {max(delays):.1f} s over {len(delays)} SIGKILLs")
    print(f"load average at end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
