"""``latest_prices``: the latest price per symbol with 24-hour statistics (stock.latest_prices), for Superset."""

import dagster as dg
from dagster_pyspark import PySparkResource

from crypto_assets import check_queries
from crypto_assets.assets.aggregated_1min import aggregated_1min
from crypto_assets.assets.attributes import CANDLE_FRESHNESS, GROUP, KINDS
from crypto_assets.assets.real_time_prices import real_time_prices
from crypto_assets.assets.sql_checks import SqlCheck, sql_check
from crypto_assets.candle_runs import refresh_latest
from crypto_assets.resources import MarketDatabase


@dg.asset(
    group_name=GROUP,
    kinds=KINDS,
    deps=[aggregated_1min, real_time_prices],
    freshness_policy=CANDLE_FRESHNESS,
    metadata={"table": "stock.latest_prices"},
)
def latest_prices(context: dg.AssetExecutionContext, pyspark: PySparkResource,
                  market_db: MarketDatabase) -> dg.MaterializeResult:
    """Each symbol's newest trade (highest agg id in the candles) and its 24-hour change, high, low and
    volume from the newest 1,440 one-minute candles; the whole set is published in one transaction."""
    run = refresh_latest(pyspark.spark_session, market_db.store())
    context.log.info(f"latest_prices: {run.symbols} symbols published")
    return dg.MaterializeResult(metadata=run.metadata())


# Catches a half-published set or a latest price that no candle explains.
latest_prices_match_candles = sql_check(latest_prices, SqlCheck(
    "latest_prices_match_candles", "Latest price = close of the newest 1-minute candle with trades, within the 24 h "
    "range", check_queries.latest_prices_consistent))
