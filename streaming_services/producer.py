"""Binance producer: one combined-stream WebSocket for SYMBOLS → Kafka topic ``binance-prices`` (key = symbol).

Nothing is lost: aggregate-trade ids are consecutive per symbol, so any jump (a reconnect, a rollover, a
send that Kafka refused) is filled from REST ``/api/v3/aggTrades`` before newer trades are sent. The
highest id Kafka acknowledged per symbol is kept in ``<state>/producer/acked.json``, so a restarted
producer backfills what happened while it was down. Duplicates this may cause are absorbed downstream
(the consumer writes idempotently on (symbol, agg_trade_id)).

Scale-out: ``PRODUCER_WORKERS`` processes (``--worker I``) each stream ``SYMBOLS[I::PRODUCER_WORKERS]``, so a
symbol is never in two workers; each keeps its own acknowledged ids (``acked.json`` for worker 0,
``acked-I.json`` for the others) and its own gap backfill.
"""

from __future__ import annotations

import json
import logging
import random
import signal
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import websocket
from kafka import KafkaProducer
from kafka.errors import KafkaError
from kafka.partitioner import DefaultPartitioner
from prometheus_client import Counter, Histogram

from crypto_platform.logs import configure_logging
from crypto_platform.settings import WORKER_PORT_STRIDE, PlatformSettings, SettingsError
from streaming_services.messages import InvalidMessage, TradeMessage, decode_agg_trade_frame
from streaming_services.startup import StartupError, start_metrics, wait_for_kafka, worker_argument

REST_PAGE = 1000
MALFORMED_KEY = b"malformed"

log = logging.getLogger(__name__)

MESSAGES = Counter("producer_messages_total", "Messages handed to Kafka", ["kind"])
ACKED = Counter("producer_acked_total", "Messages Kafka acknowledged")
SEND_FAILURES = Counter("producer_send_failures_total", "Sends Kafka refused; their ids are backfilled")
RECONNECTS = Counter("producer_reconnects_total", "WebSocket (re)connections", ["reason"])
GAPS = Counter("producer_backfilled_gaps_total", "Id gaps filled from REST")
BACKFILLED = Counter("producer_backfilled_trades_total", "Trades fetched from REST")
SEND_LATENCY = Histogram("producer_send_latency_seconds", "send() to broker acknowledgement",
                         buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))


@dataclass(frozen=True)
class ProducerConfig:
    ws_url: str
    rest_url: str
    symbols: tuple[str, ...]
    topic: str
    bootstrap_servers: str
    source: str
    state_path: Path
    stall_timeout_s: float = 60.0
    rollover_after_s: float = 23.5 * 3600
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    linger_ms: int = 5
    max_block_ms: int = 5000

    @classmethod
    def from_settings(cls, settings: PlatformSettings, worker: int = 0) -> ProducerConfig:
        return cls(ws_url=settings.binance_ws_url, rest_url=settings.binance_rest_url,
                   symbols=worker_symbols(settings.symbols, worker, settings.producer_workers),
                   topic=settings.kafka_topic, bootstrap_servers=settings.kafka_bootstrap_servers,
                   source=settings.source, state_path=acked_path(settings.state_dir, worker),
                   stall_timeout_s=settings.producer_stall_timeout_s)

    @property
    def stream_url(self) -> str:
        streams = "/".join(f"{symbol.lower()}@aggTrade" for symbol in self.symbols)
        return f"{self.ws_url}/stream?streams={streams}"


def worker_symbols(symbols: tuple[str, ...], worker: int, workers: int) -> tuple[str, ...]:
    """The symbols worker ``worker`` of ``workers`` streams: every symbol in exactly one worker."""
    return symbols[worker::workers]


def acked_path(state_dir: Path, worker: int) -> Path:
    return state_dir / "producer" / ("acked.json" if worker == 0 else f"acked-{worker}.json")


def load_acked_ids(path: Path, symbols: tuple[str, ...]) -> dict[str, int]:
    """This worker's acknowledged ids: its own file for its symbols; a symbol it got when PRODUCER_WORKERS
    changed comes from the sibling file that has it (the highest, if several), so nothing is skipped."""
    def read(file: Path) -> dict[str, int]:
        return json.loads(file.read_text()) if file.exists() else {}

    own = {symbol: agg_id for symbol, agg_id in read(path).items() if symbol in symbols}
    for sibling in sorted(path.parent.glob("acked*.json")):
        if sibling != path:
            for symbol, agg_id in read(sibling).items():
                if symbol in symbols and symbol not in own:
                    own[symbol] = agg_id
    return own


class AckedIds:
    """Highest id per symbol that Kafka acknowledged with every lower id; persisted atomically."""

    def __init__(self, path: Path, symbols: tuple[str, ...]) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._acked: dict[str, int] = load_acked_ids(path, symbols)
        self._rewind: dict[str, int] = {}

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._acked)

    def acknowledge(self, symbol: str, agg_id: int) -> None:
        with self._lock:
            if symbol not in self._rewind and agg_id > self._acked.get(symbol, -1):
                self._acked[symbol] = agg_id

    def refuse(self, symbol: str, agg_id: int) -> None:
        """Kafka refused ``agg_id``: never count past it, and have it fetched again."""
        with self._lock:
            self._rewind[symbol] = min(self._rewind.get(symbol, agg_id), agg_id)
            self._acked[symbol] = min(self._acked.get(symbol, agg_id - 1), agg_id - 1)

    def take_rewinds(self) -> dict[str, int]:
        with self._lock:
            rewinds, self._rewind = self._rewind, {}
            return rewinds

    def save(self) -> None:
        data = json.dumps(self.snapshot())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".tmp")
        partial.write_text(data)
        partial.replace(self.path)


class SymbolPartitioner(DefaultPartitioner):
    """kafka-python's default partitioner (murmur2 of the key, so a symbol keeps its partition) with its
    pure-Python hash computed once per key and partition count instead of once per message."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, bytes, int], int] = {}

    def partition(self, topic, key, serialized_key, value, serialized_value, cluster):
        partitions = cluster.partitions_for_topic(topic)
        if serialized_key is None or not partitions:
            return super().partition(topic, key, serialized_key, value, serialized_value, cluster)
        cache_key = (topic, serialized_key, len(partitions))
        cached = self._cache.get(cache_key)
        if cached is None:
            cached = self._cache[cache_key] = super().partition(topic, key, serialized_key, value, serialized_value,
                                                                cluster)
        return cached


class StreamInterrupted(Exception):
    """The connection must be replaced: closed, stalled, too old, or the server announced a shutdown."""


class BinanceProducer:
    """Streams aggTrades to Kafka, filling every id gap from REST, until ``stop()``."""

    def __init__(self, config: ProducerConfig, kafka: KafkaProducer | None = None) -> None:
        self.config = config
        self.kafka = kafka or KafkaProducer(
            bootstrap_servers=config.bootstrap_servers, acks="all", enable_idempotence=True, retries=2**31 - 1,
            linger_ms=config.linger_ms, batch_size=256 * 1024, compression_type=None,
            max_block_ms=config.max_block_ms, delivery_timeout_ms=120_000, client_id="binance-producer",
            partitioner=SymbolPartitioner(), metrics_enabled=False,
        )
        self.acked = AckedIds(config.state_path, config.symbols)
        self.last_sent: dict[str, int] = self.acked.snapshot()
        self._stop = threading.Event()
        self._ws: websocket.WebSocket | None = None

    def stop(self) -> None:
        self._stop.set()
        ws = self._ws
        if ws is not None:
            try:
                ws.abort()
            except (OSError, websocket.WebSocketException):
                pass

    def run(self) -> None:
        """Connect, stream, reconnect with exponential backoff and full jitter until stopped."""
        attempt = 0
        saver = threading.Thread(target=self._save_periodically, name="acked-saver", daemon=True)
        saver.start()
        reason = "start"
        while not self._stop.is_set():
            RECONNECTS.labels(reason).inc()
            started = time.monotonic()
            try:
                self._stream()
            except StreamInterrupted as exc:
                reason = str(exc)
            # ValueError: a REST answer that is not JSON or not aggTrades; retried like a network error.
            except (OSError, websocket.WebSocketException, KafkaError, urllib.error.URLError, ValueError) as exc:
                reason = type(exc).__name__
                log.warning("stream failed", extra={"error": repr(exc)[:300]})
            if self._stop.is_set():
                break
            attempt = 0 if time.monotonic() - started > 60 else attempt + 1
            delay = random.uniform(0, min(self.config.backoff_max_s, self.config.backoff_initial_s * 2**attempt))
            log.info("reconnecting", extra={"reason": reason, "delay_s": round(delay, 2)})
            self._stop.wait(delay)
        self.kafka.flush(timeout=30)
        self.kafka.close(timeout=30)
        self.acked.save()
        log.info("producer stopped", extra={"acked": json.dumps(self.acked.snapshot())})

    def _save_periodically(self) -> None:
        while not self._stop.wait(1.0):
            self.acked.save()

    def _stream(self) -> None:
        # UTF-8 is checked by the JSON decoder; invalid frames are dead-lettered like any malformed one.
        ws = websocket.create_connection(self.config.stream_url, timeout=1, enable_multithread=True,
                                         skip_utf8_validation=True)
        self._ws = ws
        connected = last_frame = time.monotonic()
        log.info("connected", extra={"url": self.config.stream_url.split("?")[0], "symbols": len(self.config.symbols)})
        try:
            self.catch_up()
            while not self._stop.is_set():
                self._apply_rewinds()
                if time.monotonic() - connected > self.config.rollover_after_s:
                    raise StreamInterrupted("rollover")
                try:
                    opcode, frame = ws.recv_data_frame(control_frame=True)
                except websocket.WebSocketTimeoutException:
                    if time.monotonic() - last_frame > self.config.stall_timeout_s:
                        raise StreamInterrupted("stalled") from None
                    continue
                except websocket.WebSocketConnectionClosedException:
                    raise StreamInterrupted("closed") from None
                last_frame = time.monotonic()
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    raise StreamInterrupted("closed")
                if opcode == websocket.ABNF.OPCODE_TEXT:
                    self.handle_frame(frame.data)
        finally:
            self._ws = None
            ws.close(timeout=1)

    def _apply_rewinds(self) -> None:
        for symbol, agg_id in self.acked.take_rewinds().items():
            self.last_sent[symbol] = min(self.last_sent.get(symbol, agg_id - 1), agg_id - 1)
            log.warning("kafka refused a send; refetching", extra={"symbol": symbol, "from_id": agg_id})

    def handle_frame(self, raw: bytes) -> None:
        trade = decode_agg_trade_frame(raw, self.config.source)
        if trade is not None:
            self.handle_trade(trade)
            return
        try:
            document = json.loads(raw)
        except ValueError:
            document = None
        if isinstance(document, dict) and "result" in document and "id" in document:
            return  # the answer to a SUBSCRIBE request
        payload = document.get("data", document) if isinstance(document, dict) else None
        event = payload.get("e") if isinstance(payload, dict) else None
        if event == "serverShutdown":
            raise StreamInterrupted("server-shutdown")
        if event == "aggTrade":
            try:
                self.handle_trade(TradeMessage.from_agg_trade(payload, self.config.source))
                return
            except InvalidMessage:
                pass
        # Malformed data from the exchange is kept, not dropped: the consumer dead-letters it with the reason.
        MESSAGES.labels("malformed").inc()
        self.kafka.send(self.config.topic, key=MALFORMED_KEY, value=raw)

    def handle_trade(self, trade: TradeMessage) -> None:
        last = self.last_sent.get(trade.symbol)
        if last is not None and trade.agg_trade_id <= last:
            return
        if last is not None and trade.agg_trade_id > last + 1:
            self.backfill(trade.symbol, last + 1, trade.agg_trade_id)
        self.send(trade, "live")

    def catch_up(self) -> None:
        """Right after connecting, sends from REST what each symbol traded since its last id sent.

        Waiting for the next live trade to reveal the jump would leave a quiet symbol's trades (or the
        end of a recording) missing for as long as that symbol stays quiet. Live frames meanwhile wait
        in the socket and are deduplicated by id.
        """
        for symbol in self.config.symbols:
            last = self.last_sent.get(symbol)
            if last is not None:
                self.backfill(symbol, last + 1)

    def backfill(self, symbol: str, from_id: int, until_id: int | None = None) -> int:
        """Sends ids [from_id, until_id) from REST (up to the newest trade without ``until_id``), in order,
        before the trade that revealed the gap. Returns how many trades it sent."""
        next_id, sent = from_id, 0
        while (until_id is None or next_id < until_id) and not self._stop.is_set():
            rows = self._rest_agg_trades(symbol, next_id)
            trades = [TradeMessage.from_agg_trade({**row, "s": symbol}, self.config.source) for row in rows]
            missing = [t for t in trades if t.agg_trade_id >= next_id and (until_id is None or t.agg_trade_id < until_id)]
            if not missing:
                if until_id is None:
                    break  # caught up with the newest trade
                if trades and trades[0].agg_trade_id >= until_id:
                    log.warning("ids absent at the source", extra={"symbol": symbol, "from_id": next_id})
                    break
                raise StreamInterrupted("rest-behind-stream")
            for trade in missing:
                self.send(trade, "backfill")
            sent += len(missing)
            BACKFILLED.inc(len(missing))
            next_id = missing[-1].agg_trade_id + 1
            if until_id is None and len(rows) < REST_PAGE:
                break
        if sent:
            GAPS.inc()
            log.info("gap backfilled", extra={"symbol": symbol, "from_id": from_id, "until_id": next_id, "trades": sent})
        return sent

    def _rest_agg_trades(self, symbol: str, from_id: int) -> list[dict[str, Any]]:
        query = urllib.parse.urlencode({"symbol": symbol, "fromId": from_id, "limit": REST_PAGE})
        with urllib.request.urlopen(f"{self.config.rest_url}/api/v3/aggTrades?{query}", timeout=10) as response:
            return json.load(response)

    def send(self, trade: TradeMessage, kind: str) -> None:
        sent_at = time.perf_counter()
        symbol, agg_id = trade.symbol, trade.agg_trade_id

        def delivered(_: Any) -> None:
            SEND_LATENCY.observe(time.perf_counter() - sent_at)
            ACKED.inc()
            self.acked.acknowledge(symbol, agg_id)

        def refused(error: Exception) -> None:
            SEND_FAILURES.inc()
            log.warning("send refused", extra={"symbol": symbol, "agg_trade_id": agg_id, "error": repr(error)[:200]})
            self.acked.refuse(symbol, agg_id)

        try:
            future = self.kafka.send(self.config.topic, key=trade.key, value=trade.to_json())
        except KafkaError as exc:
            refused(exc)
            raise StreamInterrupted("kafka-unavailable") from None
        future.add_callback(delivered).add_errback(refused)
        self.last_sent[symbol] = agg_id
        MESSAGES.labels(kind).inc()


def main(argv: list[str] | None = None) -> int:
    worker = worker_argument("python -m streaming_services.producer", argv)
    try:
        settings = PlatformSettings.from_env()
        if not 0 <= worker < settings.producer_workers:
            raise SettingsError(f"--worker {worker} is outside PRODUCER_WORKERS={settings.producer_workers}")
        config = ProducerConfig.from_settings(settings, worker)
        configure_logging(settings.log_level)
        start_metrics("PRODUCER_METRICS_PORT", settings.bind_host,
                      settings.producer_metrics_port + worker * WORKER_PORT_STRIDE)
    except (SettingsError, StartupError) as exc:
        print(f"producer: {exc}", file=sys.stderr)
        return 2
    producer = wait_for_kafka(lambda: BinanceProducer(config), config.bootstrap_servers)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: producer.stop())
    producer.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
