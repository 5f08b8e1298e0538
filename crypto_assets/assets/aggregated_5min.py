"""``aggregated_5min``: exact five-minute candles (stock.aggregated_prices_5min), computed from the trades."""

# No postponed annotations here: Dagster reads the run-config class from the signature at import.
import dagster as dg
from dagster_pyspark import PySparkResource

from crypto_assets.assets.aggregated_1min import aggregated_1min
from crypto_assets.assets.attributes import CANDLE_FRESHNESS, GROUP, KINDS
from crypto_assets.assets.materialize import materialize_candles
from crypto_assets.assets.real_time_prices import real_time_prices
from crypto_assets.assets.run_config import CandleRunConfig
from crypto_assets.assets.sql_checks import consistent_with_one_minute, integrity_checks, sql_check, sql_checks
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


aggregated_5min_checks = sql_checks(aggregated_5min, integrity_checks(FIVE_MINUTES))

# Open, close, high, low, volume and count of a final window agree with the one-minute table. A step of its own:
# it waits for aggregated_1min, which the five-minute candles do not, so a failed one-minute run leaves the
# integrity checks above still running.
consistent_with_aggregated_1min = sql_check(aggregated_5min, consistent_with_one_minute(FIVE_MINUTES, aggregated_1min))
