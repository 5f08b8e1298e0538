"""Every trade the exchange sends lands exactly once, with Binance's digits, through faults and restarts."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from kafka import KafkaProducer
from kafka.future import Future

from crypto_assets_tests.ingestion_harness import (
    IngestionChain,
    as_decimal_strings,
    count_rows,
    expected_trades,
    stored_trades,
    wait_until,
)
from local_stack.ephemeral import make_state_dir
from local_stack.processes import free_port
from streaming_services.feeds import read_binance_file
from streaming_services.producer import BinanceProducer
from streaming_services.replay_server import FaultPlan

BTC_2023 = "spot_BTCUSDT_2023-04-05/spot_BTCUSDT_trades_2023-04-04T235959_to_2023-04-05T000654.csv"
BTC_2024 = "spot_BTCUSDT_ETHUSDT_2024-08-08/spot_BTCUSDT_trades_2024-08-08T235415_to_2024-08-09T000505.csv"
ETH_2024 = "spot_BTCUSDT_ETHUSDT_2024-08-08/spot_ETHUSDT_trades_2024-08-08T235415_to_2024-08-09T000505.csv"


@pytest.fixture
def chain_factory(platform_env, kafka_topic, db):
    chains: list[IngestionChain] = []

    def create(files: list[Path], symbols: tuple[str, ...], **kwargs) -> IngestionChain:
        settings = platform_env(KAFKA_TOPIC=kafka_topic, SYMBOLS=",".join(symbols),
                                CONSUMER_GROUP=f"group-{kafka_topic}")
        chain = IngestionChain.start_server(settings, files, symbols, make_state_dir("crypto-test-chain-"), **kwargs)
        chains.append(chain)
        return chain

    yield create
    for chain in chains:
        chain.stop()


@pytest.mark.slow
def test_real_files_land_exactly_once_with_binances_digits(chain_factory, shared_data: Path) -> None:
    files = [shared_data / BTC_2024, shared_data / ETH_2024]
    expected = as_decimal_strings(expected_trades(files))
    chain = chain_factory(files, ("BTCUSDT", "ETHUSDT"))
    chain.start_consumer()
    chain.start_producer()
    url = chain.settings.database_url
    wait_until(lambda: count_rows(url) >= len(expected), 240, f"{len(expected)} rows")
    assert stored_trades(url) == expected


def _consumer_process(settings) -> subprocess.Popen:
    env = {**os.environ, "KAFKA_TOPIC": settings.kafka_topic, "SYMBOLS": ",".join(settings.symbols),
           "CONSUMER_GROUP": settings.consumer_group, "CONSUMER_METRICS_PORT": str(free_port())}
    return subprocess.Popen([sys.executable, "-m", "streaming_services.consumer"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _assert_exactly(expected: dict, url: str) -> None:
    stored = stored_trades(url)
    missing = expected.keys() - stored.keys()
    extra = stored.keys() - expected.keys()
    assert not missing and not extra, f"{len(missing)} lost, {len(extra)} unexpected"
    assert stored == expected


@pytest.mark.slow
def test_consumer_killed_with_sigkill_many_times_loses_and_doubles_nothing(chain_factory, shared_data: Path) -> None:
    files = [shared_data / BTC_2024]
    expected = as_decimal_strings(expected_trades(files))
    chain = chain_factory(files, ("BTCUSDT",), speed=60)
    chain.start_producer()
    url = chain.settings.database_url
    rng = random.Random(7)
    kills = 0
    while kills < 8:
        process = _consumer_process(chain.settings)
        time.sleep(rng.uniform(1.5, 4.0))
        process.kill()
        process.wait(10)
        kills += 1
    final = _consumer_process(chain.settings)
    try:
        wait_until(lambda: count_rows(url) >= len(expected), 240, "every trade after the kills")
        time.sleep(2)
        _assert_exactly(expected, url)
    finally:
        final.terminate()
        assert final.wait(30) == 0, final.stderr.read().decode()[-2000:]


@pytest.mark.slow
def test_kafka_restart_and_postgres_outage_mid_stream(chain_factory, shared_data: Path, stack) -> None:
    files = [shared_data / BTC_2023]
    expected = as_decimal_strings(expected_trades(files))
    chain = chain_factory(files, ("BTCUSDT",), speed=15)
    chain.start_consumer()
    chain.start_producer()
    url = chain.settings.database_url
    wait_until(lambda: count_rows(url) > 100, 60, "the first rows")
    stack.kafka.stop()
    time.sleep(3)
    stack.kafka.start()
    wait_until(lambda: count_rows(url) > 1000, 240, "rows after the broker restart")
    stack.postgres.stop()
    time.sleep(30)
    stack.postgres.start()
    wait_until(lambda: count_rows(url) >= len(expected), 240, "every trade after the outages")
    time.sleep(2)
    _assert_exactly(expected, url)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("faults", "producer_overrides"),
    [
        (FaultPlan(close_after_frames=700), {}),
        (FaultPlan(skip_ids={"BTCUSDT": (3071245600, 3071246100)}), {}),
        (FaultPlan(stall_after_frames=900), {"stall_timeout_s": 2.0}),
    ],
    ids=["disconnect", "skipped-ids", "stall"],
)
def test_stream_faults_are_healed_from_rest(chain_factory, shared_data: Path, faults, producer_overrides) -> None:
    files = [shared_data / BTC_2023]
    expected = as_decimal_strings(expected_trades(files))
    chain = chain_factory(files, ("BTCUSDT",), speed=20, faults=faults)
    chain.start_consumer()
    producer = chain.start_producer(backoff_initial_s=0.2, **producer_overrides)
    url = chain.settings.database_url
    wait_until(lambda: count_rows(url) >= len(expected), 240, "every trade despite the fault")
    time.sleep(1)
    _assert_exactly(expected, url)
    assert producer.acked.snapshot()["BTCUSDT"] == max(agg_id for _, agg_id in expected)


@pytest.mark.slow
def test_malformed_frames_from_the_exchange_are_dead_lettered_and_trades_kept(chain_factory, shared_data: Path,
                                                                             db) -> None:
    files = [shared_data / BTC_2023]
    expected = as_decimal_strings(expected_trades(files))
    chain = chain_factory(files, ("BTCUSDT",), faults=FaultPlan(malformed_every=100))
    chain.start_consumer()
    chain.start_producer()
    url = chain.settings.database_url
    wait_until(lambda: count_rows(url) >= len(expected), 240, "every trade")
    with db.cursor() as cursor:
        wait_until(lambda: cursor.execute("SELECT count(*) FROM stock.rejected_messages") or
                   cursor.fetchone()[0] >= len(expected) // 100, 60, "the dead letters")
        cursor.execute("SELECT DISTINCT error FROM stock.rejected_messages")
        assert [row[0].split(":")[0] for row in cursor.fetchall()] == ["malformed JSON"]
    _assert_exactly(expected, url)


@pytest.mark.slow
def test_two_consumers_in_one_group_share_partitions_and_write_each_trade_once(chain_factory,
                                                                              shared_data: Path) -> None:
    files = [shared_data / BTC_2024, shared_data / ETH_2024]
    expected = as_decimal_strings(expected_trades(files))
    chain = chain_factory(files, ("BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT"), speed=30)
    first, second = chain.start_consumer(), chain.start_consumer()
    chain.start_producer()
    url = chain.settings.database_url
    wait_until(lambda: expected.keys() <= stored_trades(url).keys(), 300, "every file trade")
    assignments = [first.kafka.assignment(), second.kafka.assignment()]
    assert all(assignments) and not (assignments[0] & assignments[1]), assignments
    stored = stored_trades(url)
    assert {key: stored[key] for key in expected} == expected


class ShuffledAcks:
    """The real KafkaProducer, whose acknowledgements reach the producer later and out of order (as callbacks
    of different batches and partitions may): what a synchronous or in-order fake hides."""

    def __init__(self, kafka: KafkaProducer, seed: int = 11) -> None:
        self.kafka = kafka
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._delivered: list[tuple[Future, object, Exception | None]] = []
        self._closed = False
        threading.Thread(target=self._answer, name="shuffled-acks", daemon=True).start()

    def send(self, topic: str, key: bytes, value: bytes) -> Future:
        ours = Future()

        def keep(result: object = None, error: Exception | None = None) -> None:
            with self._lock:
                self._delivered.append((ours, result, error))

        self.kafka.send(topic, key=key, value=value).add_callback(keep).add_errback(lambda e: keep(error=e))
        return ours

    def _answer(self) -> None:
        while not self._closed:
            time.sleep(0.005)
            with self._lock:
                batch, self._delivered = self._delivered, []
            self._rng.shuffle(batch)
            for future, result, error in batch:
                if error is None:
                    future.success(result)
                else:
                    future.failure(error)

    def flush(self, timeout: float | None = None) -> None:
        self.kafka.flush(timeout)
        wait_until(lambda: not self._delivered, 30, "every acknowledgement passed on", interval=0.01)
        time.sleep(0.05)

    def close(self, timeout: float | None = None) -> None:
        self._closed = True
        self.kafka.close(timeout)


def test_a_stop_during_a_gap_backfill_loses_nothing(chain_factory, shared_data: Path) -> None:
    """The stream skips 2,947 ids, so the next live trade reveals a gap of three REST pages; the producer is
    stopped while it fetches the first page, with the real replay server and Kafka, acknowledgements out
    of order. Restarted, it must send every id. Failed on the old code: the backfill returned quietly,
    the live trade after the gap was sent and acknowledged, acked.json moved past the gap, and the
    restart lost ids 3071246554..3071248500 for good."""
    files = [shared_data / BTC_2023]
    expected = as_decimal_strings(expected_trades(files))
    gap = (3071245554, 3071248500)
    chain = chain_factory(files, ("BTCUSDT",), speed=0, faults=FaultPlan(skip_ids={"BTCUSDT": gap}))
    chain.start_consumer()
    config = chain.producer_config()
    kafka = ShuffledAcks(KafkaProducer(bootstrap_servers=config.bootstrap_servers, acks="all", enable_idempotence=True,
                                       linger_ms=5))
    producer = BinanceProducer(config, kafka=kafka)
    fetch_page = producer.rest.agg_trades
    stopped_during: list[int] = []

    def first_page_with_a_stop(symbol: str, from_id: int) -> list:
        if from_id == gap[0] and not stopped_during:
            stopped_during.append(from_id)
            producer.stop()  # as SIGTERM from `make down` would, while the page is on its way
        return fetch_page(symbol, from_id)

    producer.rest.agg_trades = first_page_with_a_stop
    thread = threading.Thread(target=producer.run, name="stopped-producer", daemon=True)
    thread.start()
    thread.join(120)
    assert not thread.is_alive() and stopped_during == [gap[0]]
    saved = producer.acked.snapshot()["BTCUSDT"]
    assert saved < gap[1], f"the saved position {saved} passed ids that were never sent"
    chain.server.call(lambda: chain.server.config.faults.skip_ids.clear())
    chain.start_producer()
    url = chain.settings.database_url
    wait_until(lambda: count_rows(url) >= len(expected), 240, "every trade after the restart")
    time.sleep(1)
    _assert_exactly(expected, url)


def test_a_quiet_symbol_gets_its_market_clock_after_its_trades(chain_factory, shared_data: Path, db) -> None:
    """The 7-minute recording replayed at 600x, kept at its own dates: after it, BTCUSDT is quiet, and the
    closing klines keep coming. Every closed minute's trades are stored before the clock says so. Failed on
    the old code: no kline stream, no market clock."""
    files = [shared_data / BTC_2023]
    expected = as_decimal_strings(expected_trades(files))
    chain = chain_factory(files, ("BTCUSDT",), speed=600, retime=False)
    chain.start_consumer()
    chain.start_producer()
    url = chain.settings.database_url
    last_trade_ms = max(trade.time_ms for trade in read_binance_file(files[0]))
    with db.cursor() as cursor:
        def clock() -> int:
            cursor.execute("SELECT closed_until_ms FROM stock.market_clock"
                           " WHERE source = 'replay' AND symbol = 'BTCUSDT'")
            row = cursor.fetchone()
            return row[0] if row else 0

        wait_until(lambda: clock() >= last_trade_ms + 3 * 60_000, 240, "the clock three quiet minutes on")
        cursor.execute("SELECT count(*) FROM stock.real_time_prices WHERE timestamp < %s", (clock(),))
        assert cursor.fetchone()[0] == len(expected)
    _assert_exactly(expected, url)
