"""The producer's no-loss logic against the real replay server: every agg id reaches Kafka once, in order.

Kafka is replaced by a recorder here so that what the producer hands over can be compared id by id in
seconds; the integration tests in ``test_ingestion.py`` run the same faults through the real broker.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import websocket
from kafka.errors import KafkaTimeoutError
from kafka.future import Future

from bench.ingestion import SYMBOLS, start_producers_from_the_first_id, write_market_files
from streaming_services.feeds import read_binance_file
from streaming_services.producer import MALFORMED_KEY, AckedIds, BinanceProducer, ProducerConfig, worker_symbols
from streaming_services.producer_state import acked_path
from streaming_services.replay_server import FaultPlan, ReplayConfig, ReplayServer

BTC_2023 = "spot_BTCUSDT_2023-04-05/spot_BTCUSDT_trades_2023-04-04T235959_to_2023-04-05T000654.csv"
FIRST_ID, LAST_ID = 3071245454, 3071248597


class RecordingKafka:
    """Stands in for KafkaProducer. ``acked`` lists the trade ids handed over (in hand-over order, as they land
    in the partition); each send is acknowledged (or, for an id of ``refuse_once``, refused one time) later,
    from another thread, in a shuffled order, as a real producer's callbacks may arrive across batches."""

    def __init__(self, refuse_once: frozenset[int] = frozenset(), seed: int = 7) -> None:
        self.refuse_once = set(refuse_once)
        self.acked: list[int] = []
        self.clocks: list[dict] = []
        self.malformed: list[bytes] = []
        self.flushed = self.closed = False
        self._lock = threading.Lock()
        self._unanswered: list[tuple[Future, Exception | None]] = []
        self._rng = random.Random(seed)
        threading.Thread(target=self._answer, name="recording-kafka", daemon=True).start()

    def send(self, topic: str, key: bytes, value: bytes) -> Future:
        future = Future()
        error = None
        with self._lock:
            if key == MALFORMED_KEY:
                self.malformed.append(value)
            elif json.loads(value).get("e") == "marketClock":
                self.clocks.append({**json.loads(value), "after": list(self.acked)})
            else:
                agg_id = json.loads(value)["agg_trade_id"]
                if agg_id in self.refuse_once:
                    self.refuse_once.discard(agg_id)
                    error = KafkaTimeoutError("injected: batch expired")
                else:
                    self.acked.append(agg_id)
            self._unanswered.append((future, error))
        return future

    def _answer(self) -> None:
        while not self.closed:
            time.sleep(0.003)
            with self._lock:
                batch, self._unanswered = self._unanswered, []
            self._rng.shuffle(batch)
            for future, error in batch:
                if error is None:
                    future.success(None)
                else:
                    future.failure(error)

    def flush(self, timeout: float | None = None) -> None:
        wait_for(lambda: not self._unanswered, timeout or 30, "every send answered")
        time.sleep(0.05)  # the batch taken last is being answered
        self.flushed = True

    def close(self, timeout: float | None = None) -> None:
        self.closed = True


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def replay(shared_data: Path, tmp_path: Path) -> Iterator[Callable[..., tuple[str, str]]]:
    servers: list[ReplayServer] = []

    def start(faults: FaultPlan | None = None, **options: float) -> tuple[str, str]:
        server = ReplayServer(ReplayConfig(symbols=("BTCUSDT",), files=(shared_data / BTC_2023,), port=0,
                                           state_dir=tmp_path / "replay", faults=faults or FaultPlan(), **options))
        servers.append(server)
        return server.start_in_thread()

    yield start
    for server in servers:
        server.stop_thread()


class RunningProducer:
    def __init__(self, urls: tuple[str, str], state_path: Path, kafka: RecordingKafka, **overrides: float) -> None:
        config = ProducerConfig(ws_url=urls[0], rest_url=urls[1], symbols=("BTCUSDT",), topic="trades",
                                bootstrap_servers="unused", source="replay", state_path=state_path,
                                backoff_initial_s=0.05, backoff_max_s=0.2, **overrides)
        self.kafka = kafka
        self.producer = BinanceProducer(config, kafka=kafka)
        self.thread = threading.Thread(target=self.producer.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.producer.stop()
        self.thread.join(30)
        assert not self.thread.is_alive()


def every_id() -> list[int]:
    return list(range(FIRST_ID, LAST_ID + 1))


def run_until_last_id(urls: tuple[str, str], state_path: Path, timeout: float = 60,
                      **overrides: float) -> RecordingKafka:
    kafka = RecordingKafka()
    running = RunningProducer(urls, state_path, kafka, **overrides)
    try:
        wait_for(lambda: LAST_ID in kafka.acked, timeout, "the recording's last id")
    finally:
        running.stop()
    return kafka


def test_the_shared_file_has_the_ids_these_tests_expect(shared_data: Path) -> None:
    assert [t.agg_id for t in read_binance_file(shared_data / BTC_2023)] == every_id()


@pytest.mark.parametrize(
    ("faults", "options", "overrides"),
    [
        (FaultPlan(skip_ids={"BTCUSDT": (3071245600, 3071246100)}), {"speed": 0}, {}),
        (FaultPlan(close_after_frames=700), {"speed": 0}, {}),
        (FaultPlan(stall_after_frames=500), {"speed": 0}, {"stall_timeout_s": 0.5}),
        (FaultPlan(), {"speed": 400, "lifetime_s": 0.4}, {}),
        (FaultPlan(malformed_every=100), {"speed": 0}, {}),
    ],
    ids=["skipped-ids", "disconnect", "stall", "server-shutdown-rollover", "malformed-frames"],
)
def test_every_id_is_handed_to_kafka_once_and_in_order_despite_the_fault(
        replay, tmp_path: Path, faults: FaultPlan, options: dict, overrides: dict) -> None:
    kafka = run_until_last_id(replay(faults, **options), tmp_path / "acked.json", **overrides)
    assert kafka.acked == every_id()
    assert kafka.flushed and kafka.closed
    assert json.loads((tmp_path / "acked.json").read_text()) == {"source": "replay", "acked": {"BTCUSDT": LAST_ID}}
    if faults.malformed_every:
        assert len(kafka.malformed) >= len(every_id()) // faults.malformed_every


def test_a_restarted_producer_continues_from_the_last_acknowledged_id(replay, tmp_path: Path) -> None:
    urls = replay(speed=100)
    first = RecordingKafka()
    running = RunningProducer(urls, tmp_path / "acked.json", first)
    wait_for(lambda: len(first.acked) >= 300, 30, "300 trades before the stop")
    running.stop()
    assert json.loads((tmp_path / "acked.json").read_text()) == {"source": "replay",
                                                                 "acked": {"BTCUSDT": first.acked[-1]}}
    time.sleep(0.5)  # trades keep happening while the producer is down
    second = run_until_last_id(urls, tmp_path / "acked.json")
    assert first.acked + second.acked == every_id()


@pytest.mark.slow
def test_a_send_that_kafka_refuses_is_fetched_again(replay, tmp_path: Path) -> None:
    refused = frozenset({3071246000, 3071247000})
    kafka = RecordingKafka(refuse_once=refused)
    running = RunningProducer(replay(speed=50), tmp_path / "acked.json", kafka)
    try:
        wait_for(lambda: LAST_ID in kafka.acked and refused <= set(kafka.acked), 60, "every id acknowledged")
    finally:
        running.stop()
    assert set(kafka.acked) == set(every_id())
    for agg_id in refused:
        retried_at = kafka.acked.index(agg_id)
        assert kafka.acked[retried_at:retried_at + 5] == list(range(agg_id, agg_id + 5))


def test_the_saved_position_advances_only_over_contiguous_acknowledged_ids(tmp_path: Path) -> None:
    """Acknowledgements out of order, and a refusal followed by later acks: the position never passes an id
    Kafka has not confirmed. Failed on the old code, which kept the highest id acknowledged."""
    acked = AckedIds(tmp_path / "acked.json", ("BTCUSDT",), "replay")
    for agg_id in range(1, 7):
        acked.sent("BTCUSDT", agg_id)
    acked.acknowledge("BTCUSDT", 3)
    acked.acknowledge("BTCUSDT", 2)
    assert acked.position("BTCUSDT") is None
    acked.acknowledge("BTCUSDT", 1)
    assert acked.position("BTCUSDT") == 3
    acked.refuse("BTCUSDT", 4)
    acked.acknowledge("BTCUSDT", 6)
    acked.acknowledge("BTCUSDT", 5)
    acked.save()
    assert json.loads((tmp_path / "acked.json").read_text()) == {"source": "replay", "acked": {"BTCUSDT": 3}}
    assert acked.take_rewinds() == {"BTCUSDT": 4}
    acked.sent("BTCUSDT", 4)  # sent again after the refusal: it keeps its place
    acked.acknowledge("BTCUSDT", 4)
    assert acked.position("BTCUSDT") == 6


def test_a_closing_kline_sends_the_market_clock_after_every_trade_of_the_minute(
        replay, shared_data: Path, tmp_path: Path) -> None:
    """At 600x the recording is through in a second and the minutes after it are quiet: each clock is handed
    over after every trade before its time, and clocks keep coming for the quiet minutes."""
    kafka = RecordingKafka()
    running = RunningProducer(replay(speed=600, retime=False), tmp_path / "acked.json", kafka)
    try:
        wait_for(lambda: len(kafka.clocks) >= 10, 60, "ten market clocks")
    finally:
        running.stop()
    trades = read_binance_file(shared_data / BTC_2023)
    for clock in kafka.clocks:
        assert (clock["e"], clock["s"], clock["source"]) == ("marketClock", "BTCUSDT", "replay")
        assert clock["closedUntil"] % 60_000 == 0
        assert {t.agg_id for t in trades if t.time_ms < clock["closedUntil"]} <= set(clock["after"])
    closed = [c["closedUntil"] for c in kafka.clocks]
    assert closed == sorted(closed) and closed[-1] > max(t.time_ms for t in trades) + 2 * 60_000


def test_a_bench_chain_worker_that_subscribes_after_the_replay_finished_still_sends_every_id(
        tmp_path: Path) -> None:
    """``bench.ingestion --part chain``: the first subscriber starts the replay market, which at full speed is
    through its files at once; worker 2 of 3, subscribing only then, must still hand over every id of its
    symbol. Failed on the old bench (no saved ids): that worker sent nothing and the run stalled."""
    rows_per_symbol, workers, late = 500, 3, 2
    files = tuple(write_market_files(tmp_path, rows_per_symbol * len(SYMBOLS)))
    server = ReplayServer(ReplayConfig(symbols=SYMBOLS, files=files, speed=0, port=0, state_dir=tmp_path / "replay"))
    ws_url, rest_url = server.start_in_thread()
    kafka = RecordingKafka()
    try:
        first = websocket.create_connection(ProducerConfig(ws_url, rest_url, SYMBOLS, "trades", "unused", "replay",
                                                           tmp_path / "unused.json").stream_url, timeout=10)
        seen = 0
        while seen < rows_per_symbol * len(SYMBOLS):  # the whole market is out before the late worker subscribes
            seen += "@aggTrade" in first.recv()
        first.close()
        start_producers_from_the_first_id(tmp_path, workers, "replay")
        symbols = worker_symbols(SYMBOLS, late, workers)
        config = ProducerConfig(ws_url, rest_url, symbols, "trades", "unused", "replay", acked_path(tmp_path, late),
                                backoff_initial_s=0.05, backoff_max_s=0.2)
        producer = BinanceProducer(config, kafka=kafka)
        thread = threading.Thread(target=producer.run, daemon=True)
        thread.start()
        try:
            wait_for(lambda: len(kafka.acked) >= rows_per_symbol * len(symbols), 30, "every id of the late worker")
        finally:
            producer.stop()
            thread.join(30)
    finally:
        server.stop_thread()
    assert symbols == ("BNBUSDT",)
    assert kafka.acked == list(range(1, rows_per_symbol + 1))
