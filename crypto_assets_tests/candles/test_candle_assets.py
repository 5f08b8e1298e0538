"""The candle assets on real Spark (one local session for the module) and the test stack's PostgreSQL.

Candles are compared row by row with the Decimal reference (``candle_reference``) and, where the shared
data has them, with Binance's own klines.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import dagster as dg
import psycopg2
import psycopg2.extensions
import pytest
from pyspark.sql import SparkSession

from crypto_assets import backfill, sensors
from crypto_assets.assets.aggregated_1min import aggregated_1min, aggregated_1min_checks
from crypto_assets.assets.aggregated_5min import aggregated_5min, consistent_with_aggregated_1min
from crypto_assets.assets.catalog import DEFINITIONS
from crypto_assets.assets.latest_prices import latest_prices, latest_prices_match_candles
from crypto_assets.assets.real_time_prices import source_is_fresh
from crypto_assets.assets.run_config import CandleRunConfig
from crypto_assets.candle_runs import refresh_candles
from crypto_assets.candle_store import MarketStore
from crypto_assets.candles import FIVE_MINUTES, ONE_MINUTE, Segment
from crypto_assets.resources import MarketDatabase, build_resources, spark_session
from crypto_assets.sensors import minute_close_sensor
from crypto_assets.spark_io import JdbcTarget, read_trades
from crypto_assets_tests.candle_reference import (
    Trade,
    differences,
    fetch_candles,
    insert_trades,
    reference_candles,
    trades_from_csv,
)
from crypto_platform.settings import PlatformSettings
from local_stack.processes import free_port
from local_stack.stack import LocalStack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ALL_DEFS = DEFINITIONS
CANDLE_ASSETS = dg.AssetSelection.assets(aggregated_1min, aggregated_5min, latest_prices)
[FIVE_MINUTE_CONSISTENCY] = consistent_with_aggregated_1min.check_keys
[SOURCE_IS_FRESH] = source_is_fresh.check_keys
BTC_2023 = ("spot_BTCUSDT_2023-04-05", "spot_BTCUSDT_trades_2023-04-04T235959_to_2023-04-05T000654.csv")
KLINES_2023 = ("spot_BTCUSDT_2023-04-05", "spot_BTCUSDT-1m-ohlcv_excerpt_2023-04-04T2359_to_2023-04-05T0007.csv")
PAIR_2024 = "spot_BTCUSDT_ETHUSDT_2024-08-08"
T0 = datetime(2024, 8, 9, tzinfo=UTC)


def ms(moment: datetime, plus_ms: int = 0) -> int:
    return int((moment - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(milliseconds=1)) + plus_ms


def run_candles(settings: PlatformSettings, config: CandleRunConfig | None = None,
                instance: dg.DagsterInstance | None = None, raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
    run_config = dg.RunConfig(ops={"aggregated_1min": config, "aggregated_5min": config}) if config else None
    return dg.materialize(ALL_DEFS, selection=CANDLE_ASSETS, resources=build_resources(settings),
                          instance=instance or dg.DagsterInstance.ephemeral(), run_config=run_config,
                          raise_on_error=raise_on_error)


def run_check(settings: PlatformSettings, check: dg.AssetCheckKey) -> dg.AssetCheckEvaluation:
    """That one check alone (its step's other checks are not selected)."""
    result = dg.materialize(ALL_DEFS, selection=dg.AssetSelection.checks(check), resources=build_resources(settings),
                            instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
    [evaluation] = result.get_asset_check_evaluations()
    return evaluation


def metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, object]:
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == asset]
    return {k: v.value for k, v in event.step_materialization_data.materialization.metadata.items()}


def assert_matches_reference(db: psycopg2.extensions.connection, trades: list[Trade],
                             market_clock: dict[str, int] | None = None) -> None:
    for minutes, table in ((1, "aggregated_prices_1min"), (5, "aggregated_prices_5min")):
        problems = differences(reference_candles(trades, minutes, market_clock), fetch_candles(db, table))
        assert not problems, f"{table}: " + "\n".join(problems[:20])


def assert_all_checks_passed(result: dg.ExecuteInProcessResult) -> None:
    failed = [f"{c.asset_key.to_user_string()}.{c.check_name} {({k: v.value for k, v in c.metadata.items()})}"
              for c in result.get_asset_check_evaluations() if not c.passed]
    assert not failed
    assert len(result.get_asset_check_evaluations()) == 13


def assert_equals_binance_klines(db: psycopg2.extensions.connection, trades: list[Trade], shared_data: Path) -> None:
    """BTCUSDT 2023's one-minute candles equal Binance's klines on the six minutes the trades fully cover."""
    candles = fetch_candles(db, "aggregated_prices_1min")
    first, last = min(t.time_ms for t in trades), max(t.time_ms for t in trades)
    with shared_data.joinpath(*KLINES_2023).open() as handle:
        klines = list(csv.DictReader(handle))
    covered = [k for k in klines if int(k["open_time"]) > first and int(k["open_time"]) + 60_000 <= last]
    assert len(covered) == 6
    for kline in covered:
        candle = candles[("BTCUSDT", datetime.fromtimestamp(int(kline["open_time"]) // 1000, UTC))]
        assert (candle["open_price"], candle["high_price"], candle["low_price"], candle["close_price"],
                candle["total_volume"]) == tuple(Decimal(kline[k]) for k in ("open", "high", "low", "close", "volume"))


def test_btcusdt_2023_equals_the_reference_and_binance_klines_on_every_fully_covered_minute(
        db, candles_env, shared_data: Path) -> None:
    trades = trades_from_csv(shared_data.joinpath(*BTC_2023), "BTCUSDT")
    insert_trades(db, trades)
    result = run_candles(candles_env)
    assert result.success
    assert_all_checks_passed(result)
    assert_matches_reference(db, trades)
    assert_equals_binance_klines(db, trades, shared_data)

    meta = metadata(result, "aggregated_1min")
    assert meta["rows_read"] == len(trades) and meta["windows_written"] == 8
    assert meta["span_start"] == "2023-04-04T23:59:00+00:00" and meta["span_end"] == "2023-04-05T00:07:00+00:00"
    assert meta["spark_seconds"] > 0 and meta["lag_seconds"] > 0
    with db.cursor() as cursor:
        cursor.execute("SELECT symbol, price, agg_trade_id, price_24h_ago, high_24h, low_24h, volume_24h,"
                       " trade_count_24h FROM stock.latest_prices")
        assert cursor.fetchall() == [("BTCUSDT", trades[-1].price, trades[-1].agg_id, trades[0].price,
                                      max(t.price for t in trades), min(t.price for t in trades),
                                      sum(t.qty for t in trades), len(trades))]


def test_btcusdt_and_ethusdt_2024_equal_the_reference_in_both_tables(db, candles_env, shared_data: Path) -> None:
    trades = [t for symbol in ("BTCUSDT", "ETHUSDT") for t in trades_from_csv(
        next(shared_data.joinpath(PAIR_2024).glob(f"spot_{symbol}_trades_*.csv")), symbol)]
    insert_trades(db, trades)
    result = run_candles(candles_env)
    assert_all_checks_passed(result)
    assert_matches_reference(db, trades)
    assert metadata(result, "latest_prices")["symbols_published"] == 2


def edge_case_trades() -> list[Trade]:
    """Boundaries, equal timestamps (order by agg id, not price or arrival), one-trade windows, empty
    minutes, multi-trade aggTrades, rounding ties, and a second symbol that starts later."""
    t = ms(T0)
    p = Decimal
    return [
        Trade("BTCUSDT", 100, p("60000.00000000"), p("0.50000000"), t, True),                 # first ms of a window
        Trade("BTCUSDT", 101, p("60010.00000000"), p("0.25000000"), t + 59_999, False, 3),     # last ms of it
        Trade("BTCUSDT", 102, p("60005.00000000"), p("1.00000000"), t + 60_000, False),        # first ms of the next
        Trade("BTCUSDT", 105, p("59990.00000000"), p("0.10000000"), t + 90_000, True),         # equal timestamps:
        Trade("BTCUSDT", 103, p("60020.00000000"), p("0.10000000"), t + 90_000, False),        # open = agg 103,
        Trade("BTCUSDT", 104, p("59980.00000000"), p("0.10000000"), t + 90_000, True),         # close = agg 105
        # 3 empty minutes before:
        Trade("BTCUSDT", 106, p("60001.00000000"), p("0.00100000"), t + 5 * 60_000 + 1, False),
        Trade("ETHUSDT", 7, p("0.00000001"), p("1.00000000"), t + 2 * 60_000 + 5, False),       # avg tie 0.000000015
        Trade("ETHUSDT", 8, p("0.00000002"), p("1.00000000"), t + 2 * 60_000 + 6, False),       # -> 0.00000002
        Trade("ETHUSDT", 9, p("0.00000001"), p("3.00000000"), t + 3 * 60_000, True),
        Trade("ETHUSDT", 10, p("0.00000002"), p("1.00000000"), t + 3 * 60_000, True),           # vwap 0.0000000125
        Trade("ETHUSDT", 11, p("2500.12345678"), p("0.33333333"), t + 7 * 60_000 + 1, False),   # one-trade window
        Trade("BTCUSDT", 107, p("60002.00000000"), p("0.00200000"), t + 8 * 60_000 + 30_000, True),  # forming
    ]


def test_edge_cases_equal_the_reference(db, candles_env) -> None:
    trades = edge_case_trades()
    insert_trades(db, list(reversed(trades)))
    result = run_candles(candles_env, raise_on_error=False)
    assert_all_checks_passed(result)
    assert_matches_reference(db, trades)
    candles = fetch_candles(db, "aggregated_prices_1min")
    assert candles[("BTCUSDT", T0 + timedelta(minutes=1))]["open_price"] == Decimal("60005")
    assert candles[("BTCUSDT", T0 + timedelta(minutes=1))]["close_price"] == Decimal("59990")
    assert candles[("BTCUSDT", T0)]["trade_count"] == 4
    assert candles[("BTCUSDT", T0 + timedelta(minutes=3))]["close_price"] == Decimal("59990")
    assert candles[("BTCUSDT", T0 + timedelta(minutes=8))]["is_final"] is False
    assert candles[("ETHUSDT", T0 + timedelta(minutes=2))]["avg_price"] == Decimal("0.00000002")
    assert candles[("ETHUSDT", T0 + timedelta(minutes=3))]["vwap"] == Decimal("0.00000001")
    assert ("ETHUSDT", T0 + timedelta(minutes=1)) not in candles  # before ETH's first trade


def test_late_trades_recompute_their_windows_and_the_empty_minutes_after_them(db, candles_env) -> None:
    t = ms(T0)
    on_time = [Trade("BTCUSDT", agg, Decimal(60000 + minute), Decimal("0.1"), t + minute * 60_000 + 1)
               for agg, minute in ((0, 0), (1, 1), (2, 2), (5, 6), (6, 9), (7, 20))]
    insert_trades(db, on_time)
    first = run_candles(candles_env, raise_on_error=False)
    assert_matches_reference(db, on_time)
    failed = {(c.asset_key.to_user_string(), c.check_name) for c in first.get_asset_check_evaluations() if not c.passed}
    assert failed == {("aggregated_1min", "agg_ids_complete"), ("aggregated_5min", "agg_ids_complete")}  # 3, 4 missing
    assert "latest_prices" not in {e.asset_key.to_user_string() for e in first.get_asset_materialization_events()}

    late = [Trade("BTCUSDT", 4, Decimal("59000"), Decimal("2"), t + 4 * 60_000 + 7),       # into an empty minute
            Trade("BTCUSDT", 3, Decimal("61000"), Decimal("1"), t + 2 * 60_000 + 59_999),  # into a closed minute
            Trade("BTCUSDT", 8, Decimal("60200"), Decimal("0.1"), t + 22 * 60_000)]        # closes minutes 20, 21
    insert_trades(db, late)
    result = run_candles(candles_env, raise_on_error=False)
    assert_matches_reference(db, on_time + late)
    assert_all_checks_passed(result)
    meta = metadata(result, "aggregated_1min")
    assert meta["changed_rows"] == 3
    assert meta["rows_read"] < len(on_time + late)  # only the affected windows' trades were read
    candles = fetch_candles(db, "aggregated_prices_1min")
    assert candles[("BTCUSDT", T0 + timedelta(minutes=2))]["close_price"] == Decimal("61000")
    # carried from the late one:
    assert candles[("BTCUSDT", T0 + timedelta(minutes=5))]["close_price"] == Decimal("59000")
    assert candles[("BTCUSDT", T0 + timedelta(minutes=20))]["is_final"] is True


def final_candles(db: psycopg2.extensions.connection) -> dict[tuple[str, str, datetime], dict[str, object]]:
    return {(table, *key): candle for table in ("aggregated_prices_1min", "aggregated_prices_5min")
            for key, candle in fetch_candles(db, table).items() if candle["is_final"]}


def test_a_lagging_symbol_gets_no_final_candle_past_its_own_watermark(db, candles_env) -> None:
    """Regression (issue 9, point 3): with one watermark for all symbols, ETH (lagging 7 minutes behind
    BTC) got final zero-volume candles up to BTC's newest trade, corrected later by ETH's real trades."""
    t = ms(T0)
    btc = [Trade("BTCUSDT", agg, Decimal(60000 + agg), Decimal("0.1"), t + agg * 60_000 + 7) for agg in range(12)]
    eth = [Trade("ETHUSDT", agg, Decimal(3000 + agg), Decimal("1"), t + agg * 60_000 + 9) for agg in range(4)]
    insert_trades(db, btc + eth)
    assert run_candles(candles_env).success
    assert_matches_reference(db, btc + eth)
    published = final_candles(db)
    assert max(start for table, symbol, start in published if symbol == "ETHUSDT") == T0 + timedelta(minutes=2)

    eth_late = [Trade("ETHUSDT", agg, Decimal(2000 + agg), Decimal("2"), t + agg * 60_000 + 11) for agg in range(4, 12)]
    insert_trades(db, eth_late)
    assert run_candles(candles_env).success
    assert_matches_reference(db, btc + eth + eth_late)
    after = final_candles(db)
    assert {key: after[key] for key in published} == published  # nothing published as final changed


def test_a_quiet_symbol_s_minute_becomes_final_when_the_market_clock_says_it_closed(db, candles_env) -> None:
    """A symbol without a next trade: its minutes close by the exchange's clock (stock.market_clock), not
    before, and not by another symbol's trades."""
    t = ms(T0)
    trades = [Trade("BTCUSDT", agg, Decimal(60000), Decimal("0.1"), t + agg * 60_000 + 7) for agg in range(10)]
    trades.append(Trade("ETHUSDT", 1, Decimal(3000), Decimal("1"), t + 2 * 60_000 + 9))
    insert_trades(db, trades)
    assert run_candles(candles_env).success
    assert_matches_reference(db, trades)
    assert fetch_candles(db, "aggregated_prices_1min")[("ETHUSDT", T0 + timedelta(minutes=2))]["is_final"] is False

    clock = {"ETHUSDT": t + 6 * 60_000}
    with db.cursor() as cursor:
        cursor.execute("INSERT INTO stock.market_clock (source, symbol, closed_until_ms) VALUES ('test', %s, %s)",
                       next(iter(clock.items())))
    assert run_candles(candles_env).success
    assert_matches_reference(db, trades, clock)
    minutes = fetch_candles(db, "aggregated_prices_1min")
    eth = {start: c for (symbol, start), c in minutes.items() if symbol == "ETHUSDT"}
    assert sorted(eth) == [T0 + timedelta(minutes=m) for m in range(2, 6)]
    assert all(c["is_final"] for c in eth.values())


def test_a_trade_too_large_to_aggregate_is_left_out_and_named_instead_of_stopping_every_candle(
        db, candles_env, shared_data: Path) -> None:
    """Regression (issue 9, point 2): price 999999999999 × quantity 999999999999 overflowed DECIMAL(38, 16)
    in Spark and failed every run for every symbol until the row was deleted by hand."""
    trades = trades_from_csv(shared_data.joinpath(*BTC_2023), "BTCUSDT")
    eth = [Trade("ETHUSDT", agg, Decimal("1800"), Decimal("1"), trades[0].time_ms + agg * 30_000)
           for agg in range(1, 17) if agg != 4]
    poison = Trade("ETHUSDT", 4, Decimal("999999999999"), Decimal("999999999999"), trades[0].time_ms + 4 * 30_000 + 1)
    insert_trades(db, trades + eth + [poison])
    result = run_candles(candles_env, raise_on_error=False)
    assert result.success
    assert_matches_reference(db, trades + eth)
    failed = [c for c in result.get_asset_check_evaluations() if not c.passed]
    assert [(c.asset_key.to_user_string(), c.check_name) for c in failed] == [("aggregated_1min", "trades_aggregable")]
    assert failed[0].metadata["sample"].value == "ETHUSDT 4 999999999999.00000000 999999999999.00000000"
    meta = metadata(result, "aggregated_1min")
    assert (meta["trades_left_out"], meta["trades_left_out_sample"]) == (1, "ETHUSDT 4")
    assert metadata(result, "latest_prices")["symbols_published"] == 2


def test_the_5min_check_compares_like_with_like_across_a_trade_committed_between_the_two_runs(
        db, candles_env, spark: SparkSession) -> None:
    """Regression (issue 9, point 9): the 1-minute and 5-minute candles are computed from trades read at
    different moments; a trade committed between the two runs (here a late one into a closed minute and
    one that closes the 5-minute window) made the check fail a healthy run."""
    t = ms(T0)
    on_time = [Trade("BTCUSDT", agg, Decimal(60000 + agg), Decimal("0.1"), t + agg * 60_000 + 7)
               for agg in (0, 1, 3, 4)]
    between = [Trade("BTCUSDT", 2, Decimal("61000"), Decimal("1"), t + 2 * 60_000 + 9),
               Trade("BTCUSDT", 5, Decimal("59000"), Decimal("1"), t + 4 * 60_000 + 50_000),
               Trade("BTCUSDT", 6, Decimal("60100"), Decimal("1"), t + 5 * 60_000 + 10_000)]
    store = MarketStore(candles_env.database_url)
    insert_trades(db, on_time)
    refresh_candles(spark, store, ONE_MINUTE)
    insert_trades(db, between)
    refresh_candles(spark, store, FIVE_MINUTES)
    evaluation = run_check(candles_env, FIVE_MINUTE_CONSISTENCY)
    assert evaluation.passed, {k: v.value for k, v in evaluation.metadata.items()}
    assert evaluation.metadata["pending"].value == 1

    assert_all_checks_passed(run_candles(candles_env))
    assert_matches_reference(db, on_time + between)
    evaluation = run_check(candles_env, FIVE_MINUTE_CONSISTENCY)
    assert evaluation.passed and evaluation.metadata["pending"].value == 0


def test_the_cursor_never_skips_rows_that_commit_out_of_order(db, candles_env, stack) -> None:
    t = ms(T0)
    insert_trades(db, [Trade("BTCUSDT", 1, Decimal("100"), Decimal("1"), t + 1)])
    early = psycopg2.connect(stack.settings.database_url)
    try:
        insert_trades(early, [Trade("BTCUSDT", 2, Decimal("90"), Decimal("1"), t + 2)])  # older xid, still open
        late = psycopg2.connect(stack.settings.database_url)
        insert_trades(late, [Trade("BTCUSDT", 3, Decimal("95"), Decimal("1"), t + 70_000)])  # newer xid, commits first
        late.commit()
        late.close()
        assert run_candles(candles_env).success
        first_pass = fetch_candles(db, "aggregated_prices_1min")[("BTCUSDT", T0)]
        assert (first_pass["trade_count"], first_pass["low_price"]) == (1, Decimal("100"))
        early.commit()
    finally:
        early.close()
    result = run_candles(candles_env)
    assert metadata(result, "aggregated_1min")["changed_rows"] >= 1
    trades = [Trade("BTCUSDT", 1, Decimal("100"), Decimal("1"), t + 1),
              Trade("BTCUSDT", 2, Decimal("90"), Decimal("1"), t + 2),
              Trade("BTCUSDT", 3, Decimal("95"), Decimal("1"), t + 70_000)]
    assert_matches_reference(db, trades)


def test_the_in_process_session_leaves_spark_remote_as_the_user_set_it(candles_env) -> None:
    """PySpark's builder must not see the empty SPARK_REMOTE, but whatever reads the settings next must."""
    assert run_candles(candles_env).success
    assert os.environ["SPARK_REMOTE"] == ""
    assert PlatformSettings.from_env().spark_remote == ""


def test_an_in_process_session_is_made_with_an_empty_spark_remote_in_the_environment(candles_env, spark) -> None:
    """The benches' and the CLI's way: SPARK_REMOTE= set, spark_session() called (PySpark's builder checks
    the environment at every config() call, not only when it creates the session)."""
    assert os.environ["SPARK_REMOTE"] == ""
    assert spark_session(candles_env).range(3).count() == 3


def test_backfill_recomputes_every_window_of_the_range_from_scratch(db, candles_env, shared_data: Path) -> None:
    trades = trades_from_csv(shared_data.joinpath(*BTC_2023), "BTCUSDT")
    insert_trades(db, trades)
    assert run_candles(candles_env).success
    with db.cursor() as cursor:
        cursor.execute("UPDATE stock.aggregated_prices_1min SET close_price = 1"
                       " WHERE window_start = '2023-04-05T00:02Z'")
        cursor.execute("DELETE FROM stock.aggregated_prices_1min WHERE window_start = '2023-04-05T00:03Z'")
        cursor.execute("UPDATE stock.aggregated_prices_5min SET trade_count = 0"
                       " WHERE window_start < '2023-04-05T00:05Z'")
        cursor.execute("INSERT INTO stock.aggregated_prices_1min (symbol, window_start, window_end, open_price,"
                       " close_price, high_price, low_price, avg_price, total_volume, quote_volume, taker_buy_volume,"
                       " trade_count, is_final) VALUES ('BTCUSDT', '2023-04-04T23:50Z', '2023-04-04T23:51Z',"
                       " 1, 1, 1, 1, 1, 0, 0, 0, 0, true)")
    assert backfill.main(["--start", "2023-04-04T23:45:00Z", "--end", "2023-04-05T00:04:30Z"]) == 0
    assert_matches_reference(db, trades)


def test_jdbc_reads_push_the_symbol_and_time_range_down(candles_env, spark: SparkSession) -> None:
    segment = Segment("BTCUSDT", ms(T0), ms(T0) + 60_000, needs_seed=False)
    frame = read_trades(spark, JdbcTarget.from_database_url(candles_env.database_url), [segment], 60_000)
    spark.conf.set("spark.sql.maxMetadataStringLength", "100000")
    try:
        plan = frame._jdf.queryExecution().executedPlan().toString()
    finally:
        spark.conf.unset("spark.sql.maxMetadataStringLength")
    pushed = plan[plan.index("PushedFilters"):].split("]", 1)[0]
    assert "symbol" in pushed and "event_time" in pushed and "timestamp" in pushed, plan


@pytest.fixture
def good_data(db, candles_env, shared_data: Path) -> Iterator[psycopg2.extensions.connection]:
    insert_trades(db, trades_from_csv(shared_data.joinpath(*BTC_2023), "BTCUSDT"))
    assert_all_checks_passed(run_candles(candles_env))
    yield db


CORRUPTIONS = {
    "ohlc_invariants": ["UPDATE stock.aggregated_prices_1min SET high_price = low_price - 1"
                        " WHERE window_start = '2023-04-05T00:01Z'"],
    "one_row_per_window": ["ALTER TABLE stock.aggregated_prices_1min"
                           " DROP CONSTRAINT aggregated_prices_1min_symbol_window_start_key",
                           "INSERT INTO stock.aggregated_prices_1min (symbol, window_start, window_end, open_price,"
                           " close_price, high_price, low_price, avg_price, total_volume, quote_volume,"
                           " taker_buy_volume, trade_count, first_agg_trade_id, last_agg_trade_id, is_final)"
                           " SELECT symbol, window_start, window_end, open_price, close_price, high_price, low_price,"
                           " avg_price, total_volume, quote_volume, taker_buy_volume, trade_count, first_agg_trade_id,"
                           " last_agg_trade_id, is_final FROM stock.aggregated_prices_1min"
                           " WHERE window_start = '2023-04-05T00:01Z'"],
    "windows_aligned": ["UPDATE stock.aggregated_prices_1min SET window_end = window_end + interval '1 minute'"
                        " WHERE window_start = '2023-04-05T00:01Z'"],
    "no_missing_window": ["DELETE FROM stock.aggregated_prices_1min WHERE window_start = '2023-04-05T00:02Z'"],
    "agg_ids_complete": ["DELETE FROM stock.real_time_prices WHERE agg_trade_id = 3071246000"],
    "consistent_with_aggregated_1min": ["UPDATE stock.aggregated_prices_5min SET total_volume = total_volume + 1"
                                        " WHERE window_start = '2023-04-05T00:00Z'"],
    "latest_prices_match_candles": ["UPDATE stock.latest_prices SET price = price + 1"],
    "trades_aggregable": ["INSERT INTO stock.real_time_prices (symbol, price, timestamp, event_time, volume,"
                          " agg_trade_id, first_trade_id, last_trade_id, trades, is_buyer_maker, source)"
                          " VALUES ('ETHUSDT', 999999999999, 1680652800000, '2023-04-05T00:00Z', 999999999999,"
                          " 1, 1, 1, 1, false, 'test')"],
}
CHECKS = {**{key.name: key for key in aggregated_1min_checks.check_keys},
          "consistent_with_aggregated_1min": FIVE_MINUTE_CONSISTENCY,
          "latest_prices_match_candles": next(iter(latest_prices_match_candles.check_keys))}


@pytest.mark.parametrize("check_name", list(CORRUPTIONS))
def test_each_check_passes_on_good_data_and_fails_on_its_corruption(good_data, candles_env, check_name: str) -> None:
    check = CHECKS[check_name]
    assert run_check(candles_env, check).passed
    try:
        with good_data.cursor() as cursor:
            for statement in CORRUPTIONS[check_name]:
                cursor.execute(statement)
        evaluation = run_check(candles_env, check)
        assert not evaluation.passed
        assert evaluation.severity == dg.AssetCheckSeverity.ERROR
    finally:
        if check_name == "one_row_per_window":
            with good_data.cursor() as cursor:
                cursor.execute("DELETE FROM stock.aggregated_prices_1min a USING stock.aggregated_prices_1min b"
                               " WHERE a.symbol = b.symbol AND a.window_start = b.window_start AND a.id > b.id")
                cursor.execute("ALTER TABLE stock.aggregated_prices_1min ADD CONSTRAINT"
                               " aggregated_prices_1min_symbol_window_start_key UNIQUE (symbol, window_start)")


def test_source_freshness_warns_on_old_trades_and_passes_on_fresh_ones(db, candles_env) -> None:
    insert_trades(db, [Trade("BTCUSDT", 1, Decimal("1"), Decimal("1"), ms(T0))])
    stale = run_check(candles_env, SOURCE_IS_FRESH)
    assert not stale.passed and stale.severity == dg.AssetCheckSeverity.WARN
    now = datetime.now(UTC)
    insert_trades(db, [Trade("ETHUSDT", 1, Decimal("1"), Decimal("1"), ms(now))])
    assert run_check(candles_env, SOURCE_IS_FRESH).passed


def test_the_minute_close_sensor_asks_once_per_closed_minute_as_soon_as_the_watermark_passed_it(
        db, candles_env, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a virtual clock: the sensor's waits (for a close, for the watermark) advance it, and trades "arrive"
    when it passes their arrival time, as they would reach PostgreSQL while an evaluation waits."""
    instance = dg.DagsterInstance.ephemeral()
    state: dict[str, object] = {"cursor": None}
    clock = {"now": 0}
    arrivals: list[tuple[int, int, int]] = []  # (arrives at, agg id, trade time offset), in order

    def sleep(duration_ms: int) -> None:
        clock["now"] += duration_ms
        while arrivals and arrivals[0][0] <= clock["now"]:
            _, agg_id, offset_ms = arrivals.pop(0)
            trade(agg_id, offset_ms)

    monkeypatch.setattr(sensors, "now_ms", lambda: clock["now"])
    monkeypatch.setattr(sensors, "sleep_ms", sleep)

    def tick(at_ms: int) -> dg.SkipReason | dg.RunRequest:
        clock["now"] = at_ms
        context = dg.build_sensor_context(instance=instance, cursor=state["cursor"],
                                          resources={"market_db": MarketDatabase.from_settings(candles_env)})
        result = minute_close_sensor(context)
        if isinstance(result, dg.SkipReason):
            return result
        state["cursor"] = result.cursor
        [observation] = result.asset_events
        assert observation.asset_key == dg.AssetKey("real_time_prices")
        assert observation.tags["dagster/data_version"] == str(newest_trade_ms())
        [request] = result.run_requests
        return request

    def newest_trade_ms() -> int:
        with db.cursor() as cursor:
            cursor.execute("SELECT max(timestamp) FROM stock.real_time_prices")
            return cursor.fetchone()[0]

    def trade(agg_id: int, offset_ms: int) -> None:
        insert_trades(db, [Trade("BTCUSDT", agg_id, Decimal("1"), Decimal("1"), ms(T0, offset_ms))])

    closes, grace, loop = ms(T0), sensors.CLOSE_GRACE_S * 1000, sensors.DAEMON_LOOP_S * 1000
    assert "no new trades" in tick(closes + 1_000).skip_message
    trade(1, -30_000)
    # Closed 2 s ago, and no trade at or after its end for a whole daemon loop: a run now would publish it
    # as not final.
    assert "waiting for the watermark" in tick(closes + 2_000).skip_message
    assert clock["now"] >= closes + 2_000 + loop
    trade(2, 500)
    request = tick(closes + 8_000)
    assert isinstance(request, dg.RunRequest) and request.run_key == f"minute-{closes}"
    assert "was requested" in tick(closes + 9_000).skip_message  # once per minute, no query

    instance.add_run(dg.DagsterRun(job_name="candles_job", run_id="in-flight", status=dg.DagsterRunStatus.STARTED,
                                   tags={"crypto/pipeline": "candles"}))
    assert "in flight" in tick(closes + 61_000).skip_message
    instance.delete_run("in-flight")
    # An evaluation 3 s before the next close waits for it, then for the watermark: the trade after the close
    # reaches PostgreSQL 1.2 s after it, and the run is asked for then, not at the daemon's next look.
    arrivals.append((closes + 61_200, 3, 60_100))
    request = tick(closes + 57_000)
    assert request.run_key == f"minute-{closes + 60_000}"
    assert closes + 61_200 <= clock["now"] < closes + 61_200 + 1_000 * sensors.WATERMARK_POLL_S + 1
    # A quiet stream: the next minute's run comes at the end of the grace period.
    assert "waiting for the watermark" in tick(closes + 121_000).skip_message
    assert tick(closes + 120_000 + grace).run_key == f"minute-{closes + 120_000}"

    assert run_candles(candles_env, instance=instance).success
    assert "no new trades" in tick(closes + 181_000).skip_message
    trade(4, -150_000)  # only a late trade, into a minute published final long ago
    assert tick(closes + 180_000 + grace).run_key == f"minute-{closes + 180_000}"


def test_the_same_assets_run_on_a_standalone_spark_cluster(db, platform_env, shared_data: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """SPARK_CLUSTER=1: the backfill CLI attaches to the local stack's Spark Connect server, which runs the
    assets on the standalone master and worker (executors load the JDBC jar and read PostgreSQL themselves)."""
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    settings = platform_env(SPARK_CLUSTER=1, SPARK_MASTER="", SPARK_MASTER_PORT=free_port(),
                            SPARK_MASTER_WEBUI_PORT=free_port(), SPARK_WORKER_MEMORY="1g")
    trades = trades_from_csv(shared_data.joinpath(*BTC_2023), "BTCUSDT")
    insert_trades(db, trades)
    services = [s for s in LocalStack(settings).services() if s.name.startswith("spark-")]
    assert [s.name for s in services] == ["spark-master", "spark-worker", "spark-connect"]
    try:
        for service in services:
            service.start()
        result = subprocess.run([sys.executable, "-m", "crypto_assets.backfill", "--start", "2023-04-04T23:55:00Z",
                                 "--end", "2023-04-05T00:10:00Z"], env={**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"},
                                capture_output=True, text=True, timeout=600, check=False)
    finally:
        for service in reversed(services):
            service.stop()
    assert result.returncode == 0, result.stderr[-3000:]
    assert "backfill: aggregated_1min windows_written=8" in result.stdout
    assert_matches_reference(db, trades)
