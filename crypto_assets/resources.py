"""Resources of the assets, configured from the environment through ``PlatformSettings``.

``PySparkResource`` (dagster-pyspark) gives the assets their SparkSession, unchanged on both paths:

- ``SPARK_REMOTE=sc://…`` (the default: the local stack's Spark Connect server, ``local_stack.spark_connect``):
  its builder sees ``spark.remote`` and returns a Spark Connect session, so a run attaches to the warm
  server instead of starting a JVM. Only SQL settings can be set on such a session (the JDBC jar, the
  master and the JVM's time zone are the server's); the assets use DataFrames and JDBC options only,
  never ``sparkContext`` (``PySparkResource.spark_context`` does not exist on Connect). The session is
  not stopped: the run's process exit ends the client, and the server drops idle sessions.
- ``SPARK_REMOTE=`` (empty): the in-process SparkSession on ``SPARK_MASTER``, a JVM per run process. It
  never calls ``spark.stop()``: under ``dagster dev`` each run is a process of its own and the JVM ends
  with it; in one process (tests, the backfill CLI) the session is shared on purpose and stopped by its owner.

A process is in one mode or the other: PySpark switches itself to Connect for the whole process when a
Connect session is created (``pyspark.sql.functions`` then build Connect columns).
"""

from __future__ import annotations

import os

import dagster as dg
from dagster_pyspark import PySparkResource
from pyspark.sql import SparkSession

from crypto_assets.store import MarketStore
from crypto_assets.transforms import SPARK_EXACTNESS_CONFIG
from crypto_platform.credentials import CANDLE_WRITER, role_database_url
from crypto_platform.settings import PlatformSettings
from local_stack.jars import postgresql_jdbc_jar


class MarketDatabase(dg.ConfigurableResource):
    """The market-data PostgreSQL. ``database_url`` empty = DATABASE_URL's server as role ``candle_writer``
    at run time, so no password ever sits in Dagster's resource config."""

    database_url: str = ""

    def store(self) -> MarketStore:
        return MarketStore(self.database_url or role_database_url(PlatformSettings.from_env(), CANDLE_WRITER))


# Settings a session may carry itself (also the Connect server's defaults): exact decimals, UTC, small shuffles.
SESSION_SQL_CONFIG = {
    "spark.sql.shuffle.partitions": "4",
    "spark.sql.adaptive.enabled": "true",
    **SPARK_EXACTNESS_CONFIG,
}


def spark_config(settings: PlatformSettings) -> dict[str, str]:
    """SparkSession settings. Connect: the URL and the session's SQL settings. In process: master from
    SPARK_MASTER, the JDBC driver jar, UTC everywhere, exact decimals."""
    if settings.spark_remote:
        return {"spark.remote": settings.spark_remote, **SESSION_SQL_CONFIG}
    # PySpark takes any SPARK_REMOTE in the environment, even an empty one, as "use Connect".
    if os.environ.get("SPARK_REMOTE") == "":
        del os.environ["SPARK_REMOTE"]
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
        **SESSION_SQL_CONFIG,
    }


def spark_session(settings: PlatformSettings) -> SparkSession:
    """A SparkSession with the assets' settings, outside Dagster (tests, benchmarks); quiet console."""
    builder = SparkSession.builder
    for key, value in spark_config(settings).items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    if not settings.spark_remote:
        session.sparkContext.setLogLevel("ERROR")
    return session


def build_resources(settings: PlatformSettings | None = None) -> dict[str, dg.ConfigurableResource]:
    settings = settings or PlatformSettings.from_env()
    return {"pyspark": PySparkResource(spark_config=spark_config(settings)), "market_db": MarketDatabase()}
