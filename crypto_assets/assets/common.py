"""What the candle assets share: run config, the materialization body, the check factory, freshness."""

from collections.abc import Callable
from datetime import datetime, timedelta

import dagster as dg
from dagster_pyspark import PySparkResource

from crypto_assets import check_queries
from crypto_assets.candle_runs import refresh_candles, refresh_rollup
from crypto_assets.candles import Timeframe, align_range
from crypto_assets.resources import MarketDatabase

GROUP = "market_candles"
KINDS = {"spark", "postgres"}
PIPELINE_TAG = "crypto/pipeline"
CANDLE_FRESHNESS = dg.FreshnessPolicy.time_window(fail_window=timedelta(minutes=5), warn_window=timedelta(minutes=2))


class CandleRunConfig(dg.Config):
    """Empty: incremental, the windows touched by rows since the cursor. ``start`` and ``end`` (ISO-8601
    with a zone): a backfill that recomputes every window of ``[start, end)`` from scratch."""

    start: str = ""
    end: str = ""

    def backfill_range(self, timeframe: Timeframe) -> tuple[int, int] | None:
        if not self.start and not self.end:
            return None
        start, end = parse_range(self.start, self.end)
        return align_range(start, end, timeframe.size_ms)


def parse_range(start: str, end: str) -> tuple[datetime, datetime]:
    """Both ISO-8601 instants with a zone, start before end; raises ValueError with a one-line reason."""
    if not start or not end:
        raise ValueError("give both start and end")
    moments = []
    for name, text in (("start", start), ("end", end)):
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{name}={text!r} is not an ISO-8601 date-time (e.g. 2024-08-08T23:00:00Z)") from None
        if moment.tzinfo is None:
            raise ValueError(f"{name}={text!r} has no time zone; add Z or +00:00")
        moments.append(moment)
    if moments[0] >= moments[1]:
        raise ValueError(f"start {start} is not before end {end}")
    return moments[0], moments[1]


def materialize_candles(context: dg.AssetExecutionContext, config: CandleRunConfig, pyspark: PySparkResource,
                        market_db: MarketDatabase, timeframe: Timeframe) -> dg.MaterializeResult:
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


def _check(timeframe: Timeframe, asset: dg.AssetsDefinition, name: str, description: str,
           query: Callable[..., check_queries.CheckOutcome], additional_deps: list | None = None) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=asset, name=name, description=description, blocking=True,
                    additional_deps=additional_deps)
    def _candle_check(market_db: MarketDatabase) -> dg.AssetCheckResult:
        with market_db.store().transaction(snapshot=True) as cursor:
            outcome = query(cursor, timeframe)
        return dg.AssetCheckResult(passed=outcome.passed, severity=dg.AssetCheckSeverity.ERROR,
                                   metadata=outcome.metadata)

    return _candle_check


def candle_checks(timeframe: Timeframe, asset: dg.AssetsDefinition) -> list[dg.AssetChecksDefinition]:
    """The integrity checks every candle table must pass; errors, blocking downstream assets."""
    return [
        _check(timeframe, asset, "ohlc_invariants", "low <= open, close <= high; volume, count >= 0; "
               "zero volume if and only if zero count", check_queries.ohlc_invariants),
        _check(timeframe, asset, "one_row_per_window", "No two candles for one (symbol, window_start)",
               check_queries.one_row_per_window),
        _check(timeframe, asset, "windows_aligned", "Windows start on the clock's boundaries and last one window",
               check_queries.windows_aligned),
        _check(timeframe, asset, "no_missing_window", "Every window between a symbol's first and last candle exists",
               check_queries.no_missing_window),
        _check(timeframe, asset, "agg_ids_complete", "Agg trade ids of the checked final windows have no gap and "
               "the candles span them all", check_queries.agg_ids_complete),
    ]


def consistent_with_one_minute_check(timeframe: Timeframe, asset: dg.AssetsDefinition,
                                     one_minute: dg.AssetsDefinition) -> dg.AssetChecksDefinition:
    """Each final candle of a longer interval equals its one-minute candles rolled up."""
    return _check(timeframe, asset, "consistent_with_aggregated_1min",
                  f"Each final {timeframe.label} candle equals its 1-minute candles rolled up",
                  check_queries.consistent_with_one_minute, additional_deps=[one_minute])
