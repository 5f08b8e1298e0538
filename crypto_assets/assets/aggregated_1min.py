"""``aggregated_1min``: exact one-minute OHLCV candles (stock.aggregated_prices_1min), equal to Binance's klines."""

# No postponed annotations here: Dagster reads the run-config class from the signature at import.
import dagster as dg
from dagster_pyspark import PySparkResource

from crypto_assets import check_queries
from crypto_assets.assets.attributes import CANDLE_FRESHNESS, GROUP, KINDS
from crypto_assets.assets.materialize import materialize_candles
from crypto_assets.assets.real_time_prices import real_time_prices
from crypto_assets.assets.run_config import CandleRunConfig
from crypto_assets.assets.sql_checks import SqlCheck, integrity_checks, sql_checks
from crypto_assets.candles import ONE_MINUTE
from crypto_assets.resources import MarketDatabase


@dg.asset(
    group_name=GROUP,
    kinds=KINDS,
    deps=[real_time_prices],
    freshness_policy=CANDLE_FRESHNESS,
    metadata={"table": f"stock.{ONE_MINUTE.table}", "window": "1 minute, UTC, [start, start + 1 min)"},
)
def aggregated_1min(context: dg.AssetExecutionContext, config: CandleRunConfig, pyspark: PySparkResource,
                    market_db: MarketDatabase) -> dg.MaterializeResult:
    """Recomputes, from all their trades, the one-minute windows that rows since the last run touched,
    the empty minutes after them and the minutes that closed since; publishes the forming minute as not
    final. Upserted on (symbol, window_start) with the cursor in one transaction."""
    return materialize_candles(context, config, pyspark, market_db, ONE_MINUTE)


# Names (symbol, agg id) each trade the candles left out; not blocking: the other trades' candles and latest
# prices stay right and keep flowing while someone decides about it.
trades_aggregable = SqlCheck(
    "trades_aggregable", "No trade was left out of the candles for a price x volume too large to aggregate",
    lambda cursor: check_queries.trades_aggregable(cursor, ONE_MINUTE), blocking=False)

aggregated_1min_checks = sql_checks(aggregated_1min, [*integrity_checks(ONE_MINUTE), trades_aggregable])
