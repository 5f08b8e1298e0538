"""The intervals rolled up from ``aggregated_1min``: 15 minutes, 1 hour, 4 hours and 1 day, one asset each,
computed in one step.

Rolled up rather than read from the trades: a forming day is recomputed from at most 1,440 one-minute
candles instead of a day of trades at every tick, and a backfill reads the trades once for all of them
(``bench/history.py`` measures both). Exact all the same: the one-minute table keeps each window's exact
sums, open/high/low skip the empty minutes (see ``transforms.candles_from_minutes``).
"""

# No postponed annotations here: Dagster reads the run-config class from the signature at import.
import dagster as dg
from dagster_pyspark import PySparkResource

from crypto_assets.assets.aggregated_1min import aggregated_1min
from crypto_assets.assets.attributes import CANDLE_FRESHNESS, GROUP, KINDS
from crypto_assets.assets.materialize import materialize_rollups
from crypto_assets.assets.run_config import CandleRunConfig
from crypto_assets.assets.sql_checks import consistent_with_one_minute, integrity_checks, sql_checks
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


# One step for the four: one Spark job reads the minutes and writes every interval's candles, where a step each
# cost four jobs and four steps (~2 s of a run). Each interval keeps its own asset, cursor and checks.
@dg.multi_asset(name="rollups", specs=[rollup_spec(timeframe) for timeframe in ROLLED_UP], can_subset=True)
def rollups(context: dg.AssetExecutionContext, config: CandleRunConfig, pyspark: PySparkResource,
            market_db: MarketDatabase):
    yield from materialize_rollups(context, config, pyspark, market_db, ROLLED_UP)


def rollup_checks(timeframe: Timeframe) -> dg.AssetChecksDefinition:
    """One step: the integrity checks and the agreement with the one-minute candles it was rolled up from."""
    return sql_checks(dg.AssetKey(timeframe.asset_name),
                      [*integrity_checks(timeframe), consistent_with_one_minute(timeframe, aggregated_1min)])


ROLLUP_CHECKS = [rollup_checks(timeframe) for timeframe in ROLLED_UP]
