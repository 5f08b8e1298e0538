"""The bodies the candle assets share: one run of their intervals, logged, its figures as metadata."""

from collections.abc import Iterator, Sequence

import dagster as dg
from dagster_pyspark import PySparkResource

from crypto_assets.assets.run_config import CandleRunConfig
from crypto_assets.candle_runs import refresh_candles, refresh_rollups
from crypto_assets.candles import Timeframe
from crypto_assets.resources import MarketDatabase


def _backfill_range(config: CandleRunConfig, timeframe: Timeframe) -> tuple[int, int] | None:
    """A bad backfill range fails the run with its one-line reason."""
    try:
        return config.backfill_range(timeframe)
    except ValueError as error:
        raise dg.Failure(description=str(error)) from None


def materialize_candles(context: dg.AssetExecutionContext, config: CandleRunConfig, pyspark: PySparkResource,
                        market_db: MarketDatabase, timeframe: Timeframe) -> dg.MaterializeResult:
    """An interval computed from the trades."""
    backfill = _backfill_range(config, timeframe)
    run = refresh_candles(pyspark.spark_session, market_db.store(), timeframe, backfill=backfill)
    context.log.info(f"{timeframe.asset_name}: {run.windows_written} windows written from {run.metadata()['rows_read']}"
                     f" trades in {run.spark_seconds:.1f} s of Spark" + (" (backfill)" if backfill else ""))
    if run.left_out:
        context.log.warning(f"{timeframe.asset_name}: {len(run.left_out)} trades left out, price x volume too large"
                            f" to aggregate: {run.metadata()['trades_left_out_sample']}")
    return dg.MaterializeResult(metadata={**run.metadata(), "mode": "backfill" if backfill else "incremental"})


def materialize_rollups(context: dg.AssetExecutionContext, config: CandleRunConfig, pyspark: PySparkResource,
                        market_db: MarketDatabase, timeframes: Sequence[Timeframe]) -> Iterator[dg.MaterializeResult]:
    """The selected ones of the intervals rolled up from the one-minute candles, in one Spark job."""
    selected = [t for t in timeframes if dg.AssetKey(t.asset_name) in context.selected_asset_keys]
    backfills = {t: backfill for t in selected if (backfill := _backfill_range(config, t)) is not None}
    runs = refresh_rollups(pyspark.spark_session, market_db.store(), selected, backfills)
    for timeframe, run in runs.items():
        backfill = timeframe in backfills
        context.log.info(f"{timeframe.asset_name}: {run.windows_written} windows written from {run.minutes_spanned}"
                         f" one-minute candles in {run.spark_seconds:.1f} s of Spark (shared by {len(runs)} intervals)"
                         + (" (backfill)" if backfill else ""))
        yield dg.MaterializeResult(asset_key=timeframe.asset_name,
                                   metadata={**run.metadata(), "mode": "backfill" if backfill else "incremental"})
