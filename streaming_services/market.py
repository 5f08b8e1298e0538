"""The replay market, free of any server: which trades and klines exist at a given wall-clock time.

Trades come from recorded files (re-timed to now unless told otherwise) or a seeded synthetic walk for the
symbols no file covers. Invariant: per symbol, published trades are append-only and in agg-id order.
"""

from __future__ import annotations

import bisect
import math
import time
from collections import deque
from pathlib import Path
from typing import Any, Protocol

from streaming_services.feeds import (
    MINUTE_MS,
    AggTrade,
    Kline,
    KlineBuilder,
    SyntheticSymbol,
    load_files,
    retime,
    synthetic_market,
)

SYNTHETIC_SEED = 20240808
SYNTHETIC_HISTORY_MS = 3_600_000  # what REST keeps of the synthetic market: the longest producer outage it heals
SNAPSHOT_EVERY_MS = 60_000
RESUME_REGENERATE_MAX_MS = 6 * 3_600_000  # a longer stop skips ahead rather than replay hours of walk at start
TRIM_CHUNK = 1000
REST_MAX_WINDOW_MS = 3_600_000  # the widest startTime..endTime span an aggTrades query may ask for


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class MarketSettings(Protocol):
    """What the market reads of the replay configuration."""

    symbols: tuple[str, ...]
    files: tuple[Path, ...]
    speed: float
    retime: bool
    synthetic_trades_per_second: float


class MarketTimeline:
    """Which trades have happened by a given wall-clock time; append-only per symbol, in agg-id order."""

    def __init__(self, config: MarketSettings) -> None:
        self.config = config
        recorded = load_files(config.files, config.symbols)
        self.file_symbols = set(recorded)
        self.synthetic: dict[str, SyntheticSymbol] = synthetic_market(
            [s for s in config.symbols if s not in recorded], SYNTHETIC_SEED)
        for walk in self.synthetic.values():
            walk.trades_per_second = config.synthetic_trades_per_second
        self._recorded = recorded
        self.pending: list[AggTrade] = []
        self.published: dict[str, list[AggTrade]] = {s: [] for s in (*recorded, *self.synthetic)}
        self._ids: dict[str, list[int]] = {s: [] for s in self.published}
        self._snapshots: dict[str, deque[dict[str, Any]]] = {s: deque() for s in self.synthetic}
        self._klines = {s: KlineBuilder(s) for s in self.published}
        self.anchor_ms: int | None = None

    @property
    def source(self) -> str:
        return "synthetic" if not self.file_symbols else "replay"

    def start(self, anchor_ms: int) -> None:
        """Fixes the clock: file trades are shifted (REPLAY_RETIME) so the recording starts at the anchor."""
        self.anchor_ms = anchor_ms
        first = min((trades[0].time_ms for trades in self._recorded.values() if trades), default=anchor_ms)
        self._file_origin = anchor_ms if self.config.retime else first
        shift = anchor_ms - first if self.config.retime else 0
        merged = [t for trades in self._recorded.values() for t in retime(trades, shift)]
        self.pending = sorted(merged, key=lambda t: (t.time_ms, t.symbol, t.agg_id))
        self._pending_index = 0
        for symbol, walk in self.synthetic.items():
            walk.start(anchor_ms)
            self._snapshots[symbol] = deque([walk.checkpoint()])

    def resume(self, anchor_ms: int, checkpoints: dict[str, dict[str, Any]], wall_ms: int) -> None:
        """After a restart: the same clock, each synthetic walk continued from its ``checkpoint()``, so the
        same trades are served again with the same ids, then those of the stop.

        After a stop longer than RESUME_REGENERATE_MAX_MS a walk skips to the last history REST keeps
        (a quiet market, ids still consecutive) instead of regenerating days of trades at start.
        """
        self.start(anchor_ms)
        for symbol, walk in self.synthetic.items():
            if symbol in checkpoints:
                walk.restore(checkpoints[symbol])
            if wall_ms - walk.next_time_ms > RESUME_REGENERATE_MAX_MS:
                walk.next_time_ms = wall_ms - SYNTHETIC_HISTORY_MS
            self._snapshots[symbol] = deque([walk.checkpoint()])
        resume_from = min((walk.next_time_ms for walk in self.synthetic.values()), default=wall_ms)
        for step_ms in range(resume_from + SNAPSHOT_EVERY_MS, wall_ms, SNAPSHOT_EVERY_MS):
            self.advance(step_ms)
        self.advance(wall_ms)

    def checkpoint(self) -> dict[str, dict[str, Any]]:
        """Per synthetic symbol, the walk's state at the oldest trade REST still serves."""
        return {symbol: snapshots[0] for symbol, snapshots in self._snapshots.items() if snapshots}

    def feed_time(self, wall_ms: int) -> float:
        if self.config.speed == 0:
            return float("inf")
        return self._file_origin + (wall_ms - self.anchor_ms) * self.config.speed

    def advance(self, wall_ms: int, limit: int | None = None) -> list[AggTrade]:
        """Publishes every trade due by ``wall_ms`` (at most ``limit`` file trades); returns them in time order."""
        if self.anchor_ms is None:
            return []
        due: list[AggTrade] = []
        horizon = self.feed_time(wall_ms)
        while self._pending_index < len(self.pending) and self.pending[self._pending_index].time_ms <= horizon:
            due.append(self.pending[self._pending_index])
            self._pending_index += 1
            if limit is not None and len(due) >= limit:
                break
        if self.synthetic:
            for walk in self.synthetic.values():
                due.extend(walk.trades_until(wall_ms))
            due.sort(key=lambda t: (t.time_ms, t.symbol, t.agg_id))
        for trade in due:
            self.published[trade.symbol].append(trade)
            self._ids[trade.symbol].append(trade.agg_id)
            self._klines[trade.symbol].add(trade)
        for symbol, walk in self.synthetic.items():
            self._forget_old(symbol, walk, wall_ms)
        return due

    def _forget_old(self, symbol: str, walk: SyntheticSymbol, wall_ms: int) -> None:
        """Keeps a checkpoint a minute and drops the synthetic trades older than the oldest one kept."""
        snapshots = self._snapshots[symbol]
        if walk.next_time_ms - snapshots[-1]["next_time_ms"] >= SNAPSHOT_EVERY_MS:
            snapshots.append(walk.checkpoint())
        while len(snapshots) > 1 and snapshots[1]["next_time_ms"] <= wall_ms - SYNTHETIC_HISTORY_MS:
            snapshots.popleft()
        ids = self._ids[symbol]
        forgotten = bisect.bisect_left(ids, snapshots[0]["next_agg_id"])
        if forgotten >= TRIM_CHUNK:
            del ids[:forgotten], self.published[symbol][:forgotten]

    def closed_klines(self, wall_ms: int) -> list[Kline]:
        """The klines of the minutes that closed since the last call, per symbol in time order.

        A synthetic symbol's minute closes with the wall clock; a recorded one's once every file trade
        before its end is published (at REPLAY_SPEED=0, once the files are through, up to the last trade).
        """
        if self.anchor_ms is None:
            return []
        horizon = self.feed_time(wall_ms)
        if self._pending_index < len(self.pending):
            files_clock = min(horizon, self.pending[self._pending_index].time_ms)
        else:
            files_clock = horizon
        closed: list[Kline] = []
        for symbol, builder in self._klines.items():
            clock = wall_ms if symbol in self.synthetic else files_clock
            if math.isinf(clock):
                if not builder.pending:
                    continue
                clock = builder.pending[-1].time_ms - builder.pending[-1].time_ms % MINUTE_MS + MINUTE_MS
            closed.extend(builder.close_until(int(clock)))
        return closed

    @property
    def files_pending(self) -> bool:
        return self.anchor_ms is not None and self._pending_index < len(self.pending)

    def agg_trades(self, symbol: str, from_id: int | None, start_ms: int | None, end_ms: int | None,
                   limit: int) -> list[AggTrade]:
        """``GET /api/v3/aggTrades`` over what has been published, with Binance's parameter rules."""
        trades, ids = self.published[symbol], self._ids[symbol]
        if from_id is not None:
            begin = bisect.bisect_left(ids, from_id)
            selected = trades[begin:begin + limit]
            if end_ms is not None:
                selected = [t for t in selected if t.time_ms <= end_ms]
            return selected
        if start_ms is not None or end_ms is not None:
            lower = start_ms if start_ms is not None else end_ms - REST_MAX_WINDOW_MS
            upper = end_ms if end_ms is not None else start_ms + REST_MAX_WINDOW_MS
            return [t for t in trades if lower <= t.time_ms <= upper][:limit]
        return trades[-limit:]
