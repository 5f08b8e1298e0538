"""``aggregated_5min``: exact five-minute candles (stock.aggregated_prices_5min), computed from the trades."""

# No postponed annotations here: Dagster reads the run-config class from the signature at import.
import dagster as dg
from dagster_pyspark import PySparkResource

from crypto_assets.assets.aggregated_1min import aggregated_1min
from crypto_assets.assets.attributes import CANDLE_FRESHNESS, GROUP, KINDS
from crypto_assets.assets.materialize import materialize_candles
from crypto_assets.assets.real_time_prices import real_time_prices
from crypto_assets.assets.run_config import CandleRunConfig
from crypto_assets.assets.sql_checks import candle_checks, consistent_with_one_minute_check
from crypto_assets.candles import FIVE_MINUTES
from crypto_assets.resources import MarketDatabase


@dg.asset(
    group_name=GROUP,
    kinds=KINDS,
    deps=[real_time_prices],
    freshness_policy=CANDLE_FRESHNESS,
    metadata={"table": f"stock.{FIVE_MINUTES.table}", "window": "5 minutes, UTC, aligned to the clock"},
)
def aggregated_5min(context: dg.AssetExecutionContext, config: CandleRunConfig, pyspark: PySparkResource,
                    market_db: MarketDatabase) -> dg.MaterializeResult:
    """Five-minute candles read from the trades, not rolled up from aggregated_1min: avg_price is the mean
    of the trades' prices, which the rounded one-minute averages cannot give exactly."""
    return materialize_candles(context, config, pyspark, market_db, FIVE_MINUTES)


# Open, close, high, low, volume and count of a final window agree with the one-minute table.
consistent_with_aggregated_1min = consistent_with_one_minute_check(
    FIVE_MINUTES, aggregated_5min, aggregated_1min, "Each final 5-minute candle equals its 1-minute candles rolled up")


aggregated_5min_checks = [*candle_checks(FIVE_MINUTES, aggregated_5min), consistent_with_aggregated_1min]
