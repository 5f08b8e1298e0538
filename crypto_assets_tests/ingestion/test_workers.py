"""Scale-out: several producer and consumer worker processes, as ``make up`` runs them, one of each killed
with SIGKILL mid-stream and started again; every trade lands once, and each symbol's trades stay in order."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from kafka import KafkaConsumer, TopicPartition

from crypto_assets_tests.ingestion_harness import (
    IngestionChain,
    as_decimal_strings,
    expected_trades,
    stored_trades,
    wait_until,
)
from crypto_platform.credentials import INGEST_WRITER, role_password
from crypto_platform.settings import PlatformSettings, SettingsError
from local_stack.ephemeral import make_state_dir
from local_stack.processes import free_port
from local_stack.stack import LocalStack
from streaming_services.consumer import ConsumerConfig
from streaming_services.producer import acked_path, worker_symbols
from streaming_services.workers import supervise

BTC_2024 = "spot_BTCUSDT_ETHUSDT_2024-08-08/spot_BTCUSDT_trades_2024-08-08T235415_to_2024-08-09T000505.csv"
ETH_2024 = "spot_BTCUSDT_ETHUSDT_2024-08-08/spot_ETHUSDT_trades_2024-08-08T235415_to_2024-08-09T000505.csv"
SYMBOLS = ("BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT")
PRODUCERS, CONSUMERS = 2, 3


class Workers:
    """The worker processes of one service, each started with ``--worker I`` like ``make up`` does."""

    def __init__(self, module: str, env: dict[str, str], logs: Path) -> None:
        self.module, self.env, self.logs = module, env, logs
        self.processes: dict[int, subprocess.Popen] = {}

    def start(self, worker: int) -> None:
        with (self.logs / f"{self.module}-{worker}.log").open("ab") as log:
            self.processes[worker] = subprocess.Popen([sys.executable, "-m", self.module, "--worker", str(worker)],
                                                      env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def kill(self, worker: int) -> None:
        self.processes[worker].send_signal(signal.SIGKILL)
        self.processes[worker].wait(30)

    def stop_all(self) -> list[int]:
        for process in self.processes.values():
            process.terminate()
        return [process.wait(60) for process in self.processes.values()]


def topic_ids_by_symbol(settings: PlatformSettings) -> dict[str, tuple[set[int], list[int]]]:
    """Per symbol: the partitions its trades are in, and their agg ids in the order Kafka holds them."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False,
                             consumer_timeout_ms=5000)
    try:
        topic = settings.kafka_topic
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        found: dict[str, tuple[set[int], list[int]]] = {}
        for record in consumer:
            document = json.loads(record.value)
            if "agg_trade_id" in document:
                seen = found.setdefault(document["symbol"], (set(), []))
                seen[0].add(record.partition)
                seen[1].append(document["agg_trade_id"])
        return found
    finally:
        consumer.close()


def first_sends(ids: list[int]) -> list[int]:
    """The ids as first sent: a restarted worker sends again from its acknowledged id (absorbed downstream)."""
    newest, first = -1, []
    for agg_id in ids:
        if agg_id > newest:
            first.append(agg_id)
            newest = agg_id
    return first


@pytest.mark.slow
def test_producer_and_consumer_workers_killed_and_restarted_keep_every_trade_once_and_in_order(
        platform_env, kafka_topic, db, shared_data: Path) -> None:
    files = [shared_data / BTC_2024, shared_data / ETH_2024]
    expected = as_decimal_strings(expected_trades(files))
    settings = platform_env(KAFKA_TOPIC=kafka_topic, SYMBOLS=",".join(SYMBOLS), CONSUMER_GROUP=f"group-{kafka_topic}",
                            PRODUCER_WORKERS=PRODUCERS, CONSUMER_WORKERS=CONSUMERS)
    state_dir = make_state_dir("crypto-test-workers-")
    chain = IngestionChain.start_server(settings, files, SYMBOLS, state_dir, speed=30)
    env = {**os.environ, "STATE_DIR": str(state_dir), "BINANCE_WS_URL": chain.ws_url,
           "BINANCE_REST_URL": chain.rest_url, "PRODUCER_METRICS_PORT": str(free_port()),
           "CONSUMER_METRICS_PORT": str(free_port()),
           # The workers' own STATE_DIR holds no secrets: they log in with the test stack's generated ones.
           "INGEST_WRITER_PASSWORD": role_password(settings, INGEST_WRITER)}
    producers = Workers("streaming_services.producer", env, state_dir)
    consumers = Workers("streaming_services.consumer", env, state_dir)
    try:
        for worker in range(CONSUMERS):
            consumers.start(worker)
        file_symbols = {symbol for symbol, _ in expected}
        for worker in range(PRODUCERS):
            # A fresh producer starts with the live stream; the files' trades from before its first connection
            # (process start takes seconds at replay speed 30) come from its state, as after any restart.
            starts = {symbol: min(agg_id for s, agg_id in expected if s == symbol) - 1
                      for symbol in worker_symbols(SYMBOLS, worker, PRODUCERS) if symbol in file_symbols}
            acked_path(state_dir, worker).parent.mkdir(parents=True, exist_ok=True)
            acked_path(state_dir, worker).write_text(json.dumps({"source": settings.source, "acked": starts}))
            producers.start(worker)
        url = settings.database_url
        wait_until(lambda: len(stored_trades(url)) > 1000, 240, "the first thousand trades")
        producers.kill(1)
        consumers.kill(0)
        time.sleep(2)
        producers.start(1)
        consumers.start(0)
        try:
            wait_until(lambda: expected.keys() <= stored_trades(url).keys(), 600, "every file trade after the kills")
        except AssertionError:
            missing = sorted(expected.keys() - stored_trades(url).keys())
            raise AssertionError(f"{len(missing)} file trades missing, e.g. {missing[:3]} … {missing[-3:]}; "
                                 f"logs in {state_dir}") from None
        stored = stored_trades(url)
        assert {key: value for key, value in stored.items() if key[0] in file_symbols} == expected
    finally:
        exits = producers.stop_all() + consumers.stop_all()
        chain.server.stop_thread()
    assert exits == [0] * (PRODUCERS + CONSUMERS), f"exit codes {exits}; logs in {state_dir}"

    by_symbol = topic_ids_by_symbol(settings)
    assert set(by_symbol) == set(SYMBOLS)
    for symbol, (partitions, ids) in by_symbol.items():
        assert len(partitions) == 1, f"{symbol} in partitions {partitions}"
        first = first_sends(ids)
        assert first == list(range(first[0], first[0] + len(first))), f"{symbol}: ids out of order or missing"
    for worker in range(PRODUCERS):
        path = acked_path(state_dir, worker)
        assert set(json.loads(path.read_text())["acked"]) == set(worker_symbols(SYMBOLS, worker, PRODUCERS)), path


@pytest.mark.slow
def test_the_container_supervisor_keeps_each_worker_running_and_stops_them_cleanly(platform_env, kafka_topic) -> None:
    platform_env(KAFKA_TOPIC=kafka_topic, CONSUMER_GROUP=f"group-{kafka_topic}", CONSUMER_WORKERS=2,
                 CONSUMER_METRICS_PORT=free_port())
    stop = threading.Event()
    exit_code: list[int] = []
    supervisor = threading.Thread(target=lambda: exit_code.append(supervise("streaming_services.consumer", 2, stop)))
    supervisor.start()
    try:
        wait_until(lambda: len(consumer_workers()) == 2, 120, "two consumer workers")
        victim = consumer_workers()[0]
        victim.kill()
        # Reaped first: the supervisor reaps a dead worker right before starting it again (a zombie or a
        # worker still exec-ing must not count as the restart).
        wait_until(lambda: not psutil.pid_exists(victim.pid) and len(consumer_workers()) == 2, 120,
                   "the killed worker started again")
    finally:
        stop.set()
        supervisor.join(120)
    assert exit_code == [0] and not consumer_workers(), (exit_code, victim, consumer_workers())


def consumer_workers() -> list[psutil.Process]:
    """This test process's consumer workers that are alive."""
    alive = []
    for process in psutil.Process().children():
        try:
            if process.status() != psutil.STATUS_ZOMBIE and "streaming_services.consumer" in process.cmdline():
                alive.append(process)
        except psutil.NoSuchProcess:
            pass
    return alive


def test_make_up_runs_and_shows_each_worker_with_its_own_port(monkeypatch, tmp_path) -> None:
    for name, value in {"STATE_DIR": tmp_path, "PRODUCER_WORKERS": 2, "CONSUMER_WORKERS": 3, "SUPERSET": 0,
                        "PRODUCER_METRICS_PORT": 9101, "CONSUMER_METRICS_PORT": 9102}.items():
        monkeypatch.setenv(name, str(value))
    services = {s.name: s for s in LocalStack(PlatformSettings.from_env()).services()}
    workers = {name: (s.port, s.command[-1]) for name, s in services.items()
               if name.startswith(("producer", "consumer"))}
    assert workers == {"consumer": (9102, "0"), "consumer-1": (9202, "1"), "consumer-2": (9302, "2"),
                       "producer": (9101, "0"), "producer-1": (9201, "1")}
    assert ConsumerConfig.from_settings(PlatformSettings.from_env(), 2).instance_id is None
    monkeypatch.setenv("CONSUMER_INSTANCE_ID", "writer")
    assert [ConsumerConfig.from_settings(PlatformSettings.from_env(), i).instance_id for i in range(3)] == [
        "writer", "writer-1", "writer-2"]


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("CONSUMER_WORKERS", 4, "CONSUMER_WORKERS=4 exceeds KAFKA_PARTITIONS=3"),
    ("PRODUCER_WORKERS", 6, "PRODUCER_WORKERS=6 exceeds the 5 SYMBOLS"),
    ("PRODUCER_WORKERS", 0, "PRODUCER_WORKERS=0 must be at least 1"),
])
def test_worker_counts_beyond_what_can_be_shared_are_refused_naming_the_variable(monkeypatch, variable, value,
                                                                                 message) -> None:
    monkeypatch.delenv("SYMBOLS", raising=False)
    monkeypatch.delenv("KAFKA_PARTITIONS", raising=False)
    monkeypatch.setenv(variable, str(value))
    with pytest.raises(SettingsError, match=message):
        PlatformSettings.from_env()


def test_symbols_are_shared_out_once_each() -> None:
    symbols = ("A1", "B2", "C3", "D4", "E5")
    for workers in range(1, 6):
        shares = [worker_symbols(symbols, worker, workers) for worker in range(workers)]
        assert sorted(s for share in shares for s in share) == sorted(symbols) and all(shares)
