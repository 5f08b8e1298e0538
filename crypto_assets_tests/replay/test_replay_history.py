"""The synthetic market runs for days in bounded memory, and a restarted replay server serves the same
trades with the same consecutive ids, regenerating at most the history REST keeps."""

from __future__ import annotations

import json
import time
from pathlib import Path

from streaming_services.feeds import synthetic_market
from streaming_services.market import SYNTHETIC_HISTORY_MS, MarketTimeline
from streaming_services.replay_server import ReplayConfig, ReplayServer

SYMBOLS = ("BTCUSDT", "ETHUSDT")
START_MS = 1_795_600_000_000
HOUR_MS = 3_600_000


def run_market(timeline: MarketTimeline, from_ms: int, to_ms: int, step_ms: int = 5000) -> None:
    for wall_ms in range(from_ms, to_ms + 1, step_ms):
        timeline.advance(wall_ms)


def timeline(rate: float = 2.0) -> MarketTimeline:
    return MarketTimeline(ReplayConfig(symbols=SYMBOLS, synthetic_trades_per_second=rate))


def test_a_checkpointed_walk_continues_with_the_same_trades() -> None:
    original, copy = (synthetic_market(["BTCUSDT"], 7)["BTCUSDT"] for _ in range(2))
    original.start(START_MS)
    list(original.trades_until(START_MS + 60_000))
    copy.restore(json.loads(json.dumps(original.checkpoint())))
    assert list(copy.trades_until(START_MS + 120_000)) == list(original.trades_until(START_MS + 120_000))


def test_rest_history_of_the_synthetic_market_stays_bounded_for_days() -> None:
    market = timeline()
    market.start(START_MS)
    run_market(market, START_MS, START_MS + 6 * HOUR_MS, step_ms=30_000)
    for symbol in SYMBOLS:
        ids = [t.agg_id for t in market.published[symbol]]
        assert ids == list(range(ids[0], ids[-1] + 1))
        assert ids[0] > 1  # the first hours are forgotten
        oldest_ms = market.published[symbol][0].time_ms
        assert START_MS + 6 * HOUR_MS - oldest_ms <= SYNTHETIC_HISTORY_MS + 5 * 60_000
        assert len(ids) < 2.0 * 2 * 3600  # about an hour at 2 trades/s, not six


def test_a_restart_serves_the_same_trades_and_continues_the_ids() -> None:
    before = timeline()
    before.start(START_MS)
    stopped_ms = START_MS + 3 * HOUR_MS
    run_market(before, START_MS, stopped_ms)
    checkpoint = json.loads(json.dumps(before.checkpoint()))

    after = timeline()
    after.resume(START_MS, checkpoint, stopped_ms + 10 * 60_000)
    run_market(before, stopped_ms, stopped_ms + 10 * 60_000)
    for symbol in SYMBOLS:
        served_before = {trade.agg_id: trade for trade in before.published[symbol]}
        served_after = after.published[symbol]
        assert served_after[0].agg_id >= checkpoint[symbol]["next_agg_id"]
        assert served_after[-1] == before.published[symbol][-1]
        overlap = [trade for trade in served_after if trade.agg_id in served_before]
        assert len(overlap) > 0.9 * len(served_after) > 3600  # the two histories start within a minute
        assert all(served_before[trade.agg_id] == trade for trade in overlap)


def test_after_a_long_stop_the_ids_continue_without_regenerating_the_whole_gap() -> None:
    before = timeline()
    before.start(START_MS)
    run_market(before, START_MS, START_MS + HOUR_MS)
    last_ids = {symbol: before.published[symbol][-1].agg_id for symbol in SYMBOLS}

    after = timeline()
    restarted_ms = START_MS + 30 * 24 * HOUR_MS
    started = time.perf_counter()
    after.resume(START_MS, before.checkpoint(), restarted_ms)
    assert time.perf_counter() - started < 10
    for symbol in SYMBOLS:
        ids = [t.agg_id for t in after.published[symbol]]
        assert ids == list(range(ids[0], ids[-1] + 1))
        assert ids[0] <= last_ids[symbol] + 1  # every id after the last one served before the stop is there
        assert after.published[symbol][0].time_ms < after.published[symbol][-1].time_ms <= restarted_ms
        assert len(ids) < 2.0 * 2 * 3600 + 2.0 * 2 * 3600


def test_the_server_persists_its_clock_and_checkpoints(tmp_path: Path) -> None:
    config = ReplayConfig(symbols=SYMBOLS, port=0, state_dir=tmp_path, synthetic_trades_per_second=20)
    server = ReplayServer(config)
    server.start_in_thread()
    server.call(server._start_clock)
    time.sleep(0.5)
    server.stop_thread()
    saved = json.loads((tmp_path / "anchor.json").read_text())
    assert set(saved["synthetic"]) == set(SYMBOLS)

    restarted = ReplayServer(ReplayConfig(symbols=SYMBOLS, port=0, state_dir=tmp_path, synthetic_trades_per_second=20))
    assert restarted.timeline.anchor_ms == saved["anchor_ms"]
    for symbol in SYMBOLS:
        first = restarted.timeline.published[symbol][0]
        assert first.agg_id == 1 and first.time_ms > saved["anchor_ms"]
        assert restarted.timeline.published[symbol][-1].agg_id >= 3
