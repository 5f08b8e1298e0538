"""What the candle assets share: run config, the materialization body, the check factory, freshness."""

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import dagster as dg
from dagster_pyspark import PySparkResource

from crypto_assets import checks
from crypto_assets.candles import Timeframe, align_range
from crypto_assets.engine import refresh_candles, refresh_rollups
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


def _backfill_ranges(config: CandleRunConfig, timeframes: Sequence[Timeframe]) -> dict[Timeframe, tuple[int, int]] | None:
    try:
        ranges = {timeframe: config.backfill_range(timeframe) for timeframe in timeframes}
    except ValueError as error:
        raise dg.Failure(description=str(error)) from None
    return None if None in ranges.values() else ranges


def materialize_candles(context: dg.AssetExecutionContext, config: CandleRunConfig, pyspark: PySparkResource,
                        market_db: MarketDatabase, timeframe: Timeframe) -> dg.MaterializeResult:
    """An interval computed from the trades (one and five minutes)."""
    backfill = (_backfill_ranges(config, [timeframe]) or {}).get(timeframe)
    run = refresh_candles(pyspark.spark_session, market_db.store(), timeframe, backfill=backfill)
    context.log.info(f"{timeframe.asset_name}: {run.windows_written} windows written from {run.metadata()['rows_read']}"
                     f" trades in {run.spark_seconds:.1f} s of Spark" + (" (backfill)" if backfill else ""))
    if run.left_out:
        context.log.warning(f"{timeframe.asset_name}: {len(run.left_out)} trades left out, price x volume too large"
                            f" to aggregate: {run.metadata()['trades_left_out_sample']}")
    return dg.MaterializeResult(metadata={**run.metadata(), "mode": "backfill" if backfill else "incremental"})


def materialize_rollups(context: dg.AssetExecutionContext, config: CandleRunConfig, pyspark: PySparkResource,
                        market_db: MarketDatabase, timeframes: Sequence[Timeframe]) -> list[dg.MaterializeResult]:
    """The intervals rolled up from the one-minute candles, one Spark job for all; one result per interval."""
    backfill = _backfill_ranges(config, timeframes)
    runs = refresh_rollups(pyspark.spark_session, market_db.store(), timeframes, backfill=backfill)
    mode = "backfill" if backfill else "incremental"
    context.log.info("rollups: " + ", ".join(f"{t.asset_name} {run.windows_written}" for t, run in runs.items())
                     + f" windows written in {next(iter(runs.values())).spark_seconds:.1f} s of Spark ({mode})")
    return [dg.MaterializeResult(asset_key=timeframe.asset_name, metadata={**run.metadata(), "mode": mode})
            for timeframe, run in runs.items()]


@dataclass(frozen=True)
class CandleCheck:
    """One check of a candle table: its name (as the UI shows it), the SQL behind it (``checks``), blocking."""

    name: str
    description: str
    query: Callable[[checks.Cursor, Timeframe], checks.CheckOutcome]
    blocking: bool = True
    additional_deps: tuple[dg.AssetsDefinition, ...] = ()


def candle_checks() -> list[CandleCheck]:
    """The integrity checks every candle table must pass; errors, blocking downstream assets."""
    return [
        CandleCheck("ohlc_invariants", "low <= open, close <= high; volume, count >= 0; zero volume if and only if "
                    "zero count", checks.ohlc_invariants),
        CandleCheck("one_row_per_window", "No two candles for one (symbol, window_start)", checks.one_row_per_window),
        CandleCheck("windows_aligned", "Windows start on the clock's boundaries and last one window",
                    checks.windows_aligned),
        CandleCheck("no_missing_window", "Every window between a symbol's first and last candle exists",
                    checks.no_missing_window),
        CandleCheck("agg_ids_complete", "Agg trade ids of the checked final windows have no gap and the candles span "
                    "them all", checks.agg_ids_complete),
    ]


def consistent_with_one_minute_check(timeframe: Timeframe, one_minute: dg.AssetsDefinition) -> CandleCheck:
    """Each final candle of a longer interval equals its one-minute candles rolled up."""
    return CandleCheck("consistent_with_aggregated_1min",
                       f"Each final {timeframe.label} candle equals its 1-minute candles rolled up",
                       checks.consistent_with_one_minute, additional_deps=(one_minute,))


def checks_step(name: str, checked: Sequence[tuple[str, Timeframe, Sequence[CandleCheck]]]) -> dg.AssetChecksDefinition:
    """The checks of one or more candle tables (``(asset name, timeframe, checks)``) as one step: one
    PostgreSQL snapshot for all of them, one result per check under its own name (the UI and the blocking
    rules see each check as before). A step with a failed blocking check fails after every check ran, so
    the assets downstream of it do not run. Any subset of the checks can be run alone (UI, tests)."""
    plan = {dg.AssetCheckKey(dg.AssetKey(asset), check.name): (timeframe, check)
            for asset, timeframe, candle_checks_ in checked for check in candle_checks_}
    specs = [dg.AssetCheckSpec(key.name, asset=key.asset_key, description=check.description, blocking=check.blocking,
                               additional_deps=list(check.additional_deps) or None)
             for key, (_timeframe, check) in plan.items()]

    @dg.multi_asset_check(name=name, specs=specs, can_subset=True,
                          description="Integrity checks of " + ", ".join(asset for asset, _t, _c in checked))
    def _checks(context: dg.AssetCheckExecutionContext, market_db: MarketDatabase) -> Iterator[dg.AssetCheckResult]:
        with market_db.store().transaction(snapshot=True) as cursor:
            for key, (timeframe, check) in plan.items():
                if key in context.selected_asset_check_keys:
                    outcome = check.query(cursor, timeframe)
                    yield dg.AssetCheckResult(asset_key=key.asset_key, check_name=key.name, passed=outcome.passed,
                                              severity=dg.AssetCheckSeverity.ERROR, metadata=outcome.metadata)

    return _checks
