"""The intervals rolled up from ``aggregated_1min``: 15 minutes, 1 hour, 4 hours and 1 day, one asset each,
materialized together.

Rolled up rather than read from the trades: a forming day is recomputed from at most 1,440 one-minute
candles instead of a day of trades at every tick, and a backfill reads the trades once for all of them
(``bench/history.py`` measures both). Exact all the same: the one-minute table keeps each window's exact
sums, open/high/low skip the empty minutes (see ``transforms.candles_from_minutes``).

One step for all four: the changed one-minute candles are read, each interval's windows computed and staged
by one Spark job, and each table merged in its own transaction; a step per interval cost a Spark job, a set
of locks and Dagster's step overhead each, every minute (``bench/freshness.py`` measures the run).
"""

# No postponed annotations here: Dagster reads the run-config class from the signature at import.
from collections.abc import Iterator

import dagster as dg
from dagster_pyspark import PySparkResource

from crypto_assets.assets.aggregated_1min import aggregated_1min
from crypto_assets.assets.common import (
    CANDLE_FRESHNESS,
    GROUP,
    KINDS,
    CandleRunConfig,
    candle_checks,
    checks_step,
    consistent_with_one_minute_check,
    materialize_rollups,
)
from crypto_assets.candles import TIMEFRAMES, Timeframe
from crypto_assets.resources import MarketDatabase

ROLLED_UP = [timeframe for timeframe in TIMEFRAMES if timeframe.rolled_up]


def rollup_spec(timeframe: Timeframe) -> dg.AssetSpec:
    return dg.AssetSpec(
        timeframe.asset_name,
        group_name=GROUP,
        kinds=KINDS,
        deps=[aggregated_1min],
        freshness_policy=CANDLE_FRESHNESS,
        metadata={"table": f"stock.{timeframe.table}", "window": f"{timeframe.label}, UTC, aligned to the clock"},
        description=f"Exact {timeframe.label} candles (stock.{timeframe.table}) rolled up from the one-minute "
                    "candles whose rows changed since the last run; the forming window is published as not final.",
    )


@dg.multi_asset(name="candle_rollups", specs=[rollup_spec(timeframe) for timeframe in ROLLED_UP])
def candle_rollups(context: dg.AssetExecutionContext, config: CandleRunConfig, pyspark: PySparkResource,
                   market_db: MarketDatabase) -> Iterator[dg.MaterializeResult]:
    """Every rolled-up interval from the one-minute candles that changed since its own cursor."""
    yield from materialize_rollups(context, config, pyspark, market_db, ROLLED_UP)


ROLLUP_ASSETS = [candle_rollups]
ROLLUP_CHECKS = [checks_step("candle_rollups_checks", [
    (timeframe.asset_name, timeframe, [*candle_checks(), consistent_with_one_minute_check(timeframe, aggregated_1min)])
    for timeframe in ROLLED_UP])]
