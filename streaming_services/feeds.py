"""Market feeds for the replay server, as pure functions: Binance CSV files and a synthetic market.

A feed is a per-symbol list of ``AggTrade`` in agg-id order. Binance's public files come in two shapes:
aggTrades (``agg_trade_id, price, quantity, first_trade_id, last_trade_id, transact_time, is_buyer_maker,
is_best_match``, no header) and trades (``id, price, qty, quote_qty, time, is_buyer_maker, is_best_match``,
with or without a header; a trade is an aggTrade with f = l). Times are ms, or µs in spot files since 2025.
"""

from __future__ import annotations

import csv
import io
import random
import re
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

MICROSECOND_THRESHOLD = 10**14  # epoch ms stay below this until the year 5138; µs are above it
SYMBOL_IN_NAME = re.compile(r"(?:^|[_-])([A-Z0-9]{5,20})(?=[_-])")
PLAIN_DECIMAL = re.compile(r"\d{1,20}(?:\.\d{1,20})?")  # how Binance writes prices and quantities
PRICE_SIGNIFICANT_DIGITS = 7
QTY_STEP = Decimal("0.00001")


class FeedError(ValueError):
    """A replay file the server cannot read; the message names the file and the line."""


@dataclass(frozen=True, slots=True)
class AggTrade:
    """One Binance aggregate trade, prices and quantities kept as Binance's decimal strings."""

    symbol: str
    agg_id: int
    price: str
    qty: str
    first_id: int
    last_id: int
    time_ms: int
    is_buyer_maker: bool

    def payload(self, event_time_ms: int) -> dict[str, Any]:
        """The ``<symbol>@aggTrade`` WebSocket payload, fields and types exactly as Binance sends them."""
        return {"e": "aggTrade", "E": event_time_ms, "s": self.symbol, "a": self.agg_id, "p": self.price,
                "q": self.qty, "f": self.first_id, "l": self.last_id, "T": self.time_ms,
                "m": self.is_buyer_maker, "M": True}

    def payload_json(self, event_time_ms: int) -> str:
        """``payload()`` as the compact JSON Binance sends, written directly: the replay server's hot path.

        Safe without escaping: the symbol is alphanumeric and ``parse_rows`` let only plain decimals through.
        """
        return (f'{{"e":"aggTrade","E":{event_time_ms},"s":"{self.symbol}","a":{self.agg_id},"p":"{self.price}",'
                f'"q":"{self.qty}","f":{self.first_id},"l":{self.last_id},"T":{self.time_ms},'
                f'"m":{"true" if self.is_buyer_maker else "false"},"M":true}}')

    def rest_row(self) -> dict[str, Any]:
        """A row of ``GET /api/v3/aggTrades`` (no symbol or event fields, as Binance answers)."""
        return {"a": self.agg_id, "p": self.price, "q": self.qty, "f": self.first_id, "l": self.last_id,
                "T": self.time_ms, "m": self.is_buyer_maker, "M": True}


def symbol_from_filename(path: Path) -> str:
    match = SYMBOL_IN_NAME.search(path.name.upper())
    if match is None:
        raise FeedError(f"{path}: no symbol in the file name (expected e.g. BTCUSDT-aggTrades-2024-01-01.csv)")
    return match.group(1)


def _to_ms(raw: str) -> int:
    value = int(raw)
    return value // 1000 if value >= MICROSECOND_THRESHOLD else value


def _flag(raw: str) -> bool:
    return raw.strip().lower() in {"true", "1"}


def _plain_decimal(raw: str, column: str) -> str:
    if PLAIN_DECIMAL.fullmatch(raw) is None:
        raise ValueError(f"{column} {raw[:40]!r} is not a plain decimal number")
    return raw


def iter_rows(symbol: str, rows: Iterable[list[str]], origin: str) -> Iterator[tuple[int, AggTrade]]:
    """Rows of an aggTrades or trades CSV (header optional) → (line number, AggTrade), in file order."""
    for line_number, row in enumerate(rows, start=1):
        if not row or (line_number == 1 and not row[0].strip().lstrip("-").isdigit()):
            continue
        try:
            if len(row) == 8:
                agg_id, price, qty, first_id, last_id, time_raw, maker = row[:7]
                yield line_number, AggTrade(symbol, int(agg_id), _plain_decimal(price, "price"),
                                            _plain_decimal(qty, "quantity"), int(first_id), int(last_id),
                                            _to_ms(time_raw), _flag(maker))
            elif len(row) == 7:
                trade_id, price, qty, _quote, time_raw, maker = row[:6]
                yield line_number, AggTrade(symbol, int(trade_id), _plain_decimal(price, "price"),
                                            _plain_decimal(qty, "qty"), int(trade_id), int(trade_id),
                                            _to_ms(time_raw), _flag(maker))
            else:
                raise FeedError(f"{origin}:{line_number}: {len(row)} columns, expected 7 (trades) or 8 (aggTrades)")
        except ValueError as exc:
            if isinstance(exc, FeedError):
                raise
            raise FeedError(f"{origin}:{line_number}: {exc}") from None


def parse_rows(symbol: str, rows: Iterable[list[str]], origin: str) -> list[AggTrade]:
    """Rows of an aggTrades or trades CSV (header optional) → AggTrades sorted by agg id."""
    return sorted((trade for _line, trade in iter_rows(symbol, rows, origin)), key=lambda t: t.agg_id)


def iter_binance_file(path: Path) -> Iterator[tuple[str, int, AggTrade]]:
    """A Binance trades or aggTrades file, ``.csv`` or ``.zip`` (every CSV inside), streamed in file order:
    (origin, line number, AggTrade), origin naming the file (and the member of a zip)."""
    if not path.is_file():
        raise FeedError(f"{path} is not a file")
    symbol = symbol_from_filename(path)
    if path.suffix.lower() == ".zip":
        origin, line_number = str(path), 0
        try:
            with zipfile.ZipFile(path) as archive:
                for name in archive.namelist():
                    if name.lower().endswith(".csv"):
                        origin, line_number = f"{path}!{name}", 0
                        with archive.open(name) as member:
                            text = io.TextIOWrapper(member, encoding="utf-8", newline="")
                            for line_number, trade in iter_rows(symbol, csv.reader(text), origin):
                                yield origin, line_number, trade
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, UnicodeDecodeError) as exc:
            where = f"{origin}:{line_number + 1}" if line_number or origin != str(path) else origin
            raise FeedError(f"{where}: corrupt zip archive ({exc})") from None
        return
    with path.open(newline="", encoding="utf-8") as handle:
        line_number = 0
        try:
            for line_number, trade in iter_rows(symbol, csv.reader(handle), str(path)):
                yield str(path), line_number, trade
        except UnicodeDecodeError as exc:
            raise FeedError(f"{path}:{line_number + 1}: not UTF-8 text ({exc.reason})") from None


def read_binance_file(path: Path) -> list[AggTrade]:
    """A Binance trades or aggTrades file, ``.csv`` or ``.zip`` (every CSV inside), sorted by agg id."""
    if not path.is_file():
        raise FeedError(f"REPLAY_FILES names {path}, which is not a file")
    return sorted((trade for _origin, _line, trade in iter_binance_file(path)), key=lambda t: t.agg_id)


def load_files(paths: Iterable[Path]) -> dict[str, list[AggTrade]]:
    """Every file's trades by symbol; several files of one symbol are merged, duplicates dropped."""
    by_symbol: dict[str, dict[int, AggTrade]] = {}
    for path in paths:
        for trade in read_binance_file(path):
            by_symbol.setdefault(trade.symbol, {})[trade.agg_id] = trade
    return {symbol: [trades[k] for k in sorted(trades)] for symbol, trades in by_symbol.items()}


def retime(trades: list[AggTrade], shift_ms: int) -> list[AggTrade]:
    """The same trades ``shift_ms`` later: a recorded day replayed as if it happened now."""
    return [replace(t, time_ms=t.time_ms + shift_ms) for t in trades]


@dataclass
class SyntheticSymbol:
    """A seeded random walk: several trades a second, consecutive agg ids, prices to 7 significant digits.

    Clearly not market data: its trades carry ``first_id``/``last_id`` from its own counter and the
    replay server labels the feed ``synthetic``.
    """

    symbol: str
    price: Decimal
    rng: random.Random
    next_agg_id: int = 1
    next_trade_id: int = 1
    trades_per_second: float = 5.0
    volatility: float = 0.0004
    next_time_ms: int = 0

    def start(self, start_ms: int) -> None:
        self.next_time_ms = start_ms + self._gap_ms()

    def checkpoint(self) -> dict[str, Any]:
        """Everything the walk needs to continue exactly from here after a restart (JSON-serialisable)."""
        version, state, gauss_next = self.rng.getstate()
        return {"price": str(self.price), "next_agg_id": self.next_agg_id, "next_trade_id": self.next_trade_id,
                "next_time_ms": self.next_time_ms, "rng": [version, list(state), gauss_next]}

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Continues from a ``checkpoint()``: the same trades follow, ids and prices alike."""
        self.price = Decimal(checkpoint["price"])
        self.next_agg_id = int(checkpoint["next_agg_id"])
        self.next_trade_id = int(checkpoint["next_trade_id"])
        self.next_time_ms = int(checkpoint["next_time_ms"])
        version, state, gauss_next = checkpoint["rng"]
        self.rng.setstate((version, tuple(state), gauss_next))

    def _gap_ms(self) -> int:
        return max(1, int(self.rng.expovariate(self.trades_per_second) * 1000))

    def trades_until(self, end_ms: int) -> Iterator[AggTrade]:
        """The walk's trades with times before ``end_ms`` not yet produced (call ``start`` first)."""
        while self.next_time_ms < end_ms:
            now = self.next_time_ms
            self.next_time_ms += self._gap_ms()
            move = Decimal(str(self.rng.gauss(0, self.volatility)))
            tick = max(Decimal("1E-8"), Decimal(1).scaleb(self.price.adjusted() - PRICE_SIGNIFICANT_DIGITS + 1))
            self.price = max(tick, (self.price * (1 + move)).quantize(tick, ROUND_HALF_EVEN))
            count = 1 if self.rng.random() < 0.7 else self.rng.randint(2, 5)
            qty = Decimal(str(self.rng.lognormvariate(-3, 1.2))).quantize(QTY_STEP) or QTY_STEP
            trade = AggTrade(self.symbol, self.next_agg_id, f"{self.price:.8f}", f"{qty:.8f}", self.next_trade_id,
                             self.next_trade_id + count - 1, now, self.rng.random() < 0.5)
            self.next_agg_id += 1
            self.next_trade_id += count
            yield trade


START_PRICES = {"BTCUSDT": "65000.00", "ETHUSDT": "3200.00", "BNBUSDT": "580.00", "SOLUSDT": "150.00",
                "XRPUSDT": "0.60"}


def synthetic_market(symbols: Iterable[str], seed: int) -> dict[str, SyntheticSymbol]:
    """One reproducible walk per symbol: the same seed gives the same trades."""
    return {
        symbol: SyntheticSymbol(symbol, Decimal(START_PRICES.get(symbol, "100.00")),
                                random.Random(f"{seed}:{symbol}"))
        for symbol in symbols
    }
