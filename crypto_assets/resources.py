"""Resources of the assets, configured from the environment through ``PlatformSettings``.

``PySparkResource`` (dagster-pyspark) gives the assets their SparkSession. It never calls
``spark.stop()``: under ``dagster dev`` each run is a process of its own and the JVM ends with it; in
one process (tests, the backfill CLI) the session is shared on purpose and stopped by its owner.
"""

from __future__ import annotations

import dagster as dg
from dagster_pyspark import PySparkResource
from pyspark.sql import SparkSession

from crypto_assets.store import MarketStore
from crypto_assets.transforms import SPARK_EXACTNESS_CONFIG
from crypto_platform.settings import PlatformSettings
from local_stack.jars import postgresql_jdbc_jar


class MarketDatabase(dg.ConfigurableResource):
    """The market-data PostgreSQL. ``database_url`` empty = ``DATABASE_URL`` (or PG_*) at run time,
    so no password ever sits in Dagster's resource config."""

    database_url: str = ""

    def store(self) -> MarketStore:
        return MarketStore(self.database_url or PlatformSettings.from_env().database_url)


def spark_config(settings: PlatformSettings) -> dict[str, str]:
    """SparkSession settings: master from SPARK_MASTER, the JDBC driver jar, UTC everywhere, exact decimals."""
    utc = "-Duser.timezone=UTC"
    return {
        "spark.master": settings.spark_master,
        "spark.app.name": "crypto-assets",
        "spark.jars": str(postgresql_jdbc_jar()),
        "spark.driver.host": settings.bind_host,
        "spark.driver.bindAddress": settings.bind_host,
        "spark.driver.extraJavaOptions": utc,
        "spark.executor.extraJavaOptions": utc,
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.shuffle.partitions": "4",
        "spark.sql.adaptive.enabled": "true",
        **SPARK_EXACTNESS_CONFIG,
    }


def spark_session(settings: PlatformSettings) -> SparkSession:
    """A SparkSession with the assets' settings, outside Dagster (tests, benchmarks); quiet console."""
    builder = SparkSession.builder
    for key, value in spark_config(settings).items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


def build_resources(settings: PlatformSettings | None = None) -> dict[str, dg.ConfigurableResource]:
    settings = settings or PlatformSettings.from_env()
    return {"pyspark": PySparkResource(spark_config=spark_config(settings)), "market_db": MarketDatabase()}
