"""Market feeds for the replay server, as pure functions: Binance CSV files and a synthetic market.

A feed is a per-symbol list of ``AggTrade`` in agg-id order. Binance's public files come in two shapes:
aggTrades (``agg_trade_id, price, quantity, first_trade_id, last_trade_id, transact_time, is_buyer_maker,
is_best_match``, no header) and trades (``id, price, qty, quote_qty, time, is_buyer_maker, is_best_match``,
with or without a header; a trade is an aggTrade with f = l). Times are ms, or µs in spot files since 2025.
Both are read by one parser, ``iter_trade_batches`` (Arrow's CSV reader): the replay server's files and the
importer's.
"""

from __future__ import annotations

import codecs
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

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

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

        Safe without escaping: the symbol is alphanumeric and the parser lets only plain decimals through.
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


BLOCK_BYTES = 4 << 20  # Arrow's CSV block: about 50,000 aggTrades rows per batch
BATCH_SCHEMA = pa.schema([("agg_id", pa.int64()), ("price", pa.string()), ("qty", pa.string()),
                          ("first_id", pa.int64()), ("last_id", pa.int64()), ("time_ms", pa.int64()),
                          ("is_buyer_maker", pa.bool_()), ("line", pa.int64())])
# Which raw column holds each field, by the file's column count: aggTrades (8) or trades (7, f = l = id).
LAYOUTS = {8: {"agg_id": 0, "price": 1, "qty": 2, "first_id": 3, "last_id": 4, "time": 5, "maker": 6},
           7: {"agg_id": 0, "price": 1, "qty": 2, "first_id": 0, "last_id": 0, "time": 4, "maker": 5}}
QTY_NAMES = {8: "quantity", 7: "qty"}
INTEGER_TEXT = re.compile(rb"-?\d{1,19}")
ARROW_ROW = re.compile(r"Row #(\d+): ")
TRUE_FLAG = r"(?i)^\s*(true|1)\s*$"


@dataclass(frozen=True)
class TradeBatch:
    """Consecutive trades of one file in file order, as Arrow columns (``BATCH_SCHEMA``): ids and times
    (ms) as int64, prices and quantities as Binance's decimal strings, ``line`` the line each came from."""

    symbol: str
    origin: str
    columns: pa.RecordBatch

    def trades(self) -> Iterator[AggTrade]:
        c = self.columns
        for agg_id, price, qty, first_id, last_id, time_ms, maker in zip(
                *(c.column(i).to_pylist() for i in range(7)), strict=True):
            yield AggTrade(self.symbol, agg_id, price, qty, first_id, last_id, time_ms, maker)


def _first_false(mask: pa.Array) -> int | None:
    """The index of the first false (or null) of a boolean array, or None when all are true."""
    mask = pc.fill_null(mask, False)
    if len(mask) == 0 or pc.all(mask).as_py():
        return None
    return pc.index(mask, False).as_py()


def _integers(raw: pa.Array, column: str) -> tuple[pa.Array, tuple[int, str] | None]:
    """An integer column as int64 and, if a value is not an integer, (its index, the reason)."""
    try:
        return raw.cast(pa.int64()), None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        for index, value in enumerate(raw.to_pylist()):
            if INTEGER_TEXT.fullmatch(value) is None or not -2**63 <= int(value) < 2**63:
                return raw, (index, f"{column} {value[:40]!r} is not an integer")
        raise


def _columns(raw: pa.RecordBatch, lines: pa.Array) -> tuple[pa.RecordBatch, tuple[int, str] | None]:
    """Raw binary columns → ``BATCH_SCHEMA``, and the first bad row (index, reason) if there is one;
    the rows before a bad one are good."""
    layout, width = LAYOUTS[raw.num_columns], raw.num_columns
    problems: list[tuple[int, str]] = []
    values: dict[str, pa.Array] = {}
    for name, column in (("price", "price"), ("qty", QTY_NAMES[width])):
        text = raw.column(layout[name])
        bad = _first_false(pc.match_substring_regex(text, f"^{PLAIN_DECIMAL.pattern}$"))
        if bad is not None:
            problems.append((bad, f"{column} {text[bad].as_py().decode('utf-8', 'replace')[:40]!r}"
                                  " is not a plain decimal number"))
            text = text.slice(0, bad)
        values[name] = text.cast(pa.string())
    for name, column in (("agg_id", "agg_trade_id"), ("first_id", "first_trade_id"), ("last_id", "last_trade_id"),
                         ("time", "transact_time")):
        values[name], problem = _integers(raw.column(layout[name]), column)
        if problem is not None:
            problems.append(problem)
    if problems:
        bad = min(problems)
        good, _ = _columns(raw.slice(0, bad[0]), lines.slice(0, bad[0]))
        return good, bad
    time_raw = values["time"]
    time_ms = pc.if_else(pc.greater_equal(time_raw, MICROSECOND_THRESHOLD), pc.divide(time_raw, 1000), time_raw)
    maker = pc.match_substring_regex(raw.column(layout["maker"]), TRUE_FLAG)
    return pa.RecordBatch.from_arrays([values["agg_id"], values["price"], values["qty"], values["first_id"],
                                       values["last_id"], time_ms, maker, lines], schema=BATCH_SCHEMA), None


class _Utf8Checked:
    """A binary stream that raises a FeedError naming the line of the first byte that is not UTF-8 text
    (Arrow reads binary columns unchecked; this keeps the replay server's promise of text)."""

    def __init__(self, raw: Any, origin: str) -> None:
        self.raw, self.origin, self.lines = raw, origin, 0
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.closed = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        try:
            self.decoder.decode(data, final=not data)
        except UnicodeDecodeError as exc:
            line = self.lines + data.count(b"\n", 0, max(exc.start, 0)) + 1
            raise FeedError(f"{self.origin}:{line}: not UTF-8 text ({exc.reason})") from None
        self.lines += data.count(b"\n")
        return data


def _csv_batches(stream: Any, symbol: str, origin: str) -> Iterator[TradeBatch]:
    """One CSV stream → TradeBatches; a bad line raises a FeedError naming it, after the rows before it.

    Format detection lives here alone: the column count of the first line (8 aggTrades, 7 trades), a header
    (a first line whose first field is not a number) skipped, ms or µs per value, empty lines skipped."""
    invalid: list[tuple[int, int]] = []

    def on_invalid(row: Any) -> str:
        invalid.append((row.number or 0, row.actual_columns))
        return "skip"

    try:
        reader = pa_csv.open_csv(
            _Utf8Checked(stream, origin),
            read_options=pa_csv.ReadOptions(autogenerate_column_names=True, use_threads=False, block_size=BLOCK_BYTES),
            parse_options=pa_csv.ParseOptions(ignore_empty_lines=False, invalid_row_handler=on_invalid),
            convert_options=pa_csv.ConvertOptions(column_types={f"f{i}": pa.binary() for i in range(16)}))
    except pa.ArrowInvalid as exc:
        if "Empty CSV file" in str(exc):
            return
        raise FeedError(f"{origin}:1: {exc}") from None
    width, done = len(reader.schema), 0
    if width not in LAYOUTS:
        raise FeedError(f"{origin}:1: {width} columns, expected 7 (trades) or 8 (aggTrades)")
    while True:
        try:
            raw = reader.read_next_batch()
        except StopIteration:
            raw = None
        except pa.ArrowInvalid as exc:
            reason = str(exc).splitlines()[0]
            row = ARROW_ROW.search(reason)
            line = int(row.group(1)) if row else done + 1
            raise FeedError(f"{origin}:{line}: {ARROW_ROW.sub('', reason)[:120]}") from None
        rows = 0 if raw is None else raw.num_rows
        bad_width = min(invalid) if invalid and invalid[0][0] <= done + rows + 1 else None
        if bad_width is not None:
            raw, rows = raw.slice(0, bad_width[0] - done - 1) if raw is not None else None, bad_width[0] - done - 1
        if raw is not None and rows:
            lines = pa.array(range(done + 1, done + rows + 1), pa.int64())
            keep = pc.invert(pc.and_(pc.equal(pc.binary_length(raw.column(0)), 0),
                                     pc.equal(pc.binary_length(raw.column(1)), 0)))
            if done == 0 and not raw.column(0)[0].as_py().decode("utf-8", "replace").strip().lstrip("-").isdigit():
                keep = pc.and_(keep, pa.array([False] + [True] * (rows - 1)))
            if not pc.all(keep).as_py():
                raw, lines = raw.filter(keep), lines.filter(keep)
            columns, bad = _columns(raw, lines)
            if columns.num_rows:
                yield TradeBatch(symbol, origin, columns)
            if bad is not None:
                raise FeedError(f"{origin}:{lines[bad[0]].as_py()}: {bad[1]}")
        done += rows
        if bad_width is not None:
            raise FeedError(f"{origin}:{bad_width[0]}: {bad_width[1]} columns, expected {width} like line 1")
        if raw is None:
            return


def iter_trade_batches(path: Path, symbols: Iterable[str] | None = None) -> Iterator[TradeBatch]:
    """A Binance trades or aggTrades file, ``.csv`` or ``.zip`` (every CSV inside), in file order, as Arrow
    batches: the one parser of the replay server (``read_binance_file``) and the importer. A bad line,
    a corrupt archive or a name without a symbol raises a FeedError naming the file (and member) and line."""
    if not path.is_file():
        raise FeedError(f"{path} is not a file")
    symbol = symbol_from_filename(path, symbols)
    if path.suffix.lower() != ".zip":
        with path.open("rb") as handle:
            yield from _csv_batches(handle, symbol, str(path))
        return
    origin, line_number = str(path), 0
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if name.lower().endswith(".csv"):
                    origin, line_number = f"{path}!{name}", 0
                    with archive.open(name) as member:
                        for batch in _csv_batches(member, symbol, origin):
                            line_number = batch.columns.column("line")[-1].as_py()
                            yield batch
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        where = f"{origin}:{line_number + 1}" if line_number or origin != str(path) else origin
        raise FeedError(f"{where}: corrupt zip archive ({exc})") from None


def read_binance_file(path: Path, symbols: Iterable[str] | None = None) -> list[AggTrade]:
    """A Binance trades or aggTrades file, ``.csv`` or ``.zip`` (every CSV inside), sorted by agg id, of the
    symbol its name carries (with ``symbols``: of those, else a ``FeedError``)."""
    if not path.is_file():
        raise FeedError(f"REPLAY_FILES names {path}, which is not a file")
    trades = (trade for batch in iter_trade_batches(path, symbols) for trade in batch.trades())
    return sorted(trades, key=lambda t: t.agg_id)


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
