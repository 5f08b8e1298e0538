"""Chaos: real Binance trades replayed fast while the producer, the consumer and the replay server are
killed (SIGTERM or SIGKILL, at seeded random moments) and restarted by `make up`. Afterwards every trade
id is stored once with every digit equal to the file's, every sensor run succeeded, and the candles of
those incremental runs (no backfill) equal Binance's klines and the independent Decimal reference."""

from __future__ import annotations

import csv
import random
import signal
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import psutil
import psycopg2
import pytest

from crypto_assets_tests.candle_reference import fetch_candles, trades_from_csv
from crypto_assets_tests.platform_harness import PlatformUnderTest, assert_candles_match_the_reference
from local_stack.processes import PidFile
from local_stack.status import dagster_runs

TRADES = ("spot_BTCUSDT_2023-04-05", "spot_BTCUSDT_trades_2023-04-04T235959_to_2023-04-05T000654.csv")
KLINES = ("spot_BTCUSDT_2023-04-05", "spot_BTCUSDT-1m-ohlcv_excerpt_2023-04-04T2359_to_2023-04-05T0007.csv")
SEED = 9
KILLS = 6
REPLAY_SPEED = 4  # the file's 415 s of trading in about 105 s
VICTIMS = ("consumer", "producer", "replay-server")


def kill(platform: PlatformUnderTest, name: str, how: signal.Signals) -> None:
    """Signals the service's own process (the pid file names it, not its log wrapper) and waits for its end."""
    pid = PidFile(platform.state_dir / "run" / f"{name}.pid").running_pid()
    assert pid is not None, f"{name} is not running"
    victim = psutil.Process(pid)
    victim.send_signal(how)
    psutil.wait_procs([victim], timeout=60)


@pytest.fixture
def platform(shared_data: Path):
    under_test = PlatformUnderTest.create(
        REPLAY_FILES=str(shared_data.joinpath(*TRADES)), REPLAY_SPEED=str(REPLAY_SPEED), REPLAY_RETIME="0",
        SYMBOLS="BTCUSDT", SUPERSET="0",
    )
    yield under_test
    under_test.destroy()
    print("stage timings: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in under_test.timings.items()))


@pytest.mark.slow
@pytest.mark.integration
def test_kills_and_restarts_lose_nothing_double_nothing_and_candles_equal_binance(platform: PlatformUnderTest,
                                                                                   shared_data: Path) -> None:
    expected_trades = trades_from_csv(shared_data.joinpath(*TRADES), "BTCUSDT")
    replay_seconds = (expected_trades[-1].time_ms - expected_trades[0].time_ms) / 1000 / REPLAY_SPEED
    plan = random.Random(SEED)
    with platform.stage("make up"):
        platform.make("up")
    with platform.stage("kills during the replay"):
        started = time.monotonic()
        for _ in range(KILLS):
            time.sleep(plan.uniform(0, replay_seconds / KILLS))
            victim = plan.choice(VICTIMS)
            how = plan.choice([signal.SIGTERM, signal.SIGKILL])
            print(f"chaos: {how.name} {victim} at {time.monotonic() - started:.1f} s", flush=True)
            kill(platform, victim, how)
            platform.make("up")
    with platform.stage("every trade of the file in PostgreSQL"):
        platform.wait_for("every trade", lambda: platform.query(
            "SELECT count(DISTINCT agg_trade_id) FROM stock.real_time_prices")[0][0] >= len(expected_trades), 300)

    rows = platform.query("SELECT agg_trade_id, price, volume, timestamp, is_buyer_maker, trades, symbol"
                          " FROM stock.real_time_prices ORDER BY agg_trade_id")
    assert [r[0] for r in rows] == [t.agg_id for t in expected_trades], "a trade id is missing or stored twice"
    assert [tuple(r[1:]) for r in rows] == [(t.price, t.qty, t.time_ms, t.buyer_is_maker, 1, "BTCUSDT")
                                           for t in expected_trades]

    with platform.stage("a sensor run after the last trade, every check green"):
        platform.wait_for("a sensor run that read every trade", lambda: sensor_caught_up(platform), 600, interval=5)
    runs = platform.sensor_runs()
    assert all(run.status == "SUCCESS" and run.checks and all(p for _, p in run.checks) for run in runs), \
        [run.describe() for run in runs]
    assert len(dagster_runs(platform.settings, limit=None)) == len(runs), "a run not launched by the sensor"
    assert platform.query("SELECT count(*) FROM stock.rejected_messages") == [(0,)]

    assert_candles_match_the_reference(platform)  # the exchange clock moves on after the last run: see there
    with psycopg2.connect(platform.database_url) as connection:
        candles = fetch_candles(connection, "aggregated_prices_1min")
    with shared_data.joinpath(*KLINES).open() as handle:
        first_ms, last_ms = expected_trades[0].time_ms, expected_trades[-1].time_ms
        klines = [k for k in csv.DictReader(handle) if first_ms < int(k["open_time"]) <= last_ms - 60_000]
    assert len(klines) == 6
    for kline in klines:
        candle = candles[("BTCUSDT", datetime.fromtimestamp(int(kline["open_time"]) // 1000, UTC))]
        assert candle["is_final"]
        assert (candle["open_price"], candle["high_price"], candle["low_price"], candle["close_price"],
                candle["total_volume"]) == tuple(Decimal(kline[k]) for k in ("open", "high", "low", "close", "volume"))


def sensor_caught_up(platform: PlatformUnderTest) -> bool:
    """Both candle cursors are past every stored trade and no sensor run is in flight."""
    waiting = platform.query(
        "SELECT count(*) FROM stock.real_time_prices WHERE ingest_xid >= coalesce("
        " (SELECT min(ingest_xid) FROM stock.candle_cursors WHERE name IN ('aggregated_1min', 'aggregated_5min')"
        "  HAVING count(*) = 2), '1'::xid8)")[0][0]
    runs = platform.sensor_runs()
    return waiting == 0 and bool(runs) and runs[0].status == "SUCCESS"
