"""``real_time_prices``: the raw trades the Kafka consumer writes, an external asset Dagster observes."""

import dagster as dg

from crypto_assets.assets.sql_checks import SqlCheck, sql_check
from crypto_assets.candle_runs import now_ms
from crypto_assets.candle_store import MarketStore
from crypto_assets.candles import from_ms
from crypto_assets.check_queries import source_freshness
from crypto_assets.resources import MarketDatabase

SOURCE_FRESHNESS_LIMIT_S = 300.0


@dg.observable_source_asset(
    key="real_time_prices",
    group_name="market_data",
    description="One row per Binance aggregate trade (stock.real_time_prices), written by the Kafka consumer.",
    metadata={"table": "stock.real_time_prices"},
    tags={"dagster/kind/postgres": "", "dagster/kind/kafka": ""},
)
def real_time_prices(market_db: MarketDatabase) -> dg.ObserveResult:
    """Observes the newest trade time and the size of the table; the data version moves with new trades."""
    version, metadata = observe(market_db.store())
    return dg.ObserveResult(data_version=version, metadata=metadata)


def observe(store: MarketStore) -> tuple[dg.DataVersion, dict[str, object]]:
    """The data version is the newest trade's time (ms): it moves exactly when newer trades arrived. The
    minute-close sensor records it with every run it requests, so the UI shows the source's freshness."""
    with store.transaction(snapshot=True) as cursor:
        # The newest trade's time read from the newest partition (sql/013); the partitions' row estimates
        # summed (a partitioned table's own estimate is only set by an ANALYZE of it, which autovacuum never runs).
        cursor.execute("SELECT (extract(epoch FROM stock.newest_trade_time()) * 1000)::bigint")
        newest_ms = cursor.fetchone()[0]
        cursor.execute("SELECT coalesce(max(id), 0) FROM stock.real_time_prices")
        max_id = cursor.fetchone()[0]
        cursor.execute("SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint FROM pg_inherits i"
                       " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'stock.real_time_prices'::regclass")
        estimate = cursor.fetchone()[0]
    return dg.DataVersion(str(newest_ms or 0)), {
        "newest_trade": from_ms(newest_ms).isoformat() if newest_ms is not None else None,
        "newest_trade_age_seconds": None if newest_ms is None else round((now_ms() - newest_ms) / 1000, 3),
        "row_count_estimate": int(estimate),
        "max_id": int(max_id),
    }


# Warns (does not block) when ingestion stalls: the candles would still be exact, only late.
source_is_fresh = sql_check(real_time_prices, SqlCheck(
    "source_is_fresh", f"The newest trade is at most {SOURCE_FRESHNESS_LIMIT_S:.0f} s old",
    lambda cursor: source_freshness(cursor, now_ms(), SOURCE_FRESHNESS_LIMIT_S),
    blocking=False, severity=dg.AssetCheckSeverity.WARN))
