"""In-process ingestion chain for tests and benchmarks: ReplayServer → BinanceProducer → Kafka →
PricesConsumer → PostgreSQL, each piece the real one, on the test stack's real servers."""

from __future__ import annotations

import csv
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import psycopg2

from crypto_platform.settings import PlatformSettings
from local_stack.processes import wait_until as poll_until
from streaming_services.consumer import ConsumerConfig, PricesConsumer
from streaming_services.producer import BinanceProducer, ProducerConfig
from streaming_services.replay_server import FaultPlan, ReplayConfig, ReplayServer


def expected_trades(paths: list[Path]) -> dict[tuple[str, int], tuple[str, str, bool]]:
    """(symbol, id) → (price, qty, is_buyer_maker) straight from the CSVs, as Binance wrote them."""
    from streaming_services.feeds import symbol_from_filename

    expected = {}
    for path in paths:
        symbol = symbol_from_filename(path)
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                expected[(symbol, int(row["id"]))] = (row["price"], row["qty"], row["is_buyer_maker"] == "True")
    return expected


def stored_trades(database_url: str) -> dict[tuple[str, int], tuple[str, str, bool]]:
    with psycopg2.connect(database_url) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT symbol, agg_trade_id, price::text, volume::text, is_buyer_maker"
                       " FROM stock.real_time_prices")
        return {(s, a): (p, q, m) for s, a, p, q, m in cursor.fetchall()}


def count_rows(database_url: str) -> int:
    with psycopg2.connect(database_url) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM stock.real_time_prices")
        return cursor.fetchone()[0]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.25) -> None:
    """The stack's polling loop, failing the test with what it waited for."""
    if not poll_until(predicate, timeout, interval):
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@dataclass
class IngestionChain:
    """Owns the threads; ``stop()`` ends them all (producer flushes, consumer finishes its batch)."""

    settings: PlatformSettings
    server: ReplayServer
    state_dir: Path
    producer: BinanceProducer | None = None
    consumers: list[PricesConsumer] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    @classmethod
    def start_server(cls, settings: PlatformSettings, files: list[Path], symbols: tuple[str, ...], state_dir: Path,
                     speed: float = 0, faults: FaultPlan | None = None, **config: float) -> IngestionChain:
        server = ReplayServer(ReplayConfig(symbols=symbols, files=tuple(files), speed=speed, port=0,
                                           state_dir=state_dir / "replay", faults=faults or FaultPlan(), **config))
        chain = cls(settings=settings, server=server, state_dir=state_dir)
        chain.ws_url, chain.rest_url = server.start_in_thread()
        return chain

    def producer_config(self, **overrides: float) -> ProducerConfig:
        return ProducerConfig(ws_url=self.ws_url, rest_url=self.rest_url, symbols=self.server.config.symbols,
                              topic=self.settings.kafka_topic, bootstrap_servers=self.settings.kafka_bootstrap_servers,
                              source="replay", state_path=self.state_dir / "producer" / "acked.json", **overrides)

    def start_producer(self, **overrides: float) -> BinanceProducer:
        self.producer = BinanceProducer(self.producer_config(**overrides))
        self._spawn(self.producer.run, "producer")
        return self.producer

    def stop_producer(self) -> None:
        if self.producer is not None:
            self.producer.stop()
            self.threads[[t.name for t in self.threads].index("producer")].join(60)
            self.threads = [t for t in self.threads if t.name != "producer"]
            self.producer = None

    def start_consumer(self) -> PricesConsumer:
        consumer = PricesConsumer(ConsumerConfig.from_settings(self.settings))
        self.consumers.append(consumer)
        self._spawn(consumer.run, f"consumer-{len(self.consumers)}")
        return consumer

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)

    def stop(self) -> None:
        self.stop_producer()
        for consumer in self.consumers:
            consumer.stop()
        for thread in self.threads:
            thread.join(60)
        self.server.stop_thread()


def as_decimal_strings(values: dict) -> dict:
    """Normalises the CSV's digits to PostgreSQL's NUMERIC(20, 8) text for a digit-for-digit comparison."""
    return {key: (f"{Decimal(p):.8f}", f"{Decimal(q):.8f}", m) for key, (p, q, m) in values.items()}
