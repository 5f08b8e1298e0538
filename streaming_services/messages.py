"""``TradeMessage``: the one definition of a trade on the Kafka topic, for producer and consumer alike.

The wire format is the seed's JSON shape (``symbol, price, timestamp, event_time, volume``) plus the
aggTrade identity (``agg_trade_id, first_trade_id, last_trade_id, trades, is_buyer_maker, source``).
Prices and quantities are JSON numbers written with exactly Binance's digits and read back as
``Decimal``, so no float ever touches them between Binance and PostgreSQL.

Decoding is fused with validation: msgspec decoders check types and ranges while they parse (a few µs a
message), and only a message they refuse goes through the field-by-field checks, which name the reason.
"""

from __future__ import annotations

import functools
import json
import re
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

import msgspec

MAX_MESSAGE_BYTES = 64 * 1024
# The trades table stores NUMERIC(20, 8): 12 integer digits, 8 decimals.
MAX_INTEGER_DIGITS = 12
MAX_DECIMAL_PLACES = 8
# Binance spot started in July 2017; a trade time a day ahead of this machine's clock is not plausible.
EARLIEST_TRADE_MS = 1_498_867_200_000
MAX_CLOCK_SKEW_MS = 24 * 3600 * 1000
MAX_SOURCE_LENGTH = 16
MAX_TRADES_PER_AGGREGATE = 2**31 - 1  # the trades column is an INTEGER
# price × volume of one trade. The candle job sums it as Spark's DecimalType(38, 16) (22 integer digits,
# crypto_assets/transforms.py QUOTE, and NUMERIC(38, 16) columns): below 10^14 a trade leaves room for
# 10^8 trades in one sum (a minute, or the 24 hours of latest_prices), so whatever passes can be aggregated.
# Volumes alike: NUMERIC(20, 8) per trade (< 10^12) summed as DecimalType(28, 8) (< 10^20) fits 10^8 trades.
MAX_TRADE_QUOTE = Decimal(10) ** 14
MARKET_CLOCK_EVENT = "marketClock"


class InvalidMessage(ValueError):
    """A message that cannot become a row; the text is the reason stored with its dead letter."""


class TradeMessage(msgspec.Struct, frozen=True, gc=False):
    """One Binance aggregate trade as the platform carries it (a msgspec Struct: built ten times faster than
    a frozen dataclass, which counts at tens of thousands a second). Its fields are numbers and texts, so it
    can never be part of a reference cycle: the garbage collector does not track it (``gc=False``), which
    keeps the collector's passes short while a consumer holds tens of thousands of trades."""

    symbol: str
    price: Decimal
    volume: Decimal
    timestamp: int
    agg_trade_id: int
    first_trade_id: int
    last_trade_id: int
    is_buyer_maker: bool
    source: str

    @property
    def trades(self) -> int:
        """Binance's trade count of this aggregate (its kline count adds these up)."""
        return self.last_trade_id - self.first_trade_id + 1

    @property
    def event_time(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp / 1000, tz=UTC)

    @property
    def key(self) -> bytes:
        """Kafka key: the symbol, so that one symbol's trades stay in order in one partition."""
        return self.symbol.encode()

    @classmethod
    def from_agg_trade(cls, payload: dict[str, Any], source: str) -> TradeMessage:
        """From a Binance ``aggTrade`` WebSocket payload or a REST ``/api/v3/aggTrades`` row."""
        try:
            return cls(
                symbol=str(payload.get("s") or payload["symbol"]).upper(),
                price=Decimal(payload["p"]),
                volume=Decimal(payload["q"]),
                timestamp=int(payload["T"]),
                agg_trade_id=int(payload["a"]),
                first_trade_id=int(payload["f"]),
                last_trade_id=int(payload["l"]),
                is_buyer_maker=bool(payload["m"]),
                source=source,
            )
        except (KeyError, TypeError, ValueError, InvalidOperation) as exc:
            raise InvalidMessage(f"not a Binance aggTrade: {exc!r}") from None

    def to_json(self) -> bytes:
        """The Kafka value. Decimals are written as JSON numbers with their exact digits."""
        ms = self.timestamp
        return (
            "{"
            f'"symbol":{_json_string(self.symbol)},'
            f'"price":{self.price},'
            f'"timestamp":{ms},'
            f'"event_time":"{utc_text(ms)}",'
            f'"volume":{self.volume},'
            f'"trades":{self.last_trade_id - self.first_trade_id + 1},'
            f'"agg_trade_id":{self.agg_trade_id},'
            f'"first_trade_id":{self.first_trade_id},'
            f'"last_trade_id":{self.last_trade_id},'
            f'"is_buyer_maker":{"true" if self.is_buyer_maker else "false"},'
            f'"source":{_json_string(self.source)}'
            "}"
        ).encode()


@functools.lru_cache(maxsize=4096)
def _json_string(text: str) -> str:
    """A JSON string literal; symbols and sources are few, so each is escaped once."""
    return json.dumps(text)


@functools.lru_cache(maxsize=4096)
def _utc_second(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")


def utc_text(ms: int) -> str:
    """Epoch milliseconds as ISO 8601 UTC (``2023-04-04T23:59:59.999Z``); trades arrive in time order, so
    the formatted second is nearly always cached."""
    return f"{_utc_second(ms // 1000)}.{ms % 1000:03d}Z"


class _AggTradeData(msgspec.Struct):
    """A Binance aggTrade payload exactly as Binance types it; anything else takes the general path."""

    e: Literal["aggTrade"]
    s: Annotated[str, msgspec.Meta(min_length=1)]
    a: int
    p: str
    q: str
    f: int
    l: int  # noqa: E741 - Binance's field name
    T: int
    m: bool


class _StreamFrame(msgspec.Struct):
    data: _AggTradeData


_STREAM_FRAME_DECODER = msgspec.json.Decoder(_StreamFrame)


def decode_agg_trade_frame(raw: bytes, source: str) -> TradeMessage | None:
    """The fast path of the producer: a combined-stream aggTrade frame (``{"stream":…,"data":{"e":"aggTrade",…}}``)
    → its trade; ``None`` for any other frame (control events, malformed data), which the caller handles."""
    try:
        data = _STREAM_FRAME_DECODER.decode(raw).data
        return TradeMessage(symbol=data.s.upper(), price=Decimal(data.p), volume=Decimal(data.q), timestamp=data.T,
                            agg_trade_id=data.a, first_trade_id=data.f, last_trade_id=data.l,
                            is_buyer_maker=data.m, source=source)
    except (msgspec.DecodeError, InvalidOperation):
        return None


class MarketClock(msgspec.Struct, frozen=True, gc=False):
    """The exchange's clock for one symbol: every trade of ``symbol`` from ``source`` with a trade time
    before ``closed_until_ms`` has been sent before this message, on the same partition (key = symbol).

    The producer sends it on Binance's closing kline (``x: true``) once Kafka acknowledged every trade up to
    that kline's last trade id; the consumer keeps the greatest value in ``stock.market_clock``.
    """

    symbol: str
    closed_until_ms: int
    source: str

    @property
    def key(self) -> bytes:
        return self.symbol.encode()

    def to_json(self) -> bytes:
        return json.dumps({"e": MARKET_CLOCK_EVENT, "s": self.symbol, "closedUntil": self.closed_until_ms,
                           "source": self.source}, separators=(",", ":")).encode()


def _reject_constant(name: str) -> Any:
    raise InvalidMessage(f"{name} is not a number")


# One decoder for every message: ``json.loads`` with options builds a new one per call.
_DECODER = json.JSONDecoder(parse_float=Decimal, parse_constant=_reject_constant)


def _decimal(doc: dict[str, Any], name: str) -> Decimal:
    value = doc.get(name)
    if isinstance(value, bool) or not isinstance(value, (Decimal, int, str)):
        raise InvalidMessage(f"{name} must be a decimal number, got {type(value).__name__}")
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise InvalidMessage(f"{name}={value!r} is not a decimal number") from None
    return number


def _check_amount(name: str, number: Decimal) -> Decimal:
    if not number.is_finite():
        raise InvalidMessage(f"{name} is not finite")
    if number <= 0:
        raise InvalidMessage(f"{name}={number} must be greater than 0")
    sign, digits, exponent = number.as_tuple()
    decimals = max(0, -exponent)
    if decimals > MAX_DECIMAL_PLACES:
        raise InvalidMessage(f"{name}={number} has more than {MAX_DECIMAL_PLACES} decimal places")
    if number.adjusted() >= MAX_INTEGER_DIGITS:
        raise InvalidMessage(f"{name}={number} has more than {MAX_INTEGER_DIGITS} integer digits")
    return number


def _integer(doc: dict[str, Any], name: str, minimum: int = 0) -> int:
    value = doc.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidMessage(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum or value > 2**63 - 1:
        raise InvalidMessage(f"{name}={value} is out of range")
    return value


_Id = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


class _WireTrade(msgspec.Struct, gc=False):
    """The Kafka value as the fast decoder reads it: types and ranges are checked while parsing."""

    symbol: str
    price: Decimal
    volume: Decimal
    timestamp: _Id
    agg_trade_id: _Id
    first_trade_id: _Id
    last_trade_id: _Id
    is_buyer_maker: bool
    source: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_SOURCE_LENGTH)]
    trades: int | msgspec.UnsetType = msgspec.UNSET


_WIRE_DECODER = msgspec.json.Decoder(_WireTrade)


# ``str`` of a Decimal in plain notation that fits NUMERIC(20, 8); its digits carry no leading zeros.
_PLAIN_AMOUNT = re.compile(rf"[0-9]{{1,{MAX_INTEGER_DIGITS}}}(?:\.[0-9]{{1,{MAX_DECIMAL_PLACES}}})?").fullmatch


def _exact_amount(number: Decimal) -> bool:
    """What ``_decimal`` accepts, as a predicate: finite, positive, fits NUMERIC(20, 8). One match on ``str``
    decides the usual case (half the cost of the checks one by one); other forms take those checks."""
    text = str(number)
    if _PLAIN_AMOUNT(text) is not None:
        return number > 0
    if not (number.is_finite() and number > 0 and number.adjusted() < MAX_INTEGER_DIGITS):
        return False
    if "E" in text:
        return -number.as_tuple().exponent <= MAX_DECIMAL_PLACES
    dot = text.find(".")
    return dot < 0 or len(text) - dot - 1 <= MAX_DECIMAL_PLACES


def _decode_valid(raw: bytes, known_symbols: frozenset[str], now_ms: int) -> TradeMessage | None:
    """The fast path: the trade when every rule holds, else ``None`` (the reasoned path explains why)."""
    try:
        wire = _WIRE_DECODER.decode(raw)
    except msgspec.DecodeError:
        return None
    span = wire.last_trade_id - wire.first_trade_id + 1
    if (wire.symbol in known_symbols and EARLIEST_TRADE_MS <= wire.timestamp <= now_ms + MAX_CLOCK_SKEW_MS
            and 1 <= span <= MAX_TRADES_PER_AGGREGATE and (wire.trades is msgspec.UNSET or wire.trades == span)
            and wire.source.isprintable() and _exact_amount(wire.price) and _exact_amount(wire.volume)
            and wire.price * wire.volume < MAX_TRADE_QUOTE):
        return TradeMessage(wire.symbol, wire.price, wire.volume, wire.timestamp, wire.agg_trade_id,
                            wire.first_trade_id, wire.last_trade_id, wire.is_buyer_maker, wire.source)
    return None


def parse_trade_message(raw: bytes | None, known_symbols: frozenset[str], now_ms: int) -> TradeMessage:
    """Validates one Kafka value; raises ``InvalidMessage`` with the reason for anything unusable."""
    if raw is None:
        raise InvalidMessage("empty message (tombstone)")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise InvalidMessage(f"message of {len(raw)} bytes exceeds {MAX_MESSAGE_BYTES}")
    trade = _decode_valid(raw, known_symbols, now_ms)
    return trade if trade is not None else _parse_with_reasons(raw, known_symbols, now_ms)


def parse_message(raw: bytes | None, known_symbols: frozenset[str], now_ms: int) -> TradeMessage | MarketClock:
    """A trade or a market clock; raises ``InvalidMessage`` with the reason for anything unusable."""
    try:
        return parse_trade_message(raw, known_symbols, now_ms)
    except InvalidMessage:
        clock = _market_clock(raw or b"", known_symbols, now_ms)
        if clock is None:
            raise
        return clock


def _market_clock(raw: bytes, known_symbols: frozenset[str], now_ms: int) -> MarketClock | None:
    """The market clock ``raw`` holds, ``None`` if it is not one; ``InvalidMessage`` if it is a bad one."""
    try:
        doc = _DECODER.decode(raw.decode("utf-8"))
    except (InvalidMessage, UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or doc.get("e") != MARKET_CLOCK_EVENT:
        return None
    symbol, source = doc.get("s"), doc.get("source")
    if not isinstance(symbol, str) or symbol not in known_symbols:
        raise InvalidMessage(f"unknown symbol {str(symbol)[:40]!r}")
    if not isinstance(source, str) or not source or len(source) > MAX_SOURCE_LENGTH or not source.isprintable():
        raise InvalidMessage(f"source must be 1 to {MAX_SOURCE_LENGTH} printable characters")
    closed_until = _integer(doc, "closedUntil")
    if not EARLIEST_TRADE_MS <= closed_until <= now_ms + MAX_CLOCK_SKEW_MS:
        raise InvalidMessage(f"closedUntil={closed_until} is not a plausible market time")
    return MarketClock(symbol, closed_until, source)


def _parse_with_reasons(raw: bytes, known_symbols: frozenset[str], now_ms: int) -> TradeMessage:
    """The rules field by field, each failure with its reason; the fast path must never accept more."""
    try:
        doc = _DECODER.decode(raw.decode("utf-8"))
    except InvalidMessage:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidMessage(f"malformed JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidMessage(f"message must be a JSON object, got {type(doc).__name__}")
    missing = [n for n in ("symbol", "price", "volume", "timestamp", "agg_trade_id", "first_trade_id",
                           "last_trade_id", "is_buyer_maker", "source") if n not in doc]
    if missing:
        raise InvalidMessage(f"missing fields: {', '.join(missing)}")
    symbol = doc["symbol"]
    if not isinstance(symbol, str):
        raise InvalidMessage(f"symbol must be a string, got {type(symbol).__name__}")
    is_buyer_maker = doc["is_buyer_maker"]
    if not isinstance(is_buyer_maker, bool):
        raise InvalidMessage("is_buyer_maker must be true or false")
    source = doc["source"]
    if not isinstance(source, str):
        raise InvalidMessage(f"source must be 1 to {MAX_SOURCE_LENGTH} printable characters")
    trade = check_trade(TradeMessage(
        symbol=symbol,
        price=_decimal(doc, "price"),
        volume=_decimal(doc, "volume"),
        timestamp=_integer(doc, "timestamp"),
        agg_trade_id=_integer(doc, "agg_trade_id"),
        first_trade_id=_integer(doc, "first_trade_id"),
        last_trade_id=_integer(doc, "last_trade_id"),
        is_buyer_maker=is_buyer_maker,
        source=source,
    ), known_symbols, now_ms)
    if "trades" in doc and doc["trades"] != trade.trades:
        raise InvalidMessage("trades does not equal last_trade_id - first_trade_id + 1")
    return trade


def check_trade(trade: TradeMessage, known_symbols: frozenset[str], now_ms: int) -> TradeMessage:
    """The value rules of every trade, whatever carried it: a Kafka message (``parse_trade_message``) or a
    row of an imported Binance file. Raises ``InvalidMessage`` with the reason; returns the trade."""
    if trade.symbol not in known_symbols:
        raise InvalidMessage(f"unknown symbol {trade.symbol[:40]!r}")
    if not EARLIEST_TRADE_MS <= trade.timestamp <= now_ms + MAX_CLOCK_SKEW_MS:
        raise InvalidMessage(f"timestamp={trade.timestamp} is not a plausible trade time")
    for name in ("agg_trade_id", "first_trade_id", "last_trade_id"):
        if not 0 <= getattr(trade, name) <= 2**63 - 1:
            raise InvalidMessage(f"{name}={getattr(trade, name)} is out of range")
    if trade.last_trade_id < trade.first_trade_id:
        raise InvalidMessage("last_trade_id is lower than first_trade_id")
    if trade.last_trade_id - trade.first_trade_id + 1 > MAX_TRADES_PER_AGGREGATE:
        raise InvalidMessage("last_trade_id - first_trade_id spans more trades than one aggregate can hold")
    if not trade.source or len(trade.source) > MAX_SOURCE_LENGTH or not trade.source.isprintable():
        raise InvalidMessage(f"source must be 1 to {MAX_SOURCE_LENGTH} printable characters")
    _check_amount("price", trade.price)
    _check_amount("volume", trade.volume)
    if trade.price * trade.volume >= MAX_TRADE_QUOTE:
        raise InvalidMessage(f"price × volume = {trade.price * trade.volume} is not below {MAX_TRADE_QUOTE:.0e}: the"
                             " candle job could not aggregate it (DecimalType(38, 16) sums)")
    return trade
