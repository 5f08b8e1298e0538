"""The candle planner and window arithmetic, without servers."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto_assets.assets.run_config import parse_range
from crypto_assets.candles import (
    MINUTE_MS,
    Segment,
    align_range,
    from_ms,
    incremental_tail,
    is_final,
    plan_segments,
    to_ms,
    watermarks,
    window_start,
)
from local_stack.processes import free_port

M = MINUTE_MS
T0 = 1_723_161_600_000  # 2024-08-09T00:00:00Z


def test_windows_are_clock_aligned_half_open_intervals() -> None:
    assert window_start(T0, M) == T0
    assert window_start(T0 - 1, M) == T0 - M
    assert window_start(T0 + 4 * M + 59_999, 5 * M) == T0
    assert is_final(T0, M, T0 + M) and not is_final(T0, M, T0 + M - 1)
    assert to_ms(from_ms(T0 + 123)) == T0 + 123


def test_a_dirty_window_drags_the_empty_windows_after_it_up_to_the_next_window_with_trades() -> None:
    # A late trade at T0 in a symbol whose next trade is at T0 + 5 min: T0 .. T0 + 4 min carry its close.
    plan = plan_segments(M, {"BTC": T0 + 60 * M}, {"BTC": {T0}}, {("BTC", T0): T0 + 5 * M})
    assert plan == [Segment("BTC", T0, T0 + 4 * M, needs_seed=False)]


def test_without_a_later_window_the_drag_stops_at_the_last_closed_window_and_forming_windows_stand_alone() -> None:
    mark = T0 + 10 * M + 30_000  # forming window: T0 + 10 min
    plan = plan_segments(M, {"BTC": mark, "ETH": T0 + 11 * M + 1}, {"BTC": {T0, T0 + 10 * M}, "ETH": {T0 + 11 * M}}, {})
    assert plan == [Segment("BTC", T0, T0 + 10 * M, needs_seed=False),
                    Segment("ETH", T0 + 11 * M, T0 + 11 * M, needs_seed=False)]


def test_forced_ranges_merge_with_dirty_windows_and_need_a_seed_when_they_start_without_trades() -> None:
    plan = plan_segments(M, {"BTC": T0 + 20 * M, "ETH": T0 + 20 * M}, {"BTC": {T0 + 8 * M}},
                         {("BTC", T0 + 8 * M): T0 + 9 * M},
                         forced={"BTC": [(T0 + 3 * M, T0 + 7 * M)], "ETH": [(T0, T0 + 50 * M)]})
    assert plan == [Segment("BTC", T0 + 3 * M, T0 + 8 * M, needs_seed=True),
                    Segment("ETH", T0, T0 + 19 * M, needs_seed=True)]


def test_each_symbol_is_planned_up_to_its_own_watermark_only() -> None:
    """Regression (issue 9, point 3): one watermark for all symbols planned the lagging symbol's empty
    minutes past its newest trade as closed, so they were published final with zero volume."""
    marks = {"BTC": T0 + 10 * M + 5, "ETH": T0 + 3 * M + 5}
    plan = plan_segments(M, marks, {"BTC": {T0}, "ETH": {T0}}, {},
                         forced={"BTC": [(T0, T0 + 30 * M)], "ETH": [(T0, T0 + 30 * M)], "XRP": [(T0, T0 + 30 * M)]})
    assert plan == [Segment("BTC", T0, T0 + 9 * M, needs_seed=False), Segment("ETH", T0, T0 + 2 * M, needs_seed=False)]
    assert watermarks({"BTC": T0 + 10 * M, "ETH": T0 + 99 * M}, now_ms=T0 + 20 * M) == {"BTC": T0 + 10 * M,
                                                                                      "ETH": T0 + 20 * M}


def test_incremental_tail_covers_windows_closed_since_the_last_final_one() -> None:
    assert incremental_tail(M, T0 + 5 * M + 1, last_final=T0, first_published=T0 - M) == (T0 + M, T0 + 4 * M)
    assert incremental_tail(M, T0 + M + 1, last_final=T0, first_published=T0) is None
    assert incremental_tail(M, T0 + 3 * M, last_final=None, first_published=T0) == (T0, T0 + 2 * M)
    assert incremental_tail(M, T0 + 3 * M, last_final=None, first_published=None) is None


@settings(max_examples=300, deadline=None)
@given(dirty=st.sets(st.integers(0, 40), min_size=1, max_size=8), traded=st.sets(st.integers(0, 40), max_size=8),
       mark=st.integers(1, 45 * 60_000))
def test_every_window_whose_candle_can_change_is_planned(dirty: set[int], traded: set[int], mark: int) -> None:
    """A window can change when it is dirty or when it is closed, empty, and its nearest earlier window
    with trades is dirty; every such window must be in a segment, and no segment starts without trades
    unless it asks for a seed."""
    starts = {d * M for d in dirty}
    with_trades = {t * M for t in traded} | starts
    next_with_trades = {("S", d): min((t for t in with_trades - starts if t > d), default=None) for d in starts}
    plan = plan_segments(M, {"S": mark}, {"S": starts}, next_with_trades)
    planned = {w for s in plan for w in range(s.first, s.last + M, M)}
    last_closed = window_start(mark, M) - M
    for window in range(0, 41 * M, M):
        earlier = [t for t in with_trades if t <= window]
        source = max(earlier, default=None)
        changes = window in starts or (source in starts and window not in with_trades and window <= last_closed)
        if changes:
            assert window in planned, (window, plan)
    assert all(s.first in starts or s.needs_seed for s in plan)


def test_backfill_range_is_widened_to_whole_windows() -> None:
    start, end = parse_range("2024-08-09T00:01:30Z", "2024-08-09T00:07:00+00:00")
    assert align_range(start, end, 5 * M) == (T0, T0 + 10 * M)
    assert align_range(start, end, M) == (T0 + M, T0 + 7 * M)


@pytest.mark.parametrize(("start", "end", "message"), [
    ("yesterday", "2024-01-01T00:00:00Z", "is not an ISO-8601 date-time"),
    ("2024-01-01T00:00:00", "2024-01-02T00:00:00Z", "has no time zone"),
    ("2024-01-02T00:00:00Z", "2024-01-01T00:00:00Z", "is not before end"),
])
def test_bad_ranges_are_refused_with_a_reason(start: str, end: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_range(start, end)


@pytest.mark.parametrize("args", [["--start", "nope", "--end", "2024-01-01T00:00:00Z"],
                                  ["--start", "2024-01-01T00:00:00Z"], []])
@pytest.mark.slow  # runs a CLI in a new Python process
def test_backfill_cli_answers_bad_input_with_one_line_and_exit_2(args: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", "crypto_assets.backfill", *args], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("backfill: ")


@pytest.mark.parametrize("port", ["free", "none"])
@pytest.mark.slow  # runs a CLI in a new Python process
def test_backfill_cli_with_no_spark_connect_server_says_so_in_one_line(tmp_path, port: str) -> None:
    """Failed on the old code: PySpark's Connect client retried for minutes (a `make import` hung past
    900 s) before failing with a traceback. Without a port the URL means Spark Connect's default one (an
    address no local server binds, so nothing answers there)."""
    url = f"sc://127.0.0.1:{free_port()}" if port == "free" else "sc://127.0.0.2"
    env = {**os.environ, "SPARK_REMOTE": url, "STATE_DIR": str(tmp_path), "DAGSTER_HOME": ""}
    result = subprocess.run([sys.executable, "-m", "crypto_assets.backfill", "--start", "2024-01-01T00:00:00Z",
                             "--end", "2024-01-01T00:05:00Z"], capture_output=True, text=True, timeout=60,
                            check=False, env=env)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"backfill: Spark Connect at SPARK_REMOTE={url} does not answer; start it with `make up`, or set"
        " SPARK_REMOTE= to run Spark in this process"]


def test_datetimes_without_zone_are_refused() -> None:
    with pytest.raises(ValueError, match="time zone"):
        to_ms(datetime(2024, 1, 1))
    assert to_ms(datetime(2024, 8, 9, tzinfo=UTC)) == T0
