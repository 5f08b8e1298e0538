"""Candle arithmetic without I/O: window bounds, which windows a tick must recompute, the rounding rule.

Times are epoch milliseconds (Binance's trade time ``T``), UTC. A window is ``[start, start + size)``
aligned to the clock. The planner decides *which* windows to recompute; Spark computes them from all
their trades, so a window is always exact however late its trades came.

Rounding rule (the only rounding anywhere): ``avg_price`` = Σ price / n and ``vwap`` = Σ price·qty / Σ qty
are rounded to 8 decimals **half up** (ties away from zero) from the *exact* quotient. Spark only sums
(exact DECIMAL); the one division is done by PostgreSQL's arbitrary-precision ``div()`` in the merge,
because Spark's decimal division rounds at an intermediate scale (a double rounding) and its integral
``div`` returns a 64-bit long that overflows silently.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

MINUTE_MS = 60_000
PRICE_QUANTUM = Decimal("0.00000001")
# A trade whose price × volume reaches this cannot be aggregated: quote sums are DECIMAL(38, 16) in Spark
# (transforms.QUOTE) and NUMERIC(38, 16) in the tables, 22 integer digits. Such a trade is left out of
# the candles and named by a check instead of failing every run.
MAX_TRADE_QUOTE = Decimal(10) ** 22
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Timeframe:
    """A candle size and the table that holds its candles.

    ``rolled_up``: computed from the one-minute candles (their exact sums) instead of from the trades.
    """

    asset_name: str
    minutes: int
    table: str
    label: str
    rolled_up: bool = False

    @property
    def size_ms(self) -> int:
        return self.minutes * MINUTE_MS


ONE_MINUTE = Timeframe("aggregated_1min", 1, "aggregated_prices_1min", "1 minute")
FIVE_MINUTES = Timeframe("aggregated_5min", 5, "aggregated_prices_5min", "5 minutes")
FIFTEEN_MINUTES = Timeframe("aggregated_15min", 15, "aggregated_prices_15min", "15 minutes", rolled_up=True)
ONE_HOUR = Timeframe("aggregated_1hour", 60, "aggregated_prices_1hour", "1 hour", rolled_up=True)
FOUR_HOURS = Timeframe("aggregated_4hour", 240, "aggregated_prices_4hour", "4 hours", rolled_up=True)
ONE_DAY = Timeframe("aggregated_1day", 1440, "aggregated_prices_1day", "1 day", rolled_up=True)
# Every candle interval, in the order a run computes them (the rollups after the one-minute candles).
TIMEFRAMES = (ONE_MINUTE, FIVE_MINUTES, FIFTEEN_MINUTES, ONE_HOUR, FOUR_HOURS, ONE_DAY)


@dataclass(frozen=True, order=True)
class Segment:
    """Consecutive windows of one symbol to recompute: starts ``first`` .. ``last`` inclusive.

    ``needs_seed``: the first window may have no trades, so its candle carries the close of the window
    before it, read from the table (which the plan guarantees is not changing in this run).
    """

    symbol: str
    first: int
    last: int
    needs_seed: bool

    def trade_range(self, size_ms: int) -> tuple[int, int]:
        """Trade times ``[lo, hi)`` the segment's candles are computed from."""
        return self.first, self.last + size_ms

    def windows(self, size_ms: int) -> int:
        return (self.last - self.first) // size_ms + 1


def window_start(ts_ms: int, size_ms: int) -> int:
    return ts_ms - ts_ms % size_ms


def forming_window_start(watermark_ms: int, size_ms: int) -> int:
    """Start of the window that contains the watermark: the first one that is not closed yet."""
    return window_start(watermark_ms, size_ms)


def is_final(start_ms: int, size_ms: int, watermark_ms: int) -> bool:
    """A window of a symbol is final once that symbol's watermark has reached its end."""
    return start_ms + size_ms <= watermark_ms


def watermarks(closed_until: Mapping[str, int], now_ms: int) -> dict[str, int]:
    """Each symbol's event-time watermark: the time before which all its trades are known, never ahead of
    the clock.

    ``closed_until``: per symbol, the greater of its newest trade time (a symbol's trades arrive in id
    order, so every earlier one is in) and the exchange's market clock for it (every trade before it is
    in). Per symbol, because one symbol lagging (a backlog, a catch-up) says nothing about another's.
    """
    return {symbol: min(mark, now_ms) for symbol, mark in closed_until.items()}


def last_closed_window(watermark_ms: int | None, size_ms: int) -> int | None:
    """Start of the newest window that ends at or before the watermark (None: no watermark, none closed)."""
    return None if watermark_ms is None else forming_window_start(watermark_ms, size_ms) - size_ms


def round_price(value: Decimal) -> Decimal:
    """The rounding rule for derived prices, for references and readers: 8 decimals, half up."""
    return value.quantize(PRICE_QUANTUM, rounding=ROUND_HALF_UP)


def incremental_tail(size_ms: int, watermark_ms: int, last_final: int | None, first_published: int | None
                     ) -> tuple[int, int] | None:
    """Windows that closed since the last run: new empty windows, forming windows that became final.

    From the window after the symbol's last final one (or its first published one) to the last closed.
    """
    last_closed = forming_window_start(watermark_ms, size_ms) - size_ms
    start = last_final + size_ms if last_final is not None else first_published
    if start is None or start > last_closed:
        return None
    return start, last_closed


def plan_segments(size_ms: int, watermarks: Mapping[str, int], dirty: Mapping[str, Collection[int]],
                  next_with_trades: Mapping[tuple[str, int], int | None],
                  forced: Mapping[str, Iterable[tuple[int, int]]] | None = None) -> list[Segment]:
    """The windows to recompute, merged into segments per symbol.

    ``dirty``: windows that received changed trades. Each closed dirty window also drags the empty
    windows after it, up to the next window with trades (``next_with_trades``: the table's, by symbol and
    dirty window; other dirty windows count too), because they carry its close. Windows are emitted up
    to the symbol's last closed one (by its own watermark, ``watermarks``); a dirty window past it
    (forming) is emitted alone, so no empty window is ever planned past a symbol's watermark.
    ``forced``: ranges of window starts to recompute anyway (the incremental tail, a backfill range),
    cut at the symbol's last closed window.
    """
    pieces: dict[str, list[tuple[int, int]]] = {}
    for symbol, windows in dirty.items():
        last_closed = last_closed_window(watermarks.get(symbol), size_ms)
        ordered = sorted(set(windows))
        for index, start in enumerate(ordered):
            if last_closed is None or start > last_closed:
                pieces.setdefault(symbol, []).append((start, start))
                continue
            candidates = [n for n in (next_with_trades.get((symbol, start)),
                                      ordered[index + 1] if index + 1 < len(ordered) else None) if n is not None]
            end = min([last_closed, *(n - size_ms for n in candidates)])
            pieces.setdefault(symbol, []).append((start, max(start, end)))
    for symbol, ranges in (forced or {}).items():
        last_closed = last_closed_window(watermarks.get(symbol), size_ms)
        if last_closed is None:
            continue
        for first, last in ranges:
            if first <= last:
                pieces.setdefault(symbol, []).append((first, min(last, last_closed)))
    segments: list[Segment] = []
    for symbol in sorted(pieces):
        dirty_set = set(dirty.get(symbol, ()))
        merged: list[list[int]] = []
        for first, last in sorted(p for p in pieces[symbol] if p[0] <= p[1]):
            if merged and first <= merged[-1][1] + size_ms:
                merged[-1][1] = max(merged[-1][1], last)
            else:
                merged.append([first, last])
        segments += [Segment(symbol, first, last, first not in dirty_set) for first, last in merged]
    return segments


def align_range(start: datetime, end: datetime, size_ms: int) -> tuple[int, int]:
    """A backfill range widened to whole windows: start rounded down, end rounded up."""
    lo, hi = to_ms(start), to_ms(end)
    return window_start(lo, size_ms), -window_start(-hi, size_ms)


def to_ms(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError(f"{moment.isoformat()} has no time zone; add Z or +00:00")
    delta = moment - EPOCH
    return delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000


def from_ms(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)
