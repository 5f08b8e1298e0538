"""Spark's JDBC reads and writes of the market data.

Reads push their predicates down to PostgreSQL (Spark compiles the filters into the query's WHERE, so
only the segments' trades leave the database); writes append to a staging table that ``MarketStore``
merges in one transaction, since Spark's JDBC writer cannot upsert.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import reduce
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from crypto_assets.candles import Segment, from_ms

TRADE_COLUMNS = ("symbol", "price", "volume", "timestamp", "agg_trade_id", "trades", "is_buyer_maker")
ROWS_PER_READ_PARTITION = 500_000
JDBC_TLS_OPTIONS = ("sslmode", "sslrootcert")


@dataclass(frozen=True)
class JdbcTarget:
    """The market-data database as Spark's JDBC reader and writer see it."""

    url: str
    user: str
    password: str = field(repr=False)

    @classmethod
    def from_database_url(cls, database_url: str) -> JdbcTarget:
        """The same server, database and login; the URL's TLS options (``sslmode``, ``sslrootcert``, which
        the JDBC driver names as libpq does) go along."""
        parts = urlsplit(database_url)
        host = parts.hostname or "127.0.0.1"
        tls = [(name, value) for name, value in parse_qsl(parts.query) if name in JDBC_TLS_OPTIONS]
        query = urlencode([("reWriteBatchedInserts", "true"), *tls])
        return cls(f"jdbc:postgresql://{host}:{parts.port or 5432}{parts.path}?{query}",
                   unquote(parts.username or ""), unquote(parts.password or ""))

    def properties(self) -> dict[str, str]:
        return {"user": self.user, "password": self.password, "driver": "org.postgresql.Driver"}


def _time_range(lo_ms: int, hi_ms: int, column: str = "event_time") -> Column:
    """Indexed ``event_time`` bounds plus the exact ``timestamp`` bounds (both pushed down)."""
    return ((F.col(column) >= F.lit(from_ms(lo_ms))) & (F.col(column) < F.lit(from_ms(hi_ms)))
            & (F.col("timestamp") >= F.lit(lo_ms)) & (F.col("timestamp") < F.lit(hi_ms)))


def read_trades(spark: SparkSession, jdbc: JdbcTarget, segments: Sequence[Segment], size_ms: int,
                expected_rows: int = 0, max_partitions: int = 8) -> DataFrame:
    """The trades of the segments' windows: one pushed-down ``(symbol, time range)`` disjunct per segment.

    Large reads (backfills) are split on ``timestamp`` into parallel JDBC partitions.
    """
    ranges = [s.trade_range(size_ms) for s in segments]
    lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
    partitions = max(1, min(max_partitions, expected_rows // ROWS_PER_READ_PARTITION))
    reader_options = dict(properties=jdbc.properties())
    if partitions > 1:
        frame = spark.read.jdbc(jdbc.url, "stock.real_time_prices", column="timestamp", lowerBound=lo,
                                upperBound=hi, numPartitions=partitions, **reader_options)
    else:
        frame = spark.read.jdbc(jdbc.url, "stock.real_time_prices", **reader_options)
    wanted = reduce(lambda a, b: a | b, [(F.col("symbol") == F.lit(s.symbol)) & _time_range(*r)
                                        for s, r in zip(segments, ranges, strict=True)])
    return frame.where(wanted).select(*TRADE_COLUMNS)


def read_candles(spark: SparkSession, jdbc: JdbcTarget, table: str, lo_ms: int, hi_ms: int) -> DataFrame:
    """Candles with ``window_start`` in ``[lo, hi)`` (pushed down), start as epoch ms."""
    frame = spark.read.jdbc(jdbc.url, f"stock.{table}", properties=jdbc.properties())
    in_range = (F.col("window_start") >= F.lit(from_ms(lo_ms))) & (F.col("window_start") < F.lit(from_ms(hi_ms)))
    return (frame.where(in_range)
            .withColumn("window_start_ms", F.unix_millis(F.col("window_start"))))


def read_minutes(spark: SparkSession, jdbc: JdbcTarget, table: str, ranges: Sequence[tuple[str, int, int]]
                 ) -> DataFrame:
    """One-minute candles of each ``(symbol, lo, hi)`` window range (one pushed-down disjunct each)."""
    frame = spark.read.jdbc(jdbc.url, f"stock.{table}", properties=jdbc.properties())
    wanted = reduce(lambda a, b: a | b, [(F.col("symbol") == F.lit(symbol))
                                        & (F.col("window_start") >= F.lit(from_ms(lo)))
                                        & (F.col("window_start") < F.lit(from_ms(hi))) for symbol, lo, hi in ranges])
    return frame.where(wanted).withColumn("window_start_ms", F.unix_millis(F.col("window_start")))


def read_trades_by_id(spark: SparkSession, jdbc: JdbcTarget, ids: Sequence[tuple[str, int]]) -> DataFrame:
    """Given (symbol, agg id) pairs, those trades, through the unique (symbol, agg_trade_id) index."""
    frame = spark.read.jdbc(jdbc.url, "stock.real_time_prices", properties=jdbc.properties())
    wanted = reduce(lambda a, b: a | b, [(F.col("symbol") == F.lit(symbol)) & (F.col("agg_trade_id") == F.lit(agg_id))
                                        for symbol, agg_id in ids])
    return frame.where(wanted).select("symbol", "price", "timestamp", "agg_trade_id")


def write_staging(frame: DataFrame, jdbc: JdbcTarget, table: str, batch_id: str) -> None:
    """Appends the frame, tagged with the run's batch id, to a staging table."""
    write_batches(frame.withColumn("batch_id", F.lit(batch_id)), jdbc, table)


def write_batches(frame: DataFrame, jdbc: JdbcTarget, table: str) -> None:
    """Appends the frame, whose ``batch_id`` column tags each row with its batch, to a staging table."""
    frame.write.option("batchsize", 10_000).jdbc(jdbc.url, f"stock.{table}", mode="append",
                                                 properties=jdbc.properties())
