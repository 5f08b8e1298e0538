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
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

MINUTE_MS = 60_000
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


def symbol_from_filename(path: Path, symbols: Iterable[str] | None = None) -> str:
    """The symbol a Binance file's name carries; with ``symbols``, the one of them it names, or a FeedError."""
    name = path.name.upper()
    if symbols is None:
        match = SYMBOL_IN_NAME.search(name)
        if match is None:
            raise FeedError(f"{path}: no symbol in the file name (expected e.g. BTCUSDT-aggTrades-2024-01-01.csv)")
        return match.group(1)
    wanted = tuple(symbols)
    named = [token for token in re.split(r"[^A-Z0-9]+", name) if token in wanted]
    if len(set(named)) != 1:
        raise FeedError(f"REPLAY_FILES: {path} names {'several' if named else 'none'} of SYMBOLS="
                        f"{','.join(wanted)}; rename it to <SYMBOL>-aggTrades-<date>.csv with one of them")
    return named[0]


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


def iter_binance_file(path: Path, symbols: Iterable[str] | None = None) -> Iterator[tuple[str, int, AggTrade]]:
    """A Binance trades or aggTrades file, ``.csv`` or ``.zip`` (every CSV inside), streamed in file order:
    (origin, line number, AggTrade), origin naming the file (and the member of a zip)."""
    if not path.is_file():
        raise FeedError(f"{path} is not a file")
    symbol = symbol_from_filename(path, symbols)
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


def read_binance_file(path: Path, symbols: Iterable[str] | None = None) -> list[AggTrade]:
    """A Binance trades or aggTrades file, ``.csv`` or ``.zip`` (every CSV inside), sorted by agg id, of the
    symbol its name carries (with ``symbols``: of those, else a ``FeedError``)."""
    if not path.is_file():
        raise FeedError(f"REPLAY_FILES names {path}, which is not a file")
    return sorted((trade for _origin, _line, trade in iter_binance_file(path, symbols)), key=lambda t: t.agg_id)


def load_files(paths: Iterable[Path], symbols: Iterable[str] | None = None) -> dict[str, list[AggTrade]]:
    """Every file's trades by symbol; several files of one symbol are merged, duplicates dropped."""
    by_symbol: dict[str, dict[int, AggTrade]] = {}
    for path in paths:
        for trade in read_binance_file(path, symbols):
            by_symbol.setdefault(trade.symbol, {})[trade.agg_id] = trade
    return {symbol: [trades[k] for k in sorted(trades)] for symbol, trades in by_symbol.items()}


@dataclass(frozen=True, slots=True)
class Kline:
    """A closed one-minute kline as Binance's ``<symbol>@kline_1m`` stream sends it at the close (``x: true``).

    ``first_id``/``last_id`` are *trade* ids (-1 both for a minute without trades, whose prices are the
    previous close and whose volumes are zero).
    """

    symbol: str
    open_ms: int
    first_id: int
    last_id: int
    open: str
    close: str
    high: str
    low: str
    volume: Decimal
    quote_volume: Decimal
    taker_volume: Decimal
    taker_quote_volume: Decimal
    trades: int

    def payload(self, event_time_ms: int) -> dict[str, Any]:
        return {"e": "kline", "E": event_time_ms, "s": self.symbol, "k": {
            "t": self.open_ms, "T": self.open_ms + MINUTE_MS - 1, "s": self.symbol, "i": "1m",
            "f": self.first_id, "L": self.last_id, "o": self.open, "c": self.close, "h": self.high, "l": self.low,
            "v": f"{self.volume:.8f}", "n": self.trades, "x": True, "q": f"{self.quote_volume:.8f}",
            "V": f"{self.taker_volume:.8f}", "Q": f"{self.taker_quote_volume:.8f}", "B": "0"}}


@dataclass
class KlineBuilder:
    """One symbol's one-minute klines from its trades (in id order), each closed once the clock passes its end."""

    symbol: str
    open_ms: int | None = None
    last_close: str | None = None
    pending: deque[AggTrade] = field(default_factory=deque)

    def add(self, trade: AggTrade) -> None:
        if self.open_ms is None:
            self.open_ms = trade.time_ms - trade.time_ms % MINUTE_MS
        self.pending.append(trade)

    def close_until(self, clock_ms: int) -> list[Kline]:
        """The klines of every minute that ended by ``clock_ms``, with or without trades, oldest first."""
        closed: list[Kline] = []
        while self.open_ms is not None and self.open_ms + MINUTE_MS <= clock_ms:
            end = self.open_ms + MINUTE_MS
            minute: list[AggTrade] = []
            while self.pending and self.pending[0].time_ms < end:
                minute.append(self.pending.popleft())
            closed.append(self._kline(self.open_ms, minute))
            self.open_ms = end
        return closed

    def _kline(self, open_ms: int, trades: list[AggTrade]) -> Kline:
        if not trades:
            zero = Decimal(0)
            return Kline(self.symbol, open_ms, -1, -1, self.last_close, self.last_close, self.last_close,
                         self.last_close, zero, zero, zero, zero, 0)
        prices = [Decimal(t.price) for t in trades]
        quotes = [Decimal(t.price) * Decimal(t.qty) for t in trades]
        taker = [i for i, t in enumerate(trades) if not t.is_buyer_maker]
        self.last_close = trades[-1].price
        return Kline(self.symbol, open_ms, trades[0].first_id, trades[-1].last_id, trades[0].price,
                     trades[-1].price, trades[prices.index(max(prices))].price,
                     trades[prices.index(min(prices))].price, sum(Decimal(t.qty) for t in trades), sum(quotes),
                     sum(Decimal(trades[i].qty) for i in taker), sum(quotes[i] for i in taker),
                     sum(t.last_id - t.first_id + 1 for t in trades))


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
