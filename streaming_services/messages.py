"""``TradeMessage``: the one definition of a trade on the Kafka topic, for producer and consumer alike.

The wire format is the seed's JSON shape (``symbol, price, timestamp, event_time, volume``) plus the
aggTrade identity (``agg_trade_id, first_trade_id, last_trade_id, trades, is_buyer_maker, source``).
Prices and quantities are JSON numbers written with exactly Binance's digits and read back as
``Decimal``, so no float ever touches them between Binance and PostgreSQL.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

MAX_MESSAGE_BYTES = 64 * 1024
# The trades table stores NUMERIC(20, 8): 12 integer digits, 8 decimals.
MAX_INTEGER_DIGITS = 12
MAX_DECIMAL_PLACES = 8
# Binance spot started in July 2017; a trade time a day ahead of this machine's clock is not plausible.
EARLIEST_TRADE_MS = 1_498_867_200_000
MAX_CLOCK_SKEW_MS = 24 * 3600 * 1000
MAX_SOURCE_LENGTH = 16
MAX_TRADES_PER_AGGREGATE = 2**31 - 1  # the trades column is an INTEGER


class InvalidMessage(ValueError):
    """A message that cannot become a row; the text is the reason stored with its dead letter."""


@dataclass(frozen=True, slots=True)
class TradeMessage:
    """One Binance aggregate trade as the platform carries it."""

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
        event_time = datetime.fromtimestamp(ms // 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"
        return (
            "{"
            f'"symbol":{json.dumps(self.symbol)},'
            f'"price":{self.price},'
            f'"timestamp":{ms},'
            f'"event_time":"{event_time}",'
            f'"volume":{self.volume},'
            f'"trades":{self.trades},'
            f'"agg_trade_id":{self.agg_trade_id},'
            f'"first_trade_id":{self.first_trade_id},'
            f'"last_trade_id":{self.last_trade_id},'
            f'"is_buyer_maker":{"true" if self.is_buyer_maker else "false"},'
            f'"source":{json.dumps(self.source)}'
            "}"
        ).encode()


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


def parse_trade_message(raw: bytes | None, known_symbols: frozenset[str], now_ms: int) -> TradeMessage:
    """Validates one Kafka value; raises ``InvalidMessage`` with the reason for anything unusable."""
    if raw is None:
        raise InvalidMessage("empty message (tombstone)")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise InvalidMessage(f"message of {len(raw)} bytes exceeds {MAX_MESSAGE_BYTES}")
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
    return trade
