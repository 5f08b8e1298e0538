"""Binance producer: one combined-stream WebSocket for SYMBOLS → Kafka topic ``binance-prices`` (key = symbol).

Nothing is lost: aggregate-trade ids are consecutive per symbol, so any jump (a reconnect, a rollover, a
send that Kafka refused) is filled from REST ``/api/v3/aggTrades`` before newer trades are sent; a stop
during that backfill sends nothing past the gap. Per symbol, the id up to which Kafka acknowledged every
id sent (acknowledgements arrive out of order) is kept in ``<state>/producer/acked.json`` with the
SOURCE it belongs to, so a restarted producer backfills what happened while it was down, and a producer of
another SOURCE refuses to start on it. Duplicates this may cause are absorbed downstream (the consumer
writes idempotently on (symbol, agg_trade_id)).

Besides ``@aggTrade``, each symbol's ``@kline_1m`` stream is read: on a closing kline (``x: true``) the
producer makes sure every trade up to the kline's last trade id was sent, and once Kafka acknowledged
them all, sends a ``MarketClock`` (same key, so after those trades): the minute is complete.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websocket
from kafka import KafkaProducer
from kafka.errors import KafkaError
from kafka.partitioner import DefaultPartitioner
from prometheus_client import Counter, Histogram

from crypto_platform.credentials import KAFKA_PRODUCER, kafka_security
from crypto_platform.logs import configure_logging
from crypto_platform.settings import WORKER_PORT_STRIDE, PlatformSettings, SettingsError
from streaming_services.binance_rest import MINUTE_MS, PAGE, BinanceRest
from streaming_services.gap_fill import RestBehindStream, gap_page
from streaming_services.messages import InvalidMessage, MarketClock, TradeMessage, decode_agg_trade_frame
from streaming_services.producer_state import acked_path, load_acked_ids, write_state_file
from streaming_services.startup import StartupError, start_metrics, wait_for_kafka, worker_argument

CLOCK_POLL_S = 0.05  # how often acknowledgements are checked while a market clock waits for them
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
    kafka_security: dict[str, str] = field(default_factory=dict, repr=False)  # credentials.kafka_security

    @classmethod
    def from_settings(cls, settings: PlatformSettings, worker: int = 0) -> ProducerConfig:
        return cls(ws_url=settings.binance_ws_url, rest_url=settings.binance_rest_url,
                   symbols=worker_symbols(settings.symbols, worker, settings.producer_workers),
                   topic=settings.kafka_topic, bootstrap_servers=settings.kafka_bootstrap_servers,
                   source=settings.source, state_path=acked_path(settings.state_dir, worker),
                   stall_timeout_s=settings.producer_stall_timeout_s,
                   kafka_security=kafka_security(settings, KAFKA_PRODUCER))

    @property
    def stream_url(self) -> str:
        streams = "/".join(f"{symbol.lower()}@{kind}" for symbol in self.symbols for kind in ("aggTrade", "kline_1m"))
        return f"{self.ws_url}/stream?streams={streams}"


def worker_symbols(symbols: tuple[str, ...], worker: int, workers: int) -> tuple[str, ...]:
    """The symbols worker ``worker`` of ``workers`` streams: every symbol in exactly one worker."""
    return symbols[worker::workers]


class AckedIds:
    """Per symbol, the id up to which Kafka acknowledged every id sent; persisted atomically with its source.

    Acknowledgements arrive out of order (per partition, batches of several symbols): an id counts only once
    every id sent before it is acknowledged, and a refused id holds the position below it until it is sent
    again and acknowledged, so the saved position never passes an id Kafka has not confirmed.
    """

    def __init__(self, path: Path, symbols: tuple[str, ...], source: str) -> None:
        self.path = path
        self.source = source
        self._lock = threading.Lock()
        self._acked: dict[str, int] = load_acked_ids(path, symbols, source)
        self._in_flight: dict[str, dict[int, bool]] = {}  # per symbol, in send order: id → acknowledged
        self._rewind: dict[str, int] = {}

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._acked)

    def position(self, symbol: str) -> int | None:
        with self._lock:
            return self._acked.get(symbol)

    def sent(self, symbol: str, agg_id: int) -> None:
        """``agg_id`` was handed to Kafka (again, after a refusal: it keeps its place)."""
        with self._lock:
            self._in_flight.setdefault(symbol, {}).setdefault(agg_id, False)

    def acknowledge(self, symbol: str, agg_id: int) -> None:
        with self._lock:
            in_flight = self._in_flight.get(symbol, {})
            if agg_id not in in_flight:
                return
            in_flight[agg_id] = True
            while in_flight:
                first = next(iter(in_flight))
                if not in_flight[first]:
                    break
                del in_flight[first]
                if first > self._acked.get(symbol, -1):
                    self._acked[symbol] = first

    def refuse(self, symbol: str, agg_id: int) -> None:
        """Kafka refused ``agg_id``: it stays unacknowledged in its place, and is fetched and sent again."""
        with self._lock:
            self._rewind[symbol] = min(self._rewind.get(symbol, agg_id), agg_id)

    def take_rewinds(self) -> dict[str, int]:
        with self._lock:
            rewinds, self._rewind = self._rewind, {}
            return rewinds

    def save(self) -> None:
        write_state_file(self.path, self.source, self.snapshot())


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
            partitioner=SymbolPartitioner(), metrics_enabled=False, **config.kafka_security,
        )
        self.rest = BinanceRest(config.rest_url)
        self.acked = AckedIds(config.state_path, config.symbols, config.source)
        self.last_sent: dict[str, int] = self.acked.snapshot()
        self.last_trade_id: dict[str, int] = {}  # the last (plain) trade id of the last aggregate sent
        # Per symbol, market clocks waiting for Kafka to acknowledge every id up to theirs: (id, clock).
        self._clocks: dict[str, list[tuple[int | None, MarketClock]]] = {}
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
                self._send_due_clocks()
                if time.monotonic() - connected > self.config.rollover_after_s:
                    raise StreamInterrupted("rollover")
                ws.settimeout(CLOCK_POLL_S if self._clocks else 1)
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
        if event == "kline":
            kline = payload.get("k")
            try:
                if kline["x"] is True:
                    self.handle_closed_minute(str(kline["s"]).upper(), int(kline["t"]), int(kline["L"]),
                                              int(kline["T"]) + 1)
                return
            except (KeyError, TypeError, ValueError):
                pass
        # Malformed data from the exchange is kept, not dropped: the consumer dead-letters it with the reason.
        MESSAGES.labels("malformed").inc()
        self.kafka.send(self.config.topic, key=MALFORMED_KEY, value=raw)

    def handle_trade(self, trade: TradeMessage) -> None:
        last = self.last_sent.get(trade.symbol)
        if last is not None and trade.agg_trade_id <= last:
            return
        if last is None:
            # A symbol's first trade: its minute is sent whole, so that a market clock can vouch for it.
            last = self.rest.first_id_since(trade.symbol, trade.timestamp - trade.timestamp % MINUTE_MS) - 1
        if trade.agg_trade_id > last + 1:
            self.backfill(trade.symbol, last + 1, trade.agg_trade_id)
        self.send(trade, "live")

    def handle_closed_minute(self, symbol: str, open_ms: int, last_trade_id: int, closed_until_ms: int) -> None:
        """A closing kline: every trade up to its last trade id (-1 for a minute without trades) is sent, from
        REST if the stream has not brought it yet; the clock follows once Kafka acknowledged all of them."""
        if symbol not in self.config.symbols:
            return
        if last_trade_id >= 0 and self.last_trade_id.get(symbol, -1) < last_trade_id:
            last = self.last_sent.get(symbol)
            self.backfill(symbol, self.rest.first_id_since(symbol, open_ms) if last is None else last + 1)
        required = self.last_sent.get(symbol)
        self._clocks.setdefault(symbol, []).append(
            (required, MarketClock(symbol, closed_until_ms, self.config.source)))
        self._send_due_clocks()

    def _send_due_clocks(self) -> None:
        for symbol, waiting in self._clocks.items():
            position = self.acked.position(symbol)
            while waiting and (waiting[0][0] is None or (position is not None and position >= waiting[0][0])):
                clock = waiting.pop(0)[1]
                try:
                    self.kafka.send(self.config.topic, key=clock.key, value=clock.to_json())
                except KafkaError as exc:
                    # The next minute's clock says as much; nothing is lost by skipping this one.
                    log.warning("market clock not sent", extra={"symbol": symbol, "error": repr(exc)[:200]})
                MESSAGES.labels("clock").inc()
        self._clocks = {symbol: waiting for symbol, waiting in self._clocks.items() if waiting}

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
        before the trade that revealed the gap (the rule: ``gap_fill.gap_page``). Returns how many it sent."""
        next_id, sent = from_id, 0
        while True:
            if self._stop.is_set():
                # Returning would let the caller send the trade after the gap, and acked.json move past it.
                raise StreamInterrupted("stopped")
            rows = self.rest.agg_trades(symbol, next_id)
            trades = [TradeMessage.from_agg_trade({**row, "s": symbol}, self.config.source) for row in rows]
            try:
                page = gap_page(trades, next_id, until_id, PAGE)
            except RestBehindStream:
                raise StreamInterrupted("rest-behind-stream") from None
            if page.absent:
                log.warning("ids absent at the source", extra={"symbol": symbol, "from_id": next_id})
            for trade in page.missing:
                self.send(trade, "backfill")
            sent += len(page.missing)
            BACKFILLED.inc(len(page.missing))
            next_id = page.next_id
            if page.done:
                break
        if sent:
            GAPS.inc()
            log.info("gap backfilled",
                     extra={"symbol": symbol, "from_id": from_id, "until_id": next_id, "trades": sent})
        return sent

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
        self.acked.sent(symbol, agg_id)
        future.add_callback(delivered).add_errback(refused)
        self.last_sent[symbol] = agg_id
        self.last_trade_id[symbol] = trade.last_trade_id
        MESSAGES.labels(kind).inc()


def main(argv: list[str] | None = None) -> int:
    worker = worker_argument("python -m streaming_services.producer", argv)
    try:
        settings = PlatformSettings.from_env()
        if not 0 <= worker < settings.producer_workers:
            raise SettingsError(f"--worker {worker} is outside PRODUCER_WORKERS={settings.producer_workers}")
        config = ProducerConfig.from_settings(settings, worker)
        configure_logging(settings.log_level)
        start_metrics("PRODUCER_METRICS_PORT", settings, settings.producer_metrics_port + worker * WORKER_PORT_STRIDE)
        AckedIds(config.state_path, config.symbols, config.source)
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
