"""The one Dagster wrapper of the checks' SQL (``check_queries``), and the checks every candle table has.

An asset's checks run as one step: its selected checks' queries over one read-only snapshot of the market
database as role ``candle_writer``, each query's outcome its check's result and metadata. One step per asset
rather than one per check: a step costs Dagster ~0.1 s of events whatever its query does, and a candle run
carries some forty checks. Each check keeps its own key, so a single one can still be selected and run.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import dagster as dg

from crypto_assets import check_queries
from crypto_assets.candles import Timeframe
from crypto_assets.check_queries import CheckOutcome, Cursor
from crypto_assets.resources import MarketDatabase


@dataclass(frozen=True)
class SqlCheck:
    """One check: ``query`` over a snapshot; ``blocking`` stops the asset's downstream assets when it fails
    with ERROR severity; ``additional_deps``: other assets the query reads (it then runs after them)."""

    name: str
    description: str
    query: Callable[[Cursor], CheckOutcome]
    blocking: bool = True
    severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR
    additional_deps: Sequence[dg.AssetsDefinition] = field(default_factory=tuple)


def sql_checks(asset: dg.AssetsDefinition | dg.AssetKey, checks: Sequence[SqlCheck], name: str | None = None
               ) -> dg.AssetChecksDefinition:
    """``checks`` of ``asset`` as one step (named ``name``, default ``<asset>_checks``)."""
    key = asset if isinstance(asset, dg.AssetKey) else asset.key
    by_key = {dg.AssetCheckKey(key, check.name): check for check in checks}
    specs = [dg.AssetCheckSpec(check.name, asset=asset, description=check.description, blocking=check.blocking,
                               additional_deps=list(check.additional_deps)) for check in checks]

    @dg.multi_asset_check(specs=specs, name=name or f"{key.to_python_identifier()}_checks", can_subset=True)
    def _sql_checks(context: dg.AssetCheckExecutionContext, market_db: MarketDatabase):
        selected = [(key, check) for key, check in by_key.items() if key in context.selected_asset_check_keys]
        with market_db.store().transaction(snapshot=True) as cursor:
            outcomes = [(key, check, check.query(cursor)) for key, check in selected]
        for key, check, outcome in outcomes:
            yield dg.AssetCheckResult(asset_key=key.asset_key, check_name=key.name, passed=outcome.passed,
                                      severity=check.severity, metadata=outcome.metadata)

    return _sql_checks


def sql_check(asset: dg.AssetsDefinition, check: SqlCheck) -> dg.AssetChecksDefinition:
    """A check in a step of its own, named after the check."""
    return sql_checks(asset, [check], name=f"{asset.key.to_python_identifier()}_{check.name}")


def _candle_check(timeframe: Timeframe, name: str, description: str,
                  query: Callable[[Cursor, Timeframe], CheckOutcome], **options) -> SqlCheck:
    return SqlCheck(name, description, lambda cursor: query(cursor, timeframe), **options)


def integrity_checks(timeframe: Timeframe) -> list[SqlCheck]:
    """The integrity checks every candle table must pass; errors, blocking downstream assets."""
    return [
        _candle_check(timeframe, "ohlc_invariants", "low <= open, close <= high; volume, count >= 0; "
                      "zero volume if and only if zero count", check_queries.ohlc_invariants),
        _candle_check(timeframe, "one_row_per_window", "No two candles for one (symbol, window_start)",
                      check_queries.one_row_per_window),
        _candle_check(timeframe, "windows_aligned", "Windows start on the clock's boundaries and last one window",
                      check_queries.windows_aligned),
        _candle_check(timeframe, "no_missing_window", "Every window between a symbol's first and last candle exists",
                      check_queries.no_missing_window),
        _candle_check(timeframe, "agg_ids_complete", "Agg trade ids of the checked final windows have no gap and "
                      "the candles span them all", check_queries.agg_ids_complete),
    ]


def consistent_with_one_minute(timeframe: Timeframe, one_minute: dg.AssetsDefinition) -> SqlCheck:
    """Each final candle of a longer interval equals its one-minute candles rolled up."""
    return _candle_check(timeframe, "consistent_with_aggregated_1min",
                         f"Each final candle of {timeframe.label} equals its 1-minute candles rolled up",
                         check_queries.consistent_with_one_minute, additional_deps=(one_minute,))
