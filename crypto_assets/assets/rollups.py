"""The intervals rolled up from ``aggregated_1min``: 15 minutes, 1 hour, 4 hours and 1 day, one asset each.

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
from crypto_assets.assets.materialize import materialize_candles
from crypto_assets.assets.run_config import CandleRunConfig
from crypto_assets.assets.sql_checks import candle_checks, consistent_with_one_minute_check
from crypto_assets.candles import TIMEFRAMES, Timeframe
from crypto_assets.resources import MarketDatabase


def rollup_asset(timeframe: Timeframe) -> dg.AssetsDefinition:
    @dg.asset(
        name=timeframe.asset_name,
        group_name=GROUP,
        kinds=KINDS,
        deps=[aggregated_1min],
        freshness_policy=CANDLE_FRESHNESS,
        metadata={"table": f"stock.{timeframe.table}", "window": f"{timeframe.label}, UTC, aligned to the clock"},
        description=f"Exact {timeframe.label} candles (stock.{timeframe.table}) rolled up from the one-minute "
                    "candles whose rows changed since the last run; the forming window is published as not final.",
    )
    def _rollup(context: dg.AssetExecutionContext, config: CandleRunConfig, pyspark: PySparkResource,
                market_db: MarketDatabase) -> dg.MaterializeResult:
        return materialize_candles(context, config, pyspark, market_db, timeframe)

    return _rollup


def rollup_checks(timeframe: Timeframe, asset: dg.AssetsDefinition) -> list[dg.AssetChecksDefinition]:
    return [*candle_checks(timeframe, asset), consistent_with_one_minute_check(timeframe, asset, aggregated_1min)]


ROLLUP_ASSETS = [rollup_asset(timeframe) for timeframe in TIMEFRAMES if timeframe.rolled_up]
ROLLUP_CHECKS = [check for timeframe, asset in zip([t for t in TIMEFRAMES if t.rolled_up], ROLLUP_ASSETS, strict=True)
                 for check in rollup_checks(timeframe, asset)]
