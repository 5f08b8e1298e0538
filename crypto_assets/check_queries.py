"""The SQL behind the asset checks: each returns (passed, metadata) for the windows it examines.

Checks look at the last ``CHECK_LOOKBACK_MINUTES`` of windows (what the last runs wrote), so their cost
does not grow with history; "no missing window" spans each symbol's whole history through the unique
index. Every query is read-only and parameterized.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg2.extensions
from psycopg2 import sql

from crypto_assets.candles import MAX_TRADE_QUOTE, MINUTE_MS, ONE_MINUTE, Timeframe, from_ms, to_ms

CHECK_LOOKBACK_MINUTES = 60
SAMPLE_ROWS = 5

Cursor = psycopg2.extensions.cursor


@dataclass(frozen=True)
class CheckOutcome:
    passed: bool
    metadata: dict[str, object]


def _table(timeframe: Timeframe) -> sql.Identifier:
    return sql.Identifier("stock", timeframe.table)


def check_scope(cursor: Cursor, timeframe: Timeframe) -> tuple[int, int] | None:
    """``[lo, hi)`` of window starts examined: the lookback before the newest window, that one included."""
    cursor.execute(sql.SQL("SELECT max(window_start) FROM {t}").format(t=_table(timeframe)))
    newest = cursor.fetchone()[0]
    if newest is None:
        return None
    hi = to_ms(newest) + timeframe.size_ms
    return hi - max(CHECK_LOOKBACK_MINUTES * MINUTE_MS, timeframe.size_ms), hi


def _in_scope(scope: tuple[int, int]) -> tuple[object, object]:
    return from_ms(scope[0]), from_ms(scope[1])


def _scope_metadata(scope: tuple[int, int] | None) -> dict[str, object]:
    if scope is None:
        return {"windows_checked_from": None, "windows_checked_to": None}
    return {"windows_checked_from": from_ms(scope[0]).isoformat(), "windows_checked_to": from_ms(scope[1]).isoformat()}


def _violations(cursor: Cursor, query: sql.Composable, params: tuple, scope: tuple[int, int] | None) -> CheckOutcome:
    cursor.execute(query, params)
    rows = cursor.fetchall()
    sample = "; ".join(" ".join(str(v) for v in row) for row in rows[:SAMPLE_ROWS])
    return CheckOutcome(not rows, {"violations": len(rows), "sample": sample, **_scope_metadata(scope)})


def ohlc_invariants(cursor: Cursor, timeframe: Timeframe) -> CheckOutcome:
    """low <= open, close <= high; volumes and counts >= 0; zero volume if and only if zero count."""
    scope = check_scope(cursor, timeframe)
    if scope is None:
        return CheckOutcome(True, _scope_metadata(scope))
    query = sql.SQL(
        "SELECT symbol, window_start FROM {t} WHERE window_start >= %s AND window_start < %s AND NOT ("
        " low_price <= least(open_price, close_price) AND greatest(open_price, close_price) <= high_price"
        " AND total_volume >= 0 AND quote_volume >= 0 AND taker_buy_volume >= 0 AND taker_buy_volume <= total_volume"
        " AND trade_count >= 0 AND (total_volume = 0) = (trade_count = 0)) ORDER BY 2"
    ).format(t=_table(timeframe))
    return _violations(cursor, query, _in_scope(scope), scope)


def one_row_per_window(cursor: Cursor, timeframe: Timeframe) -> CheckOutcome:
    """No two candles share (symbol, window_start) — the unique key could have been dropped."""
    scope = check_scope(cursor, timeframe)
    if scope is None:
        return CheckOutcome(True, _scope_metadata(scope))
    query = sql.SQL(
        "SELECT symbol, window_start, count(*) FROM {t} WHERE window_start >= %s AND window_start < %s"
        " GROUP BY 1, 2 HAVING count(*) > 1 ORDER BY 2"
    ).format(t=_table(timeframe))
    return _violations(cursor, query, _in_scope(scope), scope)


def windows_aligned(cursor: Cursor, timeframe: Timeframe) -> CheckOutcome:
    """Window starts on the clock's boundaries, ends exactly one window later."""
    scope = check_scope(cursor, timeframe)
    if scope is None:
        return CheckOutcome(True, _scope_metadata(scope))
    query = sql.SQL(
        "SELECT symbol, window_start, window_end FROM {t} WHERE window_start >= %s AND window_start < %s"
        " AND ((extract(epoch FROM window_start) * 1000)::bigint %% %s <> 0"
        "  OR window_end <> window_start + %s * interval '1 millisecond') ORDER BY 2"
    ).format(t=_table(timeframe))
    return _violations(cursor, query, (*_in_scope(scope), timeframe.size_ms, timeframe.size_ms), scope)


def no_missing_window(cursor: Cursor, timeframe: Timeframe) -> CheckOutcome:
    """Every window between a symbol's first and last candle exists (empty ones included)."""
    query = sql.SQL(
        "SELECT symbol, min(window_start), max(window_start), count(*),"
        " ((extract(epoch FROM max(window_start) - min(window_start)) * 1000)::bigint / %s + 1) AS expected"
        " FROM {t} GROUP BY symbol HAVING count(*) <> ((extract(epoch FROM max(window_start) - min(window_start))"
        " * 1000)::bigint / %s + 1) ORDER BY 1"
    ).format(t=_table(timeframe))
    outcome = _violations(cursor, query, (timeframe.size_ms, timeframe.size_ms), None)
    return CheckOutcome(outcome.passed, {"symbols_with_gaps": outcome.metadata["violations"],
                                         "sample": outcome.metadata["sample"]})


def agg_ids_complete(cursor: Cursor, timeframe: Timeframe) -> CheckOutcome:
    """Within the final windows checked, each symbol's agg ids have no gap and the candles span them all.

    A gap means trades were lost on the way in; first/last agg ids that differ from the candles' mean a
    candle was computed from an incomplete read. The forming window is left out: trades keep arriving.
    Trades the candles cannot aggregate count for the gap but not for the span: ``trades_aggregable``
    names them.
    """
    scope = check_scope(cursor, timeframe)
    if scope is None:
        return CheckOutcome(True, _scope_metadata(scope))
    table = _table(timeframe)
    cursor.execute(sql.SQL("SELECT max(window_end) FROM {t} WHERE is_final AND window_start >= %s").format(t=table),
                   (from_ms(scope[0]),))
    final_end = cursor.fetchone()[0]
    if final_end is None:
        return CheckOutcome(True, _scope_metadata(None))
    scope = (scope[0], to_ms(final_end))
    query = sql.SQL(
        "WITH trades AS ("
        "  SELECT symbol, count(*) AS n, min(agg_trade_id) AS first_id, max(agg_trade_id) AS last_id,"
        "   min(agg_trade_id) FILTER (WHERE price * volume < %s) AS lo,"
        "   max(agg_trade_id) FILTER (WHERE price * volume < %s) AS hi"
        "  FROM stock.real_time_prices WHERE event_time >= %s AND event_time < %s GROUP BY symbol),"
        " candles AS ("
        "  SELECT symbol, min(first_agg_trade_id) AS lo, max(last_agg_trade_id) AS hi"
        "  FROM {t} WHERE window_start >= %s AND window_start < %s GROUP BY symbol)"
        " SELECT t.symbol, t.n, t.lo, t.hi, c.lo, c.hi FROM trades t LEFT JOIN candles c USING (symbol)"
        " WHERE t.n <> t.last_id - t.first_id + 1 OR c.lo IS DISTINCT FROM t.lo OR c.hi IS DISTINCT FROM t.hi"
        " ORDER BY 1"
    ).format(t=table)
    return _violations(cursor, query, (MAX_TRADE_QUOTE, MAX_TRADE_QUOTE, *_in_scope(scope), *_in_scope(scope)), scope)


def trades_aggregable(cursor: Cursor, timeframe: Timeframe) -> CheckOutcome:
    """No trade of the windows checked was left out of the candles for being too large to aggregate.

    A trade whose price × volume reaches ``MAX_TRADE_QUOTE`` cannot be summed in the candles' decimal types;
    the candle job leaves it out rather than fail every run. This names each such trade (symbol, agg id)
    so that someone decides: delete it, or widen the types.
    """
    scope = check_scope(cursor, timeframe)
    if scope is None:
        return CheckOutcome(True, _scope_metadata(scope))
    query = sql.SQL("SELECT symbol, agg_trade_id, price, volume FROM stock.real_time_prices"
                    " WHERE event_time >= %s AND event_time < %s AND price * volume >= %s ORDER BY 1, 2")
    return _violations(cursor, query, (*_in_scope(scope), MAX_TRADE_QUOTE), scope)


def consistent_with_one_minute(cursor: Cursor, timeframe: Timeframe) -> CheckOutcome:
    """Each final window equals its final one-minute candles rolled up: open, close, high, low, volume, count.

    Open, high and low come from the one-minute windows with trades (an empty minute carries the close
    from before the window); a window without any trade carries that close throughout.

    Like with like, in this one snapshot: the two tables are computed by different runs from trades read
    at different moments, so a window is compared only when both sides have read all its trades and are
    final. Rows at or past either asset's cursor may be unread by it (a late trade committed between the
    one-minute and the five-minute run, a backlog): their windows wait for the next run (``pending``);
    so does a window whose one-minute candles are not all final yet. A rollup reads one-minute candles,
    not trades: its windows wait while a minute of theirs changed after the rollup's cursor.
    """
    scope = check_scope(cursor, timeframe)
    if scope is None:
        return CheckOutcome(True, _scope_metadata(scope))
    if timeframe.rolled_up:
        pending = sql.SQL(
            "WITH pending AS ("
            "  SELECT DISTINCT symbol, window_start - ((extract(epoch FROM window_start) * 1000)::bigint %% %s)"
            "   * interval '1 millisecond' AS bucket FROM {one} WHERE updated_at > coalesce("
            "   (SELECT minutes_read_upto FROM stock.rollup_cursors WHERE name = %s), '-infinity')"
            "   AND window_start >= %s AND window_start < %s),")
        pending_params = (timeframe.size_ms, timeframe.asset_name, *_in_scope(scope))
    else:
        pending = sql.SQL(
            "WITH cursor AS ("
            "  SELECT CASE WHEN count(c.ingest_xid) = 2 THEN min(c.ingest_xid) ELSE '0'::xid8 END AS xid"
            "  FROM (VALUES (%s), (%s)) AS a(name) LEFT JOIN stock.candle_cursors c USING (name)),"
            " pending AS ("
            "  SELECT DISTINCT symbol, timestamptz 'epoch' + (timestamp - timestamp %% %s) * interval '1 millisecond'"
            "   AS bucket FROM stock.real_time_prices WHERE ingest_xid >= (SELECT xid FROM cursor)"
            "   AND event_time >= %s AND event_time < %s),")
        pending_params = (ONE_MINUTE.asset_name, timeframe.asset_name, timeframe.size_ms, *_in_scope(scope))
    query = sql.SQL(
        "{pending}"
        " rolled AS ("
        "  SELECT symbol, window_start - ((extract(epoch FROM window_start) * 1000)::bigint %% %s)"
        "   * interval '1 millisecond' AS bucket,"
        "   coalesce((array_agg(open_price ORDER BY window_start) FILTER (WHERE trade_count > 0))[1],"
        "    (array_agg(open_price ORDER BY window_start))[1]) AS open_price,"
        "   (array_agg(close_price ORDER BY window_start DESC))[1] AS close_price,"
        "   coalesce(max(high_price) FILTER (WHERE trade_count > 0), max(high_price)) AS high_price,"
        "   coalesce(min(low_price) FILTER (WHERE trade_count > 0), min(low_price)) AS low_price,"
        "   sum(total_volume) AS total_volume, sum(trade_count) AS trade_count, bool_and(is_final) AS is_final"
        "  FROM {one} WHERE window_start >= %s AND window_start < %s GROUP BY 1, 2),"
        " compared AS ("
        "  SELECT f.*, r.symbol AS rolled_symbol, r.open_price AS r_open, r.close_price AS r_close,"
        "   r.high_price AS r_high, r.low_price AS r_low, r.total_volume AS r_volume, r.trade_count AS r_count,"
        "   r.is_final AS r_final, p.symbol IS NOT NULL OR r.is_final IS FALSE AS waits"
        "  FROM {t} f LEFT JOIN rolled r ON r.symbol = f.symbol AND r.bucket = f.window_start"
        "  LEFT JOIN pending p ON p.symbol = f.symbol AND p.bucket = f.window_start"
        "  WHERE f.is_final AND f.window_start >= %s AND f.window_start < %s)"
        " SELECT symbol, window_start, waits FROM compared"
        " WHERE waits OR rolled_symbol IS NULL"
        "  OR (open_price, close_price, high_price, low_price, total_volume, trade_count)"
        "  IS DISTINCT FROM (r_open, r_close, r_high, r_low, r_volume, r_count)"
        " ORDER BY 2, 1"
    ).format(pending=pending.format(one=_table(ONE_MINUTE)), t=_table(timeframe), one=_table(ONE_MINUTE))
    params = (*pending_params, timeframe.size_ms, *_in_scope(scope), *_in_scope(scope))
    cursor.execute(query, params)
    rows = cursor.fetchall()
    pending = [row[:2] for row in rows if row[2]]
    wrong = [row[:2] for row in rows if not row[2]]
    sample = "; ".join(" ".join(str(v) for v in row) for row in wrong[:SAMPLE_ROWS])
    return CheckOutcome(not wrong, {"violations": len(wrong), "sample": sample, "pending": len(pending),
                                    **_scope_metadata(scope)})


def source_freshness(cursor: Cursor, now_ms: int, limit_s: float) -> CheckOutcome:
    """The newest trade is at most ``limit_s`` old."""
    cursor.execute("SELECT stock.newest_trade_time()")  # max(event_time), from the newest partition (sql/013)
    newest = cursor.fetchone()[0]
    if newest is None:
        return CheckOutcome(False, {"newest_trade": None, "age_seconds": None, "limit_seconds": limit_s})
    age = (now_ms - to_ms(newest)) / 1000
    return CheckOutcome(age <= limit_s, {"newest_trade": newest.isoformat(), "age_seconds": round(age, 3),
                                         "limit_seconds": limit_s})


def latest_prices_consistent(cursor: Cursor) -> CheckOutcome:
    """Each symbol's latest price is the close of its newest one-minute candle with trades, within 24 h range."""
    query = sql.SQL(
        "SELECT l.symbol, l.price, c.close_price FROM stock.latest_prices l"
        " LEFT JOIN LATERAL (SELECT close_price, last_agg_trade_id FROM {one} a WHERE a.symbol = l.symbol"
        "  AND a.trade_count > 0 ORDER BY a.window_start DESC LIMIT 1) c ON true"
        " WHERE c.close_price IS DISTINCT FROM l.price OR c.last_agg_trade_id IS DISTINCT FROM l.agg_trade_id"
        "  OR NOT (l.low_24h <= l.price AND l.price <= l.high_24h) ORDER BY 1"
    ).format(one=_table(ONE_MINUTE))
    return _violations(cursor, query, (), None)
