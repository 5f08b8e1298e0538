"""An independent reference for the candle assets, in plain Python with Decimal, and test data helpers.

Nothing here imports the assets' code: the reference restates the issue's definition directly, so a
shared mistake cannot make both sides agree.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Context, Decimal, localcontext
from pathlib import Path

import psycopg2.extensions
from psycopg2 import sql

from crypto_platform.raw_partitions import ensure_days, utc_day

EIGHT = Decimal("0.00000001")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
WINDOW_WIDTHS = tuple(timedelta(minutes=m) for m in (1, 5, 15, 60, 240, 1440))
CANDLE_FIELDS = ("open_price", "close_price", "high_price", "low_price", "avg_price", "vwap", "total_volume",
                 "quote_volume", "taker_buy_volume", "trade_count", "first_agg_trade_id", "last_agg_trade_id",
                 "is_final")


@dataclass(frozen=True)
class Trade:
    symbol: str
    agg_id: int
    price: Decimal
    qty: Decimal
    time_ms: int
    buyer_is_maker: bool = False
    trades: int = 1


def trades_from_csv(path: Path, symbol: str) -> list[Trade]:
    """A Binance trades CSV (id, price, qty, quote_qty, time, is_buyer_maker, ...): one aggTrade per trade."""
    with path.open() as handle:
        return [Trade(symbol, int(row["id"]), Decimal(row["price"]), Decimal(row["qty"]), int(row["time"]),
                      row["is_buyer_maker"] == "True") for row in csv.DictReader(handle)]


def insert_trades(connection: psycopg2.extensions.connection, trades: Iterable[Trade]) -> None:
    """COPY into stock.real_time_prices, as the consumer writes them (f = l = agg id when trades = 1), the
    partitions of their days made first."""
    trades = list(trades)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    for t in trades:
        writer.writerow((t.symbol, t.price, t.time_ms, ms_to_datetime(t.time_ms).isoformat(), t.qty, t.agg_id,
                         t.agg_id, t.agg_id + t.trades - 1, t.trades, t.buyer_is_maker, "test"))
    buffer.seek(0)
    with connection.cursor() as cursor:
        ensure_days(cursor, sorted({utc_day(t.time_ms) for t in trades}))
        cursor.copy_expert(
            "COPY stock.real_time_prices (symbol, price, timestamp, event_time, volume, agg_trade_id,"
            " first_trade_id, last_trade_id, trades, is_buyer_maker, source) FROM STDIN WITH (FORMAT csv)", buffer)


def ms_to_datetime(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


def _half_up(numerator: Decimal, denominator: Decimal) -> Decimal:
    with localcontext(Context(prec=80)):
        return (numerator / denominator).quantize(EIGHT, rounding=ROUND_HALF_UP)


def reference_candles(trades: Sequence[Trade], minutes: int, market_clock: Mapping[str, int] | None = None
                      ) -> dict[tuple[str, datetime], dict[str, object]]:
    """Candles keyed by (symbol, window_start) straight from the definition.

    Each symbol has its own watermark: the later of its own newest trade and ``market_clock[symbol]``
    (the exchange saying every trade of the symbol before that time is known). A window is final when it
    ends at or before its symbol's watermark. Windows with trades are always present; empty windows from
    the symbol's first trade up to the last window final by that watermark carry the previous close.
    """
    size = minutes * 60_000
    by_window: dict[tuple[str, int], list[Trade]] = defaultdict(list)
    for t in trades:
        by_window[(t.symbol, t.time_ms // size * size)].append(t)
    result: dict[tuple[str, datetime], dict[str, object]] = {}
    for symbol in sorted({t.symbol for t in trades}):
        mark = max([t.time_ms for t in trades if t.symbol == symbol] + [(market_clock or {}).get(symbol, 0)])
        starts = sorted(start for s, start in by_window if s == symbol)
        last = max(starts[-1], (mark // size) * size - size)
        close: Decimal | None = None
        for start in range(starts[0], last + size, size):
            window = sorted(by_window.get((symbol, start), []), key=lambda t: t.agg_id)
            final = start + size <= mark
            if window:
                volume = sum((t.qty for t in window), Decimal(0))
                quote = sum((t.price * t.qty for t in window), Decimal(0))
                close = window[-1].price
                candle = {
                    "open_price": window[0].price, "close_price": close,
                    "high_price": max(t.price for t in window), "low_price": min(t.price for t in window),
                    "avg_price": _half_up(sum((t.price for t in window), Decimal(0)), Decimal(len(window))),
                    "vwap": _half_up(quote, volume), "total_volume": volume, "quote_volume": quote,
                    "taker_buy_volume": sum((t.qty for t in window if not t.buyer_is_maker), Decimal(0)),
                    "trade_count": sum(t.trades for t in window),
                    "first_agg_trade_id": window[0].agg_id, "last_agg_trade_id": window[-1].agg_id,
                    "is_final": final,
                }
            elif final:
                candle = {"open_price": close, "close_price": close, "high_price": close, "low_price": close,
                          "avg_price": close, "vwap": None, "total_volume": Decimal(0), "quote_volume": Decimal(0),
                          "taker_buy_volume": Decimal(0), "trade_count": 0, "first_agg_trade_id": None,
                          "last_agg_trade_id": None, "is_final": True}
            else:
                continue
            result[(symbol, ms_to_datetime(start))] = candle
    return result


def fetch_candles(connection: psycopg2.extensions.connection, table: str
                  ) -> dict[tuple[str, datetime], dict[str, object]]:
    """The table's candles in the reference's shape (Decimal compares by value: 1.50 == 1.5)."""
    query = sql.SQL("SELECT symbol, window_start, window_end, {fields} FROM {table} ORDER BY 1, 2").format(
        fields=sql.SQL(", ").join(map(sql.Identifier, CANDLE_FIELDS)), table=sql.Identifier("stock", table))
    with connection.cursor() as cursor:
        cursor.execute(query)
        rows = cursor.fetchall()
    result = {}
    for symbol, start, end, *values in rows:
        assert end - start in WINDOW_WIDTHS
        result[(symbol, start)] = dict(zip(CANDLE_FIELDS, values, strict=True))
    return result


def differences(expected: dict, actual: dict) -> list[str]:
    """Row-by-row, field-by-field differences, readable in an assertion message."""
    problems = [f"missing {key}" for key in sorted(expected.keys() - actual.keys())]
    problems += [f"unexpected {key}" for key in sorted(actual.keys() - expected.keys())]
    for key in sorted(expected.keys() & actual.keys()):
        for name, value in expected[key].items():
            if actual[key][name] != value:
                problems.append(f"{key} {name}: expected {value}, got {actual[key][name]}")
    return problems
