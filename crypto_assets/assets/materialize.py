"""The body every candle asset shares: one run of its interval, logged, its figures as metadata."""

import dagster as dg
from dagster_pyspark import PySparkResource

from crypto_assets.assets.run_config import CandleRunConfig
from crypto_assets.candle_runs import refresh_candles, refresh_rollup
from crypto_assets.candles import Timeframe
from crypto_assets.resources import MarketDatabase


def materialize_candles(context: dg.AssetExecutionContext, config: CandleRunConfig, pyspark: PySparkResource,
                        market_db: MarketDatabase, timeframe: Timeframe) -> dg.MaterializeResult:
    """A bad backfill range fails the run with its one-line reason; a rolled-up interval reads the minutes."""
    try:
        backfill = config.backfill_range(timeframe)
    except ValueError as error:
        raise dg.Failure(description=str(error)) from None
    refresh = refresh_rollup if timeframe.rolled_up else refresh_candles
    run = refresh(pyspark.spark_session, market_db.store(), timeframe, backfill=backfill)
    source = "one-minute candles" if timeframe.rolled_up else "trades"
    context.log.info(f"{timeframe.asset_name}: {run.windows_written} windows written from {run.metadata()['rows_read']}"
                     f" {source} in {run.spark_seconds:.1f} s of Spark" + (" (backfill)" if backfill else ""))
    if not timeframe.rolled_up and run.left_out:
        context.log.warning(f"{timeframe.asset_name}: {len(run.left_out)} trades left out, price x volume too large"
                            f" to aggregate: {run.metadata()['trades_left_out_sample']}")
    return dg.MaterializeResult(metadata={**run.metadata(), "mode": "backfill" if backfill else "incremental"})
