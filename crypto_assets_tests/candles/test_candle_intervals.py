"""Candles of every interval (1 and 5 minutes from the trades; 15 minutes, 1 hour, 4 hours and 1 day rolled up
from the one-minute candles), on real Spark and the test stack's PostgreSQL, compared row by row with the
Decimal reference computed straight from the trades (``candle_reference``), incrementally and across a backfill.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from unittest import mock

import dagster as dg
import psycopg2.extensions
import pytest

from crypto_assets import backfill
from crypto_assets.assets.catalog import CANDLE_ASSETS, CANDLE_CHECKS, DEFINITIONS, RUN_ASSETS
from crypto_assets.candles import TIMEFRAMES
from crypto_assets.resources import build_resources
from crypto_assets_tests.candle_reference import (
    Trade,
    differences,
    fetch_candles,
    insert_trades,
    reference_candles,
    trades_from_csv,
)
from crypto_platform.settings import PlatformSettings
from local_stack.ephemeral import make_state_dir
from local_stack.processes import free_port
from local_stack.stack import LocalStack

# Several Spark runs of six assets and their 38 checks: minutes each on a loaded 2-core machine.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]

DEFS = DEFINITIONS
PAIR_2024 = "spot_BTCUSDT_ETHUSDT_2024-08-08"
T0 = datetime(2024, 8, 9, tzinfo=UTC)


def ms(moment: datetime, plus_ms: int = 0) -> int:
    return int((moment - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(milliseconds=1)) + plus_ms


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    """Only a real PostgreSQL 16 with the schema: these tests need no Kafka, whose start is the slowest part of
    the session stack on a loaded machine."""
    state_dir = make_state_dir("crypto-test-intervals-")
    with mock.patch.dict("os.environ", {"STATE_DIR": str(state_dir), "PG_PORT": str(free_port()), "DATABASE_URL": ""}):
        database = LocalStack(PlatformSettings.from_env())
        try:
            database.start_database()
            yield database
        finally:
            database.postgres.stop()
            shutil.rmtree(state_dir, ignore_errors=True)


def run_all(settings: PlatformSettings) -> dg.ExecuteInProcessResult:
    return dg.materialize(DEFS, selection=dg.AssetSelection.assets(*RUN_ASSETS),
                          resources=build_resources(settings), instance=dg.DagsterInstance.ephemeral(),
                          raise_on_error=False)


def assert_every_interval_matches(db: psycopg2.extensions.connection, trades: list[Trade]) -> None:
    for timeframe in TIMEFRAMES:
        problems = differences(reference_candles(trades, timeframe.minutes), fetch_candles(db, timeframe.table))
        assert not problems, f"{timeframe.table}: " + "\n".join(problems[:20])


def assert_checks_passed(result: dg.ExecuteInProcessResult) -> None:
    evaluations = result.get_asset_check_evaluations()
    failed = [f"{c.asset_key.to_user_string()}.{c.check_name} {({k: v.value for k, v in c.metadata.items()})}"
              for c in evaluations if not c.passed]
    assert not failed
    assert len(evaluations) == sum(len(step.check_keys) for step in CANDLE_CHECKS) + 1


def test_the_shared_list_holds_every_interval_in_order() -> None:
    assert [s.key.to_user_string() for a in CANDLE_ASSETS for s in a.specs] == [t.asset_name for t in TIMEFRAMES]
    assert [t.minutes for t in TIMEFRAMES] == [1, 5, 15, 60, 240, 1440]


def real_trades(shared_data: Path) -> list[Trade]:
    return [t for symbol in ("BTCUSDT", "ETHUSDT") for t in trades_from_csv(
        next(shared_data.joinpath(PAIR_2024).glob(f"spot_{symbol}_trades_*.csv")), symbol)]


def test_every_interval_equals_the_reference_on_real_trades_run_after_run(db, candles_env, shared_data: Path) -> None:
    trades = real_trades(shared_data)
    cut = ms(T0) - 3 * 60_000  # the first run sees the trades up to 23:57; the rest arrives later
    insert_trades(db, [t for t in trades if t.time_ms < cut])
    assert run_all(candles_env).success
    assert_every_interval_matches(db, [t for t in trades if t.time_ms < cut])

    insert_trades(db, [t for t in trades if t.time_ms >= cut])
    result = run_all(candles_env)
    assert result.success
    assert_checks_passed(result)
    assert_every_interval_matches(db, trades)
    one_day = fetch_candles(db, "aggregated_prices_1day")
    assert sorted(one_day) == [("BTCUSDT", T0 - timedelta(days=1)), ("BTCUSDT", T0),
                               ("ETHUSDT", T0 - timedelta(days=1)), ("ETHUSDT", T0)]
    assert one_day[("BTCUSDT", T0 - timedelta(days=1))]["is_final"] is True


def test_a_backfill_recomputes_every_interval_from_scratch(db, candles_env, shared_data: Path) -> None:
    trades = real_trades(shared_data)
    insert_trades(db, trades)
    assert run_all(candles_env).success
    with db.cursor() as cursor:  # damage that only a backfill from scratch repairs
        cursor.execute("UPDATE stock.aggregated_prices_1hour SET close_price = 1, price_sum = 0")
        cursor.execute("DELETE FROM stock.aggregated_prices_4hour")
        cursor.execute("UPDATE stock.aggregated_prices_1day SET is_final = NOT is_final")
    assert backfill.main(["--start", "2024-08-08T00:00:00Z", "--end", "2024-08-10T00:00:00Z"]) == 0
    assert_every_interval_matches(db, trades)


def test_an_interval_opens_with_its_first_trade_not_with_a_carried_minute(db, candles_env) -> None:
    t, p = ms(T0), Decimal
    trades = [
        Trade("BTCUSDT", 1, p("100"), p("1"), t + 14 * 60_000 + 30_000),       # the last minute of [00:00, 00:15)
        Trade("BTCUSDT", 2, p("120"), p("2"), t + 16 * 60_000 + 10_000, True),  # 00:15 empty: opens at 120, not 100
        Trade("BTCUSDT", 3, p("90"), p("1"), t + 16 * 60_000 + 10_000),         # same ms: close by agg id
        Trade("BTCUSDT", 4, p("95"), p("1"), t + 75 * 60_000),                  # [00:30, 01:00) empty: carried
        Trade("BTCUSDT", 5, p("0.00000001"), p("1"), t + 24 * 3600_000 + 1),    # a second day, a tiny price
        Trade("BTCUSDT", 6, p("0.00000002"), p("1"), t + 24 * 3600_000 + 2),    # avg tie 0.000000015 -> ...02
    ]
    insert_trades(db, list(reversed(trades)))
    result = run_all(candles_env)
    assert_checks_passed(result)
    assert_every_interval_matches(db, trades)
    quarter = fetch_candles(db, "aggregated_prices_15min")
    assert quarter[("BTCUSDT", T0 + timedelta(minutes=15))]["open_price"] == p("120")
    assert quarter[("BTCUSDT", T0 + timedelta(minutes=15))]["close_price"] == p("90")
    assert quarter[("BTCUSDT", T0 + timedelta(minutes=15))]["low_price"] == p("90")
    assert quarter[("BTCUSDT", T0 + timedelta(minutes=30))]["trade_count"] == 0
    assert quarter[("BTCUSDT", T0 + timedelta(minutes=30))]["open_price"] == p("90")
    hour = fetch_candles(db, "aggregated_prices_1hour")
    assert hour[("BTCUSDT", T0)]["open_price"] == p("100") and hour[("BTCUSDT", T0)]["high_price"] == p("120")
    day = fetch_candles(db, "aggregated_prices_1day")
    assert day[("BTCUSDT", T0 + timedelta(days=1))]["avg_price"] == p("0.00000002")
    assert day[("BTCUSDT", T0 + timedelta(days=1))]["is_final"] is False
