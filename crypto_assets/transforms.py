"""Spark DataFrame transforms of the candle assets, without I/O (testable on in-memory DataFrames).

Everything stays DECIMAL: open/close come from ``min_by``/``max_by`` on the agg id (unique per symbol, so
deterministic, unlike ``first``/``last``); the sums are exact; the one rounding division happens in the
merge (see ``candles.py``). Run with ``spark.sql.decimalOperations.allowPrecisionLoss=false`` so that
price·qty keeps its 16 decimals, and ANSI mode so that an overflow fails instead of becoming NULL.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import DecimalType

from crypto_assets.candles import MINUTE_MS, Segment

PRICE = DecimalType(20, 8)
VOLUME = DecimalType(28, 8)
PRICE_SUM = DecimalType(38, 8)
QUOTE = DecimalType(38, 16)

STAGING_COLUMNS = ("symbol", "window_start_ms", "open_price", "close_price", "high_price", "low_price", "price_sum",
                   "price_count", "total_volume", "quote_volume", "taker_buy_volume", "trade_count",
                   "first_agg_trade_id", "last_agg_trade_id", "is_final")

SPARK_EXACTNESS_CONFIG = {
    "spark.sql.decimalOperations.allowPrecisionLoss": "false",
    "spark.sql.ansi.enabled": "true",
    "spark.sql.session.timeZone": "UTC",
}


def _zero(dtype: DecimalType) -> Column:
    return F.lit(Decimal(0)).cast(dtype)


def aggregable(trades: DataFrame) -> DataFrame:
    """The trades whose price × volume fits QUOTE exactly (below ``candles.MAX_TRADE_QUOTE``).

    Under ANSI mode one trade beyond it would fail the whole run, every run, for every symbol; it is
    left out here instead, and the ``trades_aggregable`` check names it.
    """
    return trades.where(F.try_multiply(F.col("price"), F.col("volume")).isNotNull())


def candles_from_trades(trades: DataFrame, size_ms: int) -> DataFrame:
    """One row per (symbol, window) that has trades, with the exact sums the merge needs.

    ``trades``: symbol, price, volume, timestamp (ms), agg_trade_id, trades, is_buyer_maker; those that
    cannot be aggregated (``aggregable``) are left out.
    """
    window_start = (F.col("timestamp") - F.pmod(F.col("timestamp"), F.lit(size_ms))).alias("window_start_ms")
    return aggregable(trades).groupBy("symbol", window_start).agg(
        F.min_by("price", "agg_trade_id").cast(PRICE).alias("open_price"),
        F.max_by("price", "agg_trade_id").cast(PRICE).alias("close_price"),
        F.max("price").cast(PRICE).alias("high_price"),
        F.min("price").cast(PRICE).alias("low_price"),
        F.sum("price").cast(PRICE_SUM).alias("price_sum"),
        F.count(F.lit(1)).alias("price_count"),
        F.sum("volume").cast(VOLUME).alias("total_volume"),
        F.sum(F.col("price") * F.col("volume")).cast(QUOTE).alias("quote_volume"),
        F.sum(F.when(~F.col("is_buyer_maker"), F.col("volume")).otherwise(_zero(PRICE))).cast(VOLUME)
        .alias("taker_buy_volume"),
        F.sum("trades").cast("bigint").alias("trade_count"),
        F.min("agg_trade_id").alias("first_agg_trade_id"),
        F.max("agg_trade_id").alias("last_agg_trade_id"),
    )


def complete_segments(spark: SparkSession, candles: DataFrame, segments: Sequence[Segment],
                      seeds: Sequence[tuple[str, int, Decimal]], size_ms: int, watermarks: Mapping[str, int]
                      ) -> DataFrame:
    """Every window of the segments: candles with trades as computed, empty ones carrying the previous close.

    ``seeds``: (symbol, window start, close) of the window before a segment, from the table. Windows before
    a symbol's first trade (no previous close anywhere) are dropped. A window is final when it ends at or
    before its own symbol's watermark (``watermarks``); a symbol without one has no final window.
    Columns: ``STAGING_COLUMNS``.
    """
    grid = spark.createDataFrame([(s.symbol, s.first, s.last, watermarks.get(s.symbol)) for s in segments],
                                 "symbol string, first long, last long, watermark_ms long")
    grid = grid.select("symbol", F.explode(F.sequence("first", "last", F.lit(size_ms))).alias("window_start_ms"),
                       "watermark_ms")
    seed_rows = spark.createDataFrame(list(seeds), "symbol string, window_start_ms long, seed_close decimal(20,8)")
    rows = (grid.join(candles, ["symbol", "window_start_ms"], "left")
            .withColumn("seed_close", F.lit(None).cast(PRICE))
            .unionByName(seed_rows, allowMissingColumns=True))
    history = Window.partitionBy("symbol").orderBy("window_start_ms").rowsBetween(Window.unboundedPreceding, 0)
    carried = F.last(F.coalesce("close_price", "seed_close"), ignorenulls=True).over(history)
    empty = F.col("price_count").isNull()

    def price(name: str) -> Column:
        return F.when(empty, F.col("carried")).otherwise(F.col(name)).cast(PRICE).alias(name)

    def zero_if_empty(name: str, dtype: DecimalType | str) -> Column:
        fallback = _zero(dtype) if isinstance(dtype, DecimalType) else F.lit(0).cast(dtype)
        return F.when(empty, fallback).otherwise(F.col(name)).cast(dtype).alias(name)

    return (rows.withColumn("carried", carried)
            .where(F.col("seed_close").isNull() & F.col("carried").isNotNull())
            .select("symbol", "window_start_ms",
                    price("open_price"), price("close_price"), price("high_price"), price("low_price"),
                    zero_if_empty("price_sum", PRICE_SUM), zero_if_empty("price_count", "bigint"),
                    zero_if_empty("total_volume", VOLUME), zero_if_empty("quote_volume", QUOTE),
                    zero_if_empty("taker_buy_volume", VOLUME), zero_if_empty("trade_count", "bigint"),
                    "first_agg_trade_id", "last_agg_trade_id",
                    F.coalesce(F.col("window_start_ms") + F.lit(size_ms) <= F.col("watermark_ms"), F.lit(False))
                    .alias("is_final")))


def latest_from_candles(candles: DataFrame, latest_trades: DataFrame) -> DataFrame:
    """Per symbol: the latest trade and the statistics of its last 24 hours of one-minute candles.

    ``candles``: the 1,440 newest one-minute windows (the forming one included); ``price_24h_ago`` is the
    open of the oldest of them (the last price before the 24 hours); high and low are over windows with
    trades only, so a carried close from before the 24 hours does not count. ``latest_trades``: symbol, price,
    timestamp, agg_trade_id of each symbol's newest trade (highest agg id).
    """
    traded = F.col("trade_count") > 0
    stats = candles.groupBy("symbol").agg(
        F.min_by("open_price", "window_start_ms").alias("price_24h_ago"),
        F.max(F.when(traded, F.col("high_price"))).cast(PRICE).alias("high_24h"),
        F.min(F.when(traded, F.col("low_price"))).cast(PRICE).alias("low_24h"),
        F.sum("total_volume").cast(VOLUME).alias("volume_24h"),
        F.sum("quote_volume").cast(QUOTE).alias("quote_volume_24h"),
        F.sum("trade_count").cast("bigint").alias("trade_count_24h"),
    )
    return (latest_trades.join(stats, "symbol", "left")
            .select("symbol", F.col("price").cast(PRICE).alias("price"), F.col("timestamp").alias("event_time_ms"),
                    "agg_trade_id", "price_24h_ago", "high_24h", "low_24h", "volume_24h", "quote_volume_24h",
                    "trade_count_24h"))


def candles_from_minutes(minutes: DataFrame, size_ms: int) -> DataFrame:
    """Windows of ``size_ms`` rolled up from one-minute candles, exactly as if computed from the trades.

    Open, high and low come from the minutes with trades only: an empty minute carries the close from
    before it, so a window's open is the open of its first traded minute, not of its first minute; a
    window without any trade carries that close throughout. Close is the last minute's close (an empty
    minute carries the last trade's). The sums add up (avg_price is derived by the merge from price_sum
    and price_count). Final when the window's last minute is final; a forming window without trades is not
    published (as for one minute). Columns: ``STAGING_COLUMNS``.
    """
    traded = F.col("trade_count") > 0

    def first_traded(name: str) -> Column:
        return F.min(F.when(traded, F.struct(F.col("window_start_ms"), F.col(name)))).getField(name)

    rollup_start = F.col("window_start_ms") - F.pmod(F.col("window_start_ms"), F.lit(size_ms))
    last_minute = F.col("rollup_start") + F.lit(size_ms - MINUTE_MS)
    return (minutes.withColumn("rollup_start", rollup_start).groupBy("symbol", "rollup_start").agg(
        F.coalesce(first_traded("open_price"), F.min_by("open_price", "window_start_ms"))
        .cast(PRICE).alias("open_price"),
        F.max_by("close_price", "window_start_ms").cast(PRICE).alias("close_price"),
        F.coalesce(F.max(F.when(traded, F.col("high_price"))), F.max("high_price")).cast(PRICE).alias("high_price"),
        F.coalesce(F.min(F.when(traded, F.col("low_price"))), F.min("low_price")).cast(PRICE).alias("low_price"),
        F.sum("price_sum").cast(PRICE_SUM).alias("price_sum"),
        F.sum("price_count").cast("bigint").alias("price_count"),
        F.sum("total_volume").cast(VOLUME).alias("total_volume"),
        F.sum("quote_volume").cast(QUOTE).alias("quote_volume"),
        F.sum("taker_buy_volume").cast(VOLUME).alias("taker_buy_volume"),
        F.sum("trade_count").cast("bigint").alias("trade_count"),
        F.min("first_agg_trade_id").alias("first_agg_trade_id"),
        F.max("last_agg_trade_id").alias("last_agg_trade_id"),
        F.max(F.when(F.col("is_final"), F.col("window_start_ms"))).alias("last_final_minute"),
    ).select("symbol", F.col("rollup_start").alias("window_start_ms"), *STAGING_COLUMNS[2:-1],
             F.coalesce(F.col("last_final_minute") == last_minute, F.lit(False)).alias("is_final"))
            .where(F.col("is_final") | (F.col("trade_count") > 0)))
