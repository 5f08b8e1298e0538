"""The one Dagster wrapper of the checks' SQL (``check_queries``), and the checks every candle table has.

A check reads one read-only snapshot of the market database as role ``candle_writer``; its query's
outcome becomes the check's result and metadata.
"""

from collections.abc import Callable

import dagster as dg

from crypto_assets import check_queries
from crypto_assets.candles import Timeframe
from crypto_assets.check_queries import CheckOutcome, Cursor
from crypto_assets.resources import MarketDatabase


def sql_check(asset: dg.AssetsDefinition, name: str, description: str, query: Callable[[Cursor], CheckOutcome], *,
              blocking: bool = True, severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR,
              additional_deps: list | None = None) -> dg.AssetChecksDefinition:
    """The check ``name`` of ``asset``: ``query`` over one snapshot; ``blocking`` stops downstream assets."""

    @dg.asset_check(asset=asset, name=name, description=description, blocking=blocking,
                    additional_deps=additional_deps)
    def _sql_check(market_db: MarketDatabase) -> dg.AssetCheckResult:
        with market_db.store().transaction(snapshot=True) as cursor:
            outcome = query(cursor)
        return dg.AssetCheckResult(passed=outcome.passed, severity=severity, metadata=outcome.metadata)

    return _sql_check


def _candle_check(timeframe: Timeframe, asset: dg.AssetsDefinition, name: str, description: str,
                  query: Callable[[Cursor, Timeframe], CheckOutcome],
                  additional_deps: list | None = None) -> dg.AssetChecksDefinition:
    return sql_check(asset, name, description, lambda cursor: query(cursor, timeframe), additional_deps=additional_deps)


def candle_checks(timeframe: Timeframe, asset: dg.AssetsDefinition) -> list[dg.AssetChecksDefinition]:
    """The integrity checks every candle table must pass; errors, blocking downstream assets."""
    return [
        _candle_check(timeframe, asset, "ohlc_invariants", "low <= open, close <= high; volume, count >= 0; "
                      "zero volume if and only if zero count", check_queries.ohlc_invariants),
        _candle_check(timeframe, asset, "one_row_per_window", "No two candles for one (symbol, window_start)",
                      check_queries.one_row_per_window),
        _candle_check(timeframe, asset, "windows_aligned", "Windows start on the clock's boundaries and last one "
                      "window", check_queries.windows_aligned),
        _candle_check(timeframe, asset, "no_missing_window", "Every window between a symbol's first and last candle "
                      "exists", check_queries.no_missing_window),
        _candle_check(timeframe, asset, "agg_ids_complete", "Agg trade ids of the checked final windows have no gap "
                      "and the candles span them all", check_queries.agg_ids_complete),
    ]


def consistent_with_one_minute_check(timeframe: Timeframe, asset: dg.AssetsDefinition,
                                     one_minute: dg.AssetsDefinition,
                                     description: str | None = None) -> dg.AssetChecksDefinition:
    """Each final candle of a longer interval equals its one-minute candles rolled up."""
    return _candle_check(timeframe, asset, "consistent_with_aggregated_1min",
                         description or f"Each final {timeframe.label} candle equals its 1-minute candles rolled up",
                         check_queries.consistent_with_one_minute, additional_deps=[one_minute])
